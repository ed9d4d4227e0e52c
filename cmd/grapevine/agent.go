package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/grapevine-net/grapevine/internal/daemonflag"
	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/node"
	"github.com/grapevine-net/grapevine/node/nodestate"
	"github.com/grapevine-net/grapevine/node/probe"
)

// agentOptions is the agent's configuration after flag parsing and defaults.
type agentOptions struct {
	NodeName        string
	Iface           string
	HostIP          netip.Addr
	Port            int
	LedgerPort      int
	Voters          int
	Join            []string
	BootstrapExpect int
	Pool            netip.Prefix
	BlockSize       int
	// Pool6 is the IPv6 pool (zero: IPv4 only); each host's IPv6 block of
	// BlockSize6 follows from its IPv4 block (mesh.Block6).
	Pool6      netip.Prefix
	BlockSize6 int
	// HostIP6 is this host's IPv6 address on Iface, the next hop peers
	// use for its IPv6 block (zero: none, or no --pool6).
	HostIP6            netip.Addr
	StateDir           string
	RunDir             string
	CNIConfDir         string
	CNIVersion         string
	GossipKey          []byte
	MetricsAddr        string
	Masquerade         bool
	Lease              time.Duration
	AllowForeignHostIP bool
	JoinKubernetes     bool
	// MTU is the pod MTU in effect; MTUFlag is --mtu as given (0: follow
	// --iface's MTU, see podMTU and followUplinkMTU). Only the loop
	// changes MTU once the agent runs.
	MTU            int
	MTUFlag        int
	ResyncInterval time.Duration
	Encapsulation  node.Encapsulation
	ProbeInterval  time.Duration // 0: no data-path probes
	ProbeMisses    int
	// PolicySocket is grapevine-policy's admission socket, which
	// node.json names so that the CNI plugin waits on it for each new pod
	// ("": network policy is off).
	PolicySocket string
}

