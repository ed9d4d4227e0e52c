package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/node/probe"
)

// agentOptions is the agent's configuration after flag parsing and defaults.
type agentOptions struct {
	NodeName           string
	Iface              string
	HostIP             netip.Addr
	Port               int
	Join               []string
	Pool               netip.Prefix
	BlockSize          int
	StateDir           string
	RunDir             string
	CNIConfDir         string
	GossipKey          []byte
	MetricsAddr        string
	Masquerade         bool
	ReclaimAfter       time.Duration
	AllowForeignHostIP bool
	JoinKubernetes     bool
	MTU                int
	ResyncInterval     time.Duration
	ProbeInterval      time.Duration // 0: no data-path probes
	ProbeMisses        int
}

func agentCommand() *cli.Command {
	return &cli.Command{
		Name:  "agent",
		Usage: "run the node agent: join the mesh, hold a block, route every peer's block",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "node-name", EnvVars: envVar("node-name"), Usage: "this node's unique name (default: hostname)"},
			&cli.StringFlag{Name: "iface", EnvVars: envVar("iface"), Usage: "interface towards the peers (default: the default route's)"},
			&cli.StringFlag{Name: "host-ip", EnvVars: envVar("host-ip"), Usage: "this host's address on --iface, used by peers as next hop (default: its first IPv4 address)"},
			&cli.IntFlag{Name: "port", Value: DefaultPort, EnvVars: envVar("port"), Usage: "gossip port (UDP and TCP)"},
			&cli.StringSliceFlag{Name: "join", EnvVars: envVar("join"), Usage: "`host[:port]` of a member to join; repeatable; retried until one answers"},
			&cli.StringFlag{Name: "pool", Value: DefaultPool, EnvVars: envVar("pool"), Usage: "the pod CIDR the blocks are cut from"},
			&cli.IntFlag{Name: "block-size", Value: DefaultBlockSize, EnvVars: envVar("block-size"), Usage: "prefix length of each node's block"},
			&cli.StringFlag{Name: "state-dir", Value: DefaultStateDir, EnvVars: envVar("state-dir"), Usage: "persistent state: the claimed block, IPAM allocations"},
			runDirFlag(),
			&cli.StringFlag{Name: "cni-conf-dir", Value: DefaultCNIConfDir, EnvVars: envVar("cni-conf-dir"), Usage: "where to write the CNI conflist once a block is held (empty: write none)"},
			&cli.StringFlag{Name: "gossip-key-file", EnvVars: envVar("gossip-key-file"), Usage: "file with a base64 16, 24 or 32-byte key that encrypts and authenticates gossip"},
			&cli.StringFlag{Name: "metrics-addr", Value: DefaultMetricsAddr, EnvVars: envVar("metrics-addr"), Usage: "address for /metrics, /healthz and /readyz (empty: off)"},
			&cli.BoolFlag{Name: "masquerade", Value: true, EnvVars: envVar("masquerade"), Usage: "masquerade traffic from the pool to destinations outside it"},
			&cli.DurationFlag{Name: "reclaim-after", Value: time.Hour, EnvVars: envVar("reclaim-after"), Usage: "how long a dead node's block stays reserved for it"},
			&cli.BoolFlag{Name: "allow-foreign-host-ip", EnvVars: envVar("allow-foreign-host-ip"), Usage: "accept peers whose advertised host IP differs from their gossip address"},
			&cli.BoolFlag{Name: "join-kubernetes", EnvVars: envVar("join-kubernetes"), Usage: "discover members to join from the Kubernetes API's Node objects (in a pod, with its service account)"},
			&cli.IntFlag{Name: "mtu", EnvVars: envVar("mtu"), Usage: "MTU for pod interfaces (0: the MTU of --iface)"},
			&cli.DurationFlag{Name: "resync-interval", Value: 30 * time.Second, EnvVars: envVar("resync-interval"), Usage: "how often the kernel state is fully reconciled even without events"},
			&cli.DurationFlag{Name: "probe-interval", Value: probe.DefaultInterval, EnvVars: envVar("probe-interval"), Usage: "how often each peer's host address gets an ICMP echo request, to keep its route while its agent is unresponsive (0: no probes, routes follow gossip alone)"},
			&cli.IntFlag{Name: "probe-misses", Value: probe.DefaultMisses, EnvVars: envVar("probe-misses"), Usage: "unanswered echo requests in a row after which a peer's host counts as unreachable"},
			&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: envVar("log-level"), Usage: "debug, info, warn or error"},
		},
		Action: func(c *cli.Context) error {
			log, err := newLogger(c.String("log-level"))
			if err != nil {
				return err
			}
			opts, err := parseAgentOptions(c, log)
			if err != nil {
				return err
			}
			return runAgent(c.Context, opts, log)
		},
	}
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