func agentCommand(run agentRunner) *cli.Command {
	return &cli.Command{
		Name:  "agent",
		Usage: "run the node agent: join the mesh, hold a block, route every peer's block",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "node-name", EnvVars: daemonflag.EnvVars("node-name"), Usage: "this node's unique name (default: hostname)"},
			&cli.StringFlag{Name: "iface", EnvVars: daemonflag.EnvVars("iface"), Usage: "interface towards the peers (default: the default route's)"},
			&cli.StringFlag{Name: "host-ip", EnvVars: daemonflag.EnvVars("host-ip"), Usage: "this host's address on --iface, used by peers as next hop (default: its first IPv4 address; with an IPv6 --pool its first global IPv6 address)"},
			&cli.StringFlag{Name: "host-ip6", EnvVars: daemonflag.EnvVars("host-ip6"), Usage: "with --pool6: this host's IPv6 address on --iface, used by peers as next hop for its IPv6 block (default: its first global IPv6 address there; none: peers do not route this host's IPv6 block)"},
			&cli.IntFlag{Name: "port", Value: mesh.DefaultPort, EnvVars: daemonflag.EnvVars("port"), Usage: "gossip port (UDP and TCP)"},
			&cli.IntFlag{Name: "ledger-port", Value: mesh.DefaultLedgerPort, EnvVars: daemonflag.EnvVars("ledger-port"), Usage: "TCP port of the block ledger (raft among the agents)"},
			&cli.IntFlag{Name: "voters", Value: mesh.DefaultVoters, EnvVars: daemonflag.EnvVars("voters"), Usage: "how many agents vote in the block ledger: 1, 3 or 5 (the others keep a replica)"},
			&cli.StringSliceFlag{Name: "join", EnvVars: daemonflag.EnvVars("join"), Usage: "`host[:port]` of a member to join; repeatable; retried until one answers. Without --join (and --join-kubernetes) the agent founds a new cluster"},
			&cli.IntFlag{Name: "bootstrap-expect", EnvVars: daemonflag.EnvVars("bootstrap-expect"), Usage: "found the ledger once this many agents with the same value meet through --join, all of them its first voters (give every host the same --join list and value); 0: never found with --join"},
			&cli.StringFlag{Name: "pool", Value: mesh.DefaultPool.String(), EnvVars: daemonflag.EnvVars("pool"), Usage: "the pod CIDR the blocks are cut from; an IPv6 one (such as fd00:10:244::/48) makes an IPv6-only cluster, whose hosts gossip and route over IPv6"},
			&cli.IntFlag{Name: "block-size", Value: mesh.DefaultBlockBits, EnvVars: daemonflag.EnvVars("block-size"), Usage: "prefix length of each node's block; unless set, an IPv6 --pool gets /64 blocks (/120 for a pool longer than /56)"},
			&cli.StringFlag{Name: "pool6", EnvVars: daemonflag.EnvVars("pool6"), Usage: "an IPv6 pod CIDR (such as fd00:10:244::/48) for dual-stack pods: each node's IPv6 block is the one at its IPv4 block's index in it (default: none, IPv4 only)"},
			&cli.IntFlag{Name: "block-size6", Value: mesh.DefaultBlockBits6, EnvVars: daemonflag.EnvVars("block-size6"), Usage: "prefix length of each node's IPv6 block, up to /" + fmt.Sprint(mesh.MaxBlockBits6) + " for small pools; --pool6 must hold at least as many blocks as --pool"},
			&cli.StringFlag{Name: "state-dir", Value: nodestate.DefaultStateDir, EnvVars: daemonflag.EnvVars("state-dir"), Usage: "persistent state: node ID, the block, the ledger's log, IPAM allocations"},
			runDirFlag(),
			&cli.StringFlag{Name: "cni-conf-dir", Value: node.DefaultCNIConfDir, EnvVars: daemonflag.EnvVars("cni-conf-dir"), Usage: "where to write the CNI conflist once a block is held (empty: write none)"},
			&cli.StringFlag{Name: "cni-version", EnvVars: daemonflag.EnvVars("cni-version"), Usage: "pin the conflist's cniVersion to one of " + strings.Join(node.SupportedCNIVersions(), ", ") + " (default: " + node.CompatCNIVersion + ", which runtimes on older libcni accept, and cniVersions " + strings.Join(node.OfferedCNIVersions(), ", ") + " for newer ones)"},
			&cli.StringFlag{Name: "gossip-key-file", EnvVars: daemonflag.EnvVars("gossip-key-file"), Usage: "file with a base64 16, 24 or 32-byte key that encrypts and authenticates gossip"},
			&cli.StringFlag{Name: "metrics-addr", Value: DefaultMetricsAddr, EnvVars: daemonflag.EnvVars("metrics-addr"), Usage: "address for /metrics, /healthz and /readyz (empty: off)"},
			&cli.BoolFlag{Name: "masquerade", Value: true, EnvVars: daemonflag.EnvVars("masquerade"), Usage: "masquerade traffic from the pool to destinations outside it"},
			&cli.DurationFlag{Name: "lease", Aliases: []string{"reclaim-after"}, Value: mesh.DefaultLease, EnvVars: append(daemonflag.EnvVars("lease"), daemonflag.EnvVars("reclaim-after")...),
				Usage: "how long a host may hand out addresses from its block after the ledger's leader last renewed its lease (a host cut off from the ledger keeps starting pods this long); a gone or deleted node's block is freed only after it, plus 1 %"},
			&cli.BoolFlag{Name: "allow-foreign-host-ip", EnvVars: daemonflag.EnvVars("allow-foreign-host-ip"), Usage: "accept peers whose advertised host IP differs from their gossip address"},
			&cli.BoolFlag{Name: "join-kubernetes", EnvVars: daemonflag.EnvVars("join-kubernetes"), Usage: "discover members to join from the Kubernetes API's Node objects, by their InternalIPs of --pool's family (in a pod, with its service account); the agent that creates the ConfigMap kube-system/grapevine-ledger founds the cluster with the agents it lists there as voters, the others join it"},
			&cli.IntFlag{Name: "mtu", EnvVars: daemonflag.EnvVars("mtu"), Usage: "MTU for pod interfaces (0: the MTU of --iface, less the VXLAN overhead unless --encapsulation=never)"},
			&cli.StringFlag{Name: "encapsulation", Value: node.EncapsulationCrossSubnet.String(), EnvVars: daemonflag.EnvVars("encapsulation"),
				Usage: "cross-subnet: VXLAN to peers whose host IP is not on a network of --iface, direct routes to the others; never: direct only; always: VXLAN to every peer"},
			&cli.DurationFlag{Name: "resync-interval", Value: 30 * time.Second, EnvVars: daemonflag.EnvVars("resync-interval"), Usage: "how often the kernel state is fully reconciled even without events"},
			&cli.DurationFlag{Name: "probe-interval", Value: probe.DefaultInterval, EnvVars: daemonflag.EnvVars("probe-interval"), Usage: "how often each peer's host address gets an ICMP echo request, to keep its route while its agent is unresponsive (0: no probes, routes follow gossip alone)"},
			&cli.IntFlag{Name: "probe-misses", Value: probe.DefaultMisses, EnvVars: daemonflag.EnvVars("probe-misses"), Usage: "unanswered echo requests in a row after which a peer's host counts as unreachable (after the first, the host is asked every quarter --probe-interval)"},
			&cli.StringFlag{Name: "policy-socket", EnvVars: daemonflag.EnvVars("policy-socket"), Usage: "the admission socket of grapevine-policy, which enforces Kubernetes NetworkPolicy on this node: node.json names it, and the CNI plugin waits on it before each new pod starts (empty: network policy off, no wait)"},
			&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: daemonflag.EnvVars("log-level"), Usage: "debug, info, warn or error"},
		},
		OnUsageError: usageError,
		// Every flag is checked here, before anything starts or is logged.
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			log, err := daemonflag.Logger(c.String("log-level"), c.App.ErrWriter)
			if err != nil {
				return err
			}
			opts, err := parseAgentOptions(c)
			if err != nil {
				return err
			}
			return run(c.Context, opts, log)
		},
	}
}

func parseAgentOptions(c *cli.Context) (agentOptions, error) {
	o := agentOptions{
		NodeName:           c.String("node-name"),
		Iface:              c.String("iface"),
		Port:               c.Int("port"),
		LedgerPort:         c.Int("ledger-port"),
		Voters:             c.Int("voters"),
		Join:               c.StringSlice("join"),
		BootstrapExpect:    c.Int("bootstrap-expect"),
		BlockSize:          c.Int("block-size"),
		StateDir:           c.String("state-dir"),
		RunDir:             c.String("run-dir"),
		CNIConfDir:         c.String("cni-conf-dir"),
		CNIVersion:         c.String("cni-version"),
		MetricsAddr:        c.String("metrics-addr"),
		Masquerade:         c.Bool("masquerade"),
		Lease:              c.Duration("lease"),
		AllowForeignHostIP: c.Bool("allow-foreign-host-ip"),
		JoinKubernetes:     c.Bool("join-kubernetes"),
		MTU:                c.Int("mtu"),
		MTUFlag:            c.Int("mtu"),
		ResyncInterval:     c.Duration("resync-interval"),
		ProbeInterval:      c.Duration("probe-interval"),
		ProbeMisses:        c.Int("probe-misses"),
		PolicySocket:       c.String("policy-socket"),
	}
	var err error
	if o.Pool, err = parsePool(c.String("pool")); err != nil {
		return o, err
	}
	// An IPv6 --pool makes an IPv6-only cluster, whose blocks are /64s
	// (see mesh.DefaultBlockBitsFor) unless --block-size says otherwise.
	if o.Pool.Addr().Is6() && !c.IsSet("block-size") {
		o.BlockSize = mesh.DefaultBlockBitsFor(o.Pool)
	}
	if err := validatePool(o.Pool, o.BlockSize); err != nil {
		return o, err
	}
	if o.Pool6, o.BlockSize6, err = parsePool6(c, o.Pool, o.BlockSize); err != nil {
		return o, err
	}
	if err := mesh.CheckLease(o.Lease); err != nil {
		return o, fmt.Errorf("--lease: %w", err)
	}
	if o.NodeName == "" {
		if o.NodeName, err = os.Hostname(); err != nil {
			return o, fmt.Errorf("--node-name not set and hostname unknown: %w", err)
		}
	}
	if err := mesh.CheckNodeName(o.NodeName); err != nil {
		return o, fmt.Errorf("--node-name: %w", err)
	}
	if err := mesh.CheckPort(o.Port); err != nil {
		return o, fmt.Errorf("--port: %w", err)
	}
	if err := mesh.CheckLedgerPort(o.LedgerPort, o.Port); err != nil {
		return o, fmt.Errorf("--ledger-port: %w", err)
	}
	if err := mesh.CheckVoters(o.Voters); err != nil {
		return o, fmt.Errorf("--voters: %w", err)
	}
	if err := mesh.CheckBootstrapExpect(o.BootstrapExpect, o.Voters); err != nil {
		return o, fmt.Errorf("--bootstrap-expect: %w", err)
	}
	if o.BootstrapExpect > 0 && o.JoinKubernetes {
		return o, fmt.Errorf("--bootstrap-expect with --join-kubernetes: the ledger is founded through the Kubernetes API there; drop --bootstrap-expect")
	}
	if o.ResyncInterval <= 0 {
		return o, fmt.Errorf("--resync-interval %s: must be longer than zero", o.ResyncInterval)
	}
	if err := checkMetricsAddr(o.MetricsAddr); err != nil {
		return o, err
	}
	// The hand-off files name these directories and the policy socket for
	// the CNI plugin, which runs in another working directory.
	for flag, dir := range map[string]string{"--state-dir": o.StateDir, "--run-dir": o.RunDir, "--cni-conf-dir": o.CNIConfDir} {
		if dir != "" && !filepath.IsAbs(dir) || dir == "" && flag != "--cni-conf-dir" {
			return o, fmt.Errorf("%s %q must be an absolute path", flag, dir)
		}
	}
	if o.PolicySocket != "" && !filepath.IsAbs(o.PolicySocket) {
		return o, fmt.Errorf("--policy-socket %q must be an absolute path", o.PolicySocket)
	}
	// An empty GRAPEVINE_JOIN= or a trailing comma names no seed.
	o.Join = slices.DeleteFunc(o.Join, func(j string) bool { return strings.TrimSpace(j) == "" })
	if o.ProbeInterval < 0 {
		return o, fmt.Errorf("--probe-interval must not be negative (0 turns probes off)")
	}
	if o.ProbeMisses < 1 || o.ProbeMisses > 100 {
		return o, fmt.Errorf("--probe-misses %d out of range 1-100", o.ProbeMisses)
	}
	if err := node.ValidateCNIVersion(o.CNIVersion); err != nil {
		return o, fmt.Errorf("--cni-version: %w", err)
	}
	if err := nodestate.CheckMTU(o.MTU); err != nil {
		return o, fmt.Errorf("--%w", err)
	}
	if o.Encapsulation, err = node.ParseEncapsulation(c.String("encapsulation")); err != nil {
		return o, fmt.Errorf("--encapsulation: %w", err)
	}
	if s := c.String("host-ip"); s != "" {
		if o.HostIP, err = parseHostIP(s, o.Pool); err != nil {
			return o, err
		}
	}
	if s := c.String("host-ip6"); s != "" {
		// An IPv6-only cluster (an IPv6 --pool) has one host address,
		// --host-ip; parsePool6 refused a --pool6 there already.
		if o.Pool.Addr().Is6() {
			return o, fmt.Errorf("--pool6 and --host-ip6 with the IPv6 --pool %s: an IPv6-only cluster has one pool and --host-ip is its IPv6 address; drop --pool6 and --host-ip6", o.Pool)
		}
		if o.HostIP6, err = netip.ParseAddr(s); err != nil || !o.HostIP6.Is6() || o.HostIP6.Is4In6() || !o.HostIP6.IsGlobalUnicast() {
			return o, fmt.Errorf("--host-ip6 %q is not a global IPv6 address", s)
		}
		if !o.Pool6.IsValid() {
			return o, fmt.Errorf("--host-ip6 %s without --pool6: give the IPv6 pool too, or drop --host-ip6", s)
		}
	}
	if f := c.String("gossip-key-file"); f != "" {
		if o.GossipKey, err = readGossipKey(f); err != nil {
			return o, err
		}
	}
	// Without a key the mesh warns, once, when it starts.
	return o, nil
}