func parseAgentOptions(c *cli.Context, log *slog.Logger) (agentOptions, error) {
	o := agentOptions{
		NodeName:           c.String("node-name"),
		Iface:              c.String("iface"),
		Port:               c.Int("port"),
		Join:               c.StringSlice("join"),
		BlockSize:          c.Int("block-size"),
		StateDir:           c.String("state-dir"),
		RunDir:             c.String("run-dir"),
		CNIConfDir:         c.String("cni-conf-dir"),
		MetricsAddr:        c.String("metrics-addr"),
		Masquerade:         c.Bool("masquerade"),
		ReclaimAfter:       c.Duration("reclaim-after"),
		AllowForeignHostIP: c.Bool("allow-foreign-host-ip"),
		JoinKubernetes:     c.Bool("join-kubernetes"),
		MTU:                c.Int("mtu"),
		ResyncInterval:     c.Duration("resync-interval"),
		ProbeInterval:      c.Duration("probe-interval"),
		ProbeMisses:        c.Int("probe-misses"),
	}
	var err error
	if o.Pool, err = netip.ParsePrefix(c.String("pool")); err != nil {
		return o, fmt.Errorf("--pool: %w", err)
	}
	if err := validatePool(o.Pool, o.BlockSize); err != nil {
		return o, err
	}
	if o.NodeName == "" {
		if o.NodeName, err = os.Hostname(); err != nil {
			return o, fmt.Errorf("--node-name not set and hostname unknown: %w", err)
		}
	}
	if o.Port <= 0 || o.Port > 65535 {
		return o, fmt.Errorf("--port %d out of range", o.Port)
	}
	if o.ResyncInterval <= 0 {
		return o, fmt.Errorf("--resync-interval must be positive")
	}
	if o.ProbeInterval < 0 {
		return o, fmt.Errorf("--probe-interval must not be negative (0 turns probes off)")
	}
	if o.ProbeMisses < 1 || o.ProbeMisses > 100 {
		return o, fmt.Errorf("--probe-misses %d out of range 1-100", o.ProbeMisses)
	}
	if o.MTU != 0 && (o.MTU < 576 || o.MTU > 65535) {
		return o, fmt.Errorf("--mtu %d out of range 576-65535", o.MTU)
	}
	if s := c.String("host-ip"); s != "" {
		if o.HostIP, err = netip.ParseAddr(s); err != nil || !o.HostIP.Is4() {
			return o, fmt.Errorf("--host-ip %q is not an IPv4 address", s)
		}
	}
	if f := c.String("gossip-key-file"); f != "" {
		if o.GossipKey, err = readGossipKey(f); err != nil {
			return o, err
		}
	} else {
		log.Warn("gossip is not encrypted: any host that can reach the gossip port can join and announce routes; set --gossip-key-file")
	}
	return o, nil
}

// validatePool checks that the pool can be cut into blocks of blockSize.
func validatePool(pool netip.Prefix, blockSize int) error {
	if !pool.Addr().Is4() {
		return fmt.Errorf("--pool %s: only IPv4 pools are supported", pool)
	}
	if pool.Masked() != pool {
		return fmt.Errorf("--pool %s is not a network address (did you mean %s?)", pool, pool.Masked())
	}
	if blockSize < pool.Bits() || blockSize > 30 {
		return fmt.Errorf("--block-size %d must be between the pool's prefix length %d and 30", blockSize, pool.Bits())
	}
	return nil
}

// readGossipKey reads a base64-encoded AES key of 16, 24 or 32 bytes.
func readGossipKey(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil {
		return nil, fmt.Errorf("gossip key %s: not base64: %w", path, err)
	}
	switch len(key) {
	case 16, 24, 32:
		return key, nil
	}
	return nil, fmt.Errorf("gossip key %s: %d bytes, want 16, 24 or 32 (use `grapevine keygen`)", path, len(key))
}

// runAgent resolves what the flags left to the host, then runs the agent
// until ctx ends.
func runAgent(ctx context.Context, o agentOptions, log *slog.Logger) error {
	uplink, err := resolveUplink(o.Iface, o.HostIP)
	if err != nil {
		return err
	}
	o.Iface, o.HostIP = uplink.Name, uplink.Addr
	if o.MTU == 0 {
		o.MTU = uplink.MTU
	}
	log = log.With("node", o.NodeName)
	log.Info("starting grapevine agent", "version", version, "iface", o.Iface, "hostIP", o.HostIP,
		"pool", o.Pool, "blockSize", o.BlockSize, "port", o.Port, "join", o.Join)

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

// meshConfig translates the options into the mesh's configuration.
func (o agentOptions) meshConfig(log *slog.Logger) mesh.Config {
	return mesh.Config{
		NodeName:           o.NodeName,
		AdvertiseAddr:      o.HostIP,
		BindAddr:           o.HostIP,
		Port:               o.Port,
		Pool:               o.Pool,
		BlockBits:          o.BlockSize,
		ReclaimAfter:       o.ReclaimAfter,
		StateDir:           o.StateDir,
		SecretKey:          o.GossipKey,
		AllowForeignHostIP: o.AllowForeignHostIP,
		Join:               o.Join,
		Logger:             log,
	}
}