// parsePool parses --pool, saying what a pool looks like when it is not one.
func parsePool(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err == nil {
		return p, nil
	}
	addr, bits, found := strings.Cut(s, "/")
	switch a, aerr := netip.ParseAddr(addr); {
	case !found:
		return p, fmt.Errorf("--pool %q has no prefix length: give a CIDR such as %s", s, mesh.DefaultPool)
	case aerr != nil:
		return p, fmt.Errorf("--pool %q: %q is not an IP address; give a CIDR such as %s (or fd00:10:244::/48 for an IPv6-only cluster)", s, addr, mesh.DefaultPool)
	default:
		return p, fmt.Errorf("--pool %q: prefix length %q is not a number from 0 to %d; give a CIDR such as %s", s, bits, a.BitLen(), mesh.DefaultPool)
	}
}

// parseHostIP parses --host-ip, which is of the pool's family: IPv4, or
// IPv6 in an IPv6-only cluster.
func parseHostIP(s string, pool netip.Prefix) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil || a.Is4In6() || a.Zone() != "":
		return netip.Addr{}, fmt.Errorf("--host-ip %q is not an IP address", s)
	case pool.Addr().Is4() && !a.Is4():
		return netip.Addr{}, fmt.Errorf("--host-ip %s is IPv6 but --pool %s is IPv4: an IPv6-only cluster has an IPv6 --pool; a dual-stack one gives the IPv6 address as --host-ip6", s, pool)
	case pool.Addr().Is6() && (!a.Is6() || !a.IsGlobalUnicast()):
		return netip.Addr{}, fmt.Errorf("--host-ip %s: --pool %s is IPv6 (an IPv6-only cluster), so the host IP must be a global IPv6 address", s, pool)
	}
	return a, nil
}

// parsePool6 parses and checks --pool6 and --block-size6 against the IPv4
// pool: none (IPv4 only), or an IPv6 pool with a block for each of the
// IPv4 pool's blocks. --block-size6 alone is a mistake worth saying.
func parsePool6(c *cli.Context, pool netip.Prefix, blockSize int) (netip.Prefix, int, error) {
	s, size := c.String("pool6"), c.Int("block-size6")
	if pool.Addr().Is6() && (s != "" || c.IsSet("block-size6")) {
		return netip.Prefix{}, 0, fmt.Errorf("--pool6 or --block-size6 with the IPv6 --pool %s: an IPv6-only cluster has one pool, cut by --block-size; drop --pool6 and --block-size6", pool)
	}
	if s == "" {
		if c.IsSet("block-size6") {
			return netip.Prefix{}, 0, fmt.Errorf("--block-size6 %d without --pool6: give the IPv6 pool too, or drop --block-size6", size)
		}
		return netip.Prefix{}, 0, nil
	}
	pool6, err := netip.ParsePrefix(s)
	if err != nil || !pool6.Addr().Is6() || pool6.Addr().Is4In6() {
		return netip.Prefix{}, 0, fmt.Errorf("--pool6 %q is not an IPv6 CIDR such as fd00:10:244::/48", s)
	}
	if err := mesh.CheckPool6(pool, blockSize, pool6, size); err != nil {
		return netip.Prefix{}, 0, fmt.Errorf("--pool6 %s --block-size6 %d with --pool %s --block-size %d: %w", pool6, size, pool, blockSize, err)
	}
	return pool6, size, nil
}

// checkMetricsAddr accepts "" (off) or host:port with a numeric port.
func checkMetricsAddr(addr string) error {
	if addr == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		_, err = strconv.ParseUint(port, 10, 16)
	}
	if err != nil {
		return fmt.Errorf("--metrics-addr %q is not host:port such as %s (empty turns the endpoints off)", addr, DefaultMetricsAddr)
	}
	return nil
}

// validatePool checks that the pool can be cut into blocks of blockSize.
func validatePool(pool netip.Prefix, blockSize int) error {
	if err := mesh.CheckPool(pool, blockSize); err != nil {
		return fmt.Errorf("--pool %s --block-size %d: %w", pool, blockSize, err)
	}
	return nil
}

// runAgent resolves what the flags left to the host, then runs the agent
// until ctx ends.
func runAgent(ctx context.Context, o agentOptions, log *slog.Logger) error {
	oneProc()
	if err := prepareDirs(o); err != nil {
		return err
	}
	uplink, err := node.ResolveUplink(o.Iface, o.HostIP, o.Pool.Addr().Is6())
	if err != nil {
		return fmt.Errorf("find the interface towards the peers: %w (set --iface, --host-ip or both)", err)
	}
	o.Iface, o.HostIP = uplink.Name, uplink.Addr
	if o.Pool6.IsValid() {
		if o.HostIP6, err = node.ResolveUplinkAddr6(o.Iface, o.HostIP6); err != nil {
			return fmt.Errorf("find this host's IPv6 address: %w (set --host-ip6)", err)
		}
	}
	o.MTU = podMTU(o.MTUFlag, uplink.MTU, o.Encapsulation, node.TunnelOverheadFor(o.HostIP))
	log = log.With("node", o.NodeName)
	log.Info("starting grapevine agent", "version", version, "iface", o.Iface, "hostIP", o.HostIP,
		"pool", o.Pool, "blockSize", o.BlockSize, "pool6", prefixString(o.Pool6), "blockSize6", o.BlockSize6, "hostIP6", addrString(o.HostIP6), "port", o.Port, "ledgerPort", o.LedgerPort, "voters", o.Voters, "join", o.Join, "bootstrapExpect", o.BootstrapExpect,
		"encapsulation", o.Encapsulation, "podMTU", o.MTU)

	a, err := newAgent(o, o.meshConfig(log), netlinkHost(), log)
	if err != nil {
		return err
	}
	err = a.run(ctx)
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// oneProc runs the agent's goroutines on one processor unless the operator
// set GOMAXPROCS. The agent does little and nothing in parallel, and idle
// it costs what it is woken for: with a processor per core the Go
// scheduler wakes a second thread to look for work each time a goroutine
// becomes runnable. In the bench's lab one processor cut an idle follower
// from 0.33 % to 0.22 % of a core.
func oneProc() {
	if _, set := os.LookupEnv("GOMAXPROCS"); !set {
		runtime.GOMAXPROCS(1)
	}
}

// podMTU is the MTU written to node.json for pods: the flag's if set, else
// the interface's, less the VXLAN overhead whenever a peer may be reached
// over VXLAN. Pods keep their MTU for life, and a peer on another subnet may
// join after they were created, so cross-subnet pays the 50 bytes even while
// every peer is direct: a large packet must never be black-holed.
func podMTU(flag, ifaceMTU int, e node.Encapsulation, overhead int) int {
	switch {
	case flag != 0:
		return flag
	case e == node.EncapsulationNever:
		return ifaceMTU
	}
	return ifaceMTU - overhead
}

// followUplinkMTU is the pod MTU for node.json once a pass found the
// uplink's MTU to be uplinkMTU, and whether it differs from current. Only
// an agent without --mtu follows; an unknown MTU (0) or one that would give
// pods an MTU out of range leaves current as it is. Pods already running
// keep theirs: it applies to new pods.
func followUplinkMTU(flag, current, uplinkMTU int, e node.Encapsulation, overhead int) (int, bool) {
	if flag != 0 || uplinkMTU == 0 {
		return current, false
	}
	mtu := podMTU(0, uplinkMTU, e, overhead)
	if mtu < nodestate.MinMTU || mtu > nodestate.MaxMTU {
		return current, false
	}
	return mtu, mtu != current
}

// meshConfig translates the options into the mesh's configuration. An
// agent without --join, --join-kubernetes and --bootstrap-expect founds a
// new cluster at once; with --bootstrap-expect, once that many agents met;
// with --join-kubernetes, the one that creates the ledger's record does,
// with the agents the record lists as its first voters (see newAgent).
func (o agentOptions) meshConfig(log *slog.Logger) mesh.Config {
	return mesh.Config{
		NodeName:           o.NodeName,
		AdvertiseAddr:      o.HostIP,
		AdvertiseAddr6:     o.HostIP6,
		BindAddr:           o.HostIP,
		Port:               o.Port,
		LedgerPort:         o.LedgerPort,
		Voters:             o.Voters,
		Found:              len(o.Join) == 0 && !o.JoinKubernetes && o.BootstrapExpect == 0,
		BootstrapExpect:    o.BootstrapExpect,
		Pool:               o.Pool,
		BlockBits:          o.BlockSize,
		Lease:              o.Lease,
		StateDir:           o.StateDir,
		SecretKey:          o.GossipKey,
		AllowForeignHostIP: o.AllowForeignHostIP,
		Join:               o.Join,
		Logger:             log,
	}
}
