// Package lab builds a cluster of grapevine hosts on one Linux machine out of
// network namespaces, and drives the real agent and CNI binaries in it.
//
// The topology mirrors a small data centre LAN:
//
//	<id>-sw    a switch: bridge br0 (and br1 while partitioned), one port per host
//	<id>-hN    host N: em1 = 172.16.254.N/24, default via 172.16.254.254
//	<id>-out   "the internet": em1 = 172.16.254.254/24, no route to the pod pool
//	<id>-hN-pM a pod on host N, wired by CNI through libcni
//
// A routed lab (Config.Routed) adds a second LAN behind a router, as two
// racks or two cloud subnets are:
//
//	<id>-sw2   the second switch, 172.16.253.0/24
//	<id>-rt    the router: em1 = 172.16.254.253/24, em2 = 172.16.253.253/24;
//	           it forwards between host addresses and has no route to the pod
//	           pool, like a real router that nobody told about the pods
//	<id>-hN    on the second LAN: em1 = 172.16.253.N/24, default via the router;
//	           hosts on the first LAN reach 172.16.253.0/24 through it
//
// Every name starts with "gvl" and the lab's random run id, so labs of
// concurrent runs never collide, and a lab can be removed by its id alone
// (Down) even after the process that built it died. Nothing is ever created
// in the machine's root network namespace: veth pairs are created inside the
// switch namespace with their far end placed directly in the host namespace.
package lab

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// NamePrefix starts the name of every namespace a lab creates.
const NamePrefix = "gvl"

// The LAN every lab host sits on, as in the seed article: host N is .N.
var (
	lanPrefix = netip.MustParsePrefix("172.16.254.0/24")
	outsideIP = netip.MustParseAddr("172.16.254.254")
)

// The IPv6 network a test may add to the first LAN (Host.AddIP6,
// Lab.AddOutsideIP6): host N is ::N, the outside host ::fe.
var (
	lanPrefix6 = netip.MustParsePrefix("fd00:172:16:254::/64")
	outsideIP6 = netip.MustParseAddr("fd00:172:16:254::fe")
)

// The second LAN of a routed lab, and the router's address on each LAN.
var (
	lan2Prefix = netip.MustParsePrefix("172.16.253.0/24")
	routerIP   = netip.MustParseAddr("172.16.254.253")
	router2IP  = netip.MustParseAddr("172.16.253.253")
)

// The IPv6 twins of the second LAN and the router's addresses, for
// IPv6-only hosts of a routed lab (Lab.AddRouterIP6).
var (
	lan2Prefix6 = netip.MustParsePrefix("fd00:172:16:253::/64")
	routerIP6   = netip.MustParseAddr("fd00:172:16:254::fd")
	router2IP6  = netip.MustParseAddr("fd00:172:16:253::fd")
)

// LANs of a lab: hosts are plugged into one of them.
const (
	LAN1 = 1 // 172.16.254.0/24, with the outside host
	LAN2 = 2 // 172.16.253.0/24, behind the router (routed labs only)
)

// maxHosts keeps host addresses below the outside host's.
const maxHosts = 250

// Config describes a lab to build.
type Config struct {
	// ID is the run id; empty picks a random one. Names are "gvl"+ID+"-...".
	ID string
	// Hosts is how many hosts New creates on the first LAN; more can be
	// added with AddHost.
	Hosts int
	// Routed builds the second LAN and the router (see the package comment).
	Routed bool
	// Hosts2 is how many hosts New creates on the second LAN, numbered
	// after the first LAN's; it needs Routed.
	Hosts2 int
	// Dir holds each host's state, run and CNI directories and agent logs.
	// Empty: a new temporary directory, removed by Close.
	Dir string
	// BinDir holds the grapevine binary.
	BinDir string
	// CNIPath lists the directories holding the CNI plugins.
	CNIPath []string
	// Detach makes agents outlive this process (for the demo): they run in
	// their own session and are not killed when the parent dies.
	Detach bool
	Logger *slog.Logger
}

// Lab is a running lab. Its methods are safe for concurrent use.
type Lab struct {
	ID      string
	Dir     string
	BinDir  string
	CNIPath []string
	// KeyFile holds the gossip key every host's agent uses unless told otherwise.
	KeyFile string
	Switch  Namespace
	Outside Namespace
	// Switch2 and Router exist in routed labs only.
	Switch2 Namespace
	Router  Namespace
	routed  bool

	detach  bool
	ownsDir bool
	log     *slog.Logger

	addMu sync.Mutex // serializes AddHost, which numbers hosts
	mu    sync.Mutex
	hosts []*Host
}

// New builds the switch, the outside host and cfg.Hosts hosts. Agents are not
// started; see Host.StartAgent and Lab.StartAgents. On error, whatever was
// built is removed again.
func New(ctx context.Context, cfg Config) (_ *Lab, err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	l, err := claim(cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			l.Close(context.WithoutCancel(ctx))
		}
	}()

	l.KeyFile = filepath.Join(l.Dir, "gossip.key")
	if err := WriteGossipKey(l.KeyFile); err != nil {
		return nil, err
	}
	if err := l.buildSwitch(ctx); err != nil {
		return nil, err
	}
	if cfg.Hosts2 > 0 && !cfg.Routed {
		return nil, errors.New("lab: hosts on a second LAN need a routed lab")
	}
	if cfg.Routed {
		if err := l.buildRouter(ctx); err != nil {
			return nil, err
		}
	}
	for range cfg.Hosts {
		if _, err := l.AddHost(ctx); err != nil {
			return nil, err
		}
	}
	for range cfg.Hosts2 {
		if _, err := l.AddHostOn(ctx, LAN2); err != nil {
			return nil, err
		}
	}
	l.log.Info("lab built", "hosts", cfg.Hosts, "hosts2", cfg.Hosts2, "dir", l.Dir)
	return l, nil
}

// claim picks the lab's id and directory and registers it. Until the id is
// claimed nothing may be cleaned up by id: that would remove another run's
// lab of the same id. A random id that is taken is replaced by another.
func claim(cfg Config) (*Lab, error) {
	for attempt := 1; ; attempt++ {
		id := cfg.ID
		if id == "" {
			id = NewID()
		}
		l := &Lab{
			ID:      id,
			Dir:     cfg.Dir,
			BinDir:  cfg.BinDir,
			CNIPath: cfg.CNIPath,
			Switch:  Namespace{Name: NamePrefix + id + "-sw"},
			Outside: Namespace{Name: NamePrefix + id + "-out"},
			Switch2: Namespace{Name: NamePrefix + id + "-sw2"},
			Router:  Namespace{Name: NamePrefix + id + "-rt"},
			routed:  cfg.Routed,
			detach:  cfg.Detach,
			log:     cfg.Logger.With("lab", NamePrefix+id),
		}
		err := l.claimID()
		if err == nil {
			return l, nil
		}
		if cfg.ID != "" || !errors.Is(err, fs.ErrExist) || attempt == 10 {
			return nil, err
		}
	}
}

func (l *Lab) claimID() (err error) {
	if names, err := Namespaces(NamePrefix + l.ID + "-"); err != nil {
		return err
	} else if len(names) > 0 {
		return fmt.Errorf("lab %s: namespaces %v exist: %w", l.ID, names, fs.ErrExist)
	}
	if l.Dir == "" {
		if l.Dir, err = os.MkdirTemp("", NamePrefix+l.ID+"-"); err != nil {
			return fmt.Errorf("lab directory: %w", err)
		}
		l.ownsDir = true
	} else if err := os.MkdirAll(l.Dir, 0o755); err != nil {
		return fmt.Errorf("lab directory: %w", err)
	}
	if err := l.claimRecord(); err != nil {
		if l.ownsDir {
			os.RemoveAll(l.Dir)
		}
		return fmt.Errorf("lab %s: %w", l.ID, err)
	}
	return nil
}

// NewID returns a random run id: 4 hex digits keep interface-sized names short.
func NewID() string {
	var b [2]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// WriteGossipKey writes a new random 32-byte gossip key, base64 encoded, as
// `grapevine keygen` would.
func WriteGossipKey(path string) error {
	var key [32]byte
	rand.Read(key[:])
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(key[:])+"\n"), 0o600); err != nil {
		return fmt.Errorf("write gossip key: %w", err)
	}
	return nil
}

func (l *Lab) buildSwitch(ctx context.Context) error {
	if err := createSwitch(ctx, l.Switch); err != nil {
		return err
	}
	if err := l.Outside.create(ctx); err != nil {
		return err
	}
	return plug(ctx, l.Switch, l.Outside, "out", "em1", netip.PrefixFrom(outsideIP, lanPrefix.Bits()))
}

func createSwitch(ctx context.Context, sw Namespace) error {
	if err := sw.create(ctx); err != nil {
		return err
	}
	if err := sw.ip(ctx, "link", "add", "br0", "type", "bridge"); err != nil {
		return err
	}
	return sw.ip(ctx, "link", "set", "br0", "up")
}

// buildRouter builds the second switch and the router between the LANs. The
// router forwards between host addresses only: it has the two connected
// networks and nothing else, so a packet to a pod address dies there.
func (l *Lab) buildRouter(ctx context.Context) error {
	if err := createSwitch(ctx, l.Switch2); err != nil {
		return err
	}
	if err := l.Router.create(ctx); err != nil {
		return err
	}
	if err := plug(ctx, l.Switch, l.Router, "rt", "em1", netip.PrefixFrom(routerIP, lanPrefix.Bits())); err != nil {
		return err
	}
	if err := plug(ctx, l.Switch2, l.Router, "rt", "em2", netip.PrefixFrom(router2IP, lan2Prefix.Bits())); err != nil {
		return err
	}
	if _, err := l.Router.Run(ctx, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		return err
	}
	// The outside host answers hosts of both LANs.
	return l.Outside.ip(ctx, "route", "add", lan2Prefix.String(), "via", routerIP.String())
}

// plug connects ns to switch sw: ifname in ns, port on br0 in the switch.
func plug(ctx context.Context, sw, ns Namespace, port, ifname string, addr netip.Prefix) error {
	steps := [][]string{
		{"-n", sw.Name, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns.Name},
		{"-n", sw.Name, "link", "set", port, "master", "br0", "up"},
		{"-n", ns.Name, "addr", "add", addr.String(), "dev", ifname},
		{"-n", ns.Name, "link", "set", ifname, "up"},
	}
	for _, args := range steps {
		if _, err := Run(ctx, "ip", args...); err != nil {
			return err
		}
	}
	return nil
}

// plugHost connects h to the switch of its LAN, with its address and routes:
// default via the outside host on the first LAN (via the router on the
// second), and in a routed lab the other LAN via the router.
func (l *Lab) plugHost(ctx context.Context, h *Host) error {
	sw, prefix := l.Switch, lanPrefix
	if h.LAN == LAN2 {
		sw, prefix = l.Switch2, lan2Prefix
	}
	if err := plug(ctx, sw, h.Namespace, h.Name, "em1", netip.PrefixFrom(h.IP, prefix.Bits())); err != nil {
		return err
	}
	var routes [][]string
	switch {
	case h.LAN == LAN2:
		routes = [][]string{{"default", "via", router2IP.String()}}
	case l.routed:
		routes = [][]string{{"default", "via", outsideIP.String()}, {lan2Prefix.String(), "via", routerIP.String()}}
	default:
		routes = [][]string{{"default", "via", outsideIP.String()}}
	}
	for _, r := range routes {
		if err := h.ip(ctx, append([]string{"route", "add"}, r...)...); err != nil {
			return err
		}
	}
	return nil
}

// switchOf is the switch namespace h is plugged into.
func (l *Lab) switchOf(h *Host) Namespace {
	if h.LAN == LAN2 {
		return l.Switch2
	}
	return l.Switch
}

// AddHost creates the next host (namespace, em1, default route) on the
// first LAN, and its directories. It does not start an agent.
func (l *Lab) AddHost(ctx context.Context) (*Host, error) {
	return l.AddHostOn(ctx, LAN1)
}

// AddHostOn is AddHost on the given LAN (LAN2 needs a routed lab).
func (l *Lab) AddHostOn(ctx context.Context, lan int) (*Host, error) {
	if lan != LAN1 && (lan != LAN2 || !l.routed) {
		return nil, fmt.Errorf("lab has no LAN %d", lan)
	}
	l.addMu.Lock()
	defer l.addMu.Unlock()
	n := len(l.Hosts()) + 1
	if n > maxHosts {
		return nil, fmt.Errorf("lab holds at most %d hosts", maxHosts)
	}
	h := newHost(l, n, lan)
	for _, d := range []string{h.StateDir(), h.RunDir(), h.ConfDir(), h.cniCacheDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("host %s: %w", h.Name, err)
		}
	}
	if err := h.create(ctx); err != nil {
		return nil, err
	}
	if err := l.plugHost(ctx, h); err != nil {
		return nil, fmt.Errorf("host %s: %w", h.Name, err)
	}
	l.mu.Lock()
	l.hosts = append(l.hosts, h)
	l.mu.Unlock()
	return h, nil
}

// Hosts returns the lab's hosts in order (h1 first).
func (l *Lab) Hosts() []*Host {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Host(nil), l.hosts...)
}

// Host returns host n (1-based).
func (l *Lab) Host(n int) *Host {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.hosts[n-1]
}

// OutsideIP is the address of the outside host.
func (l *Lab) OutsideIP() netip.Addr { return outsideIP }

// AddOutsideIP6 gives the outside host its IPv6 address on the first LAN
// (nodad: usable at once) and returns it. Labs have no IPv6 until a test
// asks, so the IPv4-only tests see the LAN they always saw.
func (l *Lab) AddOutsideIP6(ctx context.Context) (netip.Addr, error) {
	if err := l.Outside.ip(ctx, "-6", "addr", "add", netip.PrefixFrom(outsideIP6, lanPrefix6.Bits()).String(), "dev", "em1", "nodad"); err != nil {
		return netip.Addr{}, fmt.Errorf("outside host's IPv6 address: %w", err)
	}
	return outsideIP6, nil
}

// AddRouterIP6 gives the router of a routed lab its IPv6 addresses on both
// LANs (fd00:172:16:254::fd and fd00:172:16:253::fd) and turns on its IPv6
// forwarding, so that IPv6-only hosts of the two LANs reach each other
// (Host.MakeIPv6Only routes them through it).
func (l *Lab) AddRouterIP6(ctx context.Context) error {
	if !l.routed {
		return errors.New("lab: the router's IPv6 addresses need a routed lab")
	}
	for _, a := range []struct {
		dev  string
		addr netip.Prefix
	}{{"em1", netip.PrefixFrom(routerIP6, lanPrefix6.Bits())}, {"em2", netip.PrefixFrom(router2IP6, lan2Prefix6.Bits())}} {
		if err := l.Router.ip(ctx, "-6", "addr", "add", a.addr.String(), "dev", a.dev, "nodad"); err != nil {
			return fmt.Errorf("router's IPv6 address: %w", err)
		}
	}
	if _, err := l.Router.Run(ctx, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"); err != nil {
		return fmt.Errorf("router's IPv6 forwarding: %w", err)
	}
	return nil
}

// RouterIP is the router's address on a LAN of a routed lab.
func (l *Lab) RouterIP(lan int) netip.Addr {
	if lan == LAN2 {
		return router2IP
	}
	return routerIP
}

// StartAgents starts the agent on every given host (all hosts when none are given).
func (l *Lab) StartAgents(ctx context.Context, hosts ...*Host) error {
	if len(hosts) == 0 {
		hosts = l.Hosts()
	}
	for _, h := range hosts {
		if err := h.StartAgent(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Partition splits the LAN: the given hosts' switch ports move to a second
// bridge, so they only reach each other. The outside host stays on br0.
func (l *Lab) Partition(ctx context.Context, hosts ...*Host) error {
	for _, h := range hosts {
		if h.LAN != LAN1 {
			return fmt.Errorf("partition: host %s is on LAN %d; only the first LAN's switch is split", h.Name, h.LAN)
		}
	}
	if _, err := Run(ctx, "ip", "-n", l.Switch.Name, "link", "show", "br1"); err != nil {
		if err := l.Switch.ip(ctx, "link", "add", "br1", "type", "bridge"); err != nil {
			return err
		}
		if err := l.Switch.ip(ctx, "link", "set", "br1", "up"); err != nil {
			return err
		}
	}
	for _, h := range hosts {
		if err := l.Switch.ip(ctx, "link", "set", h.Name, "master", "br1"); err != nil {
			return err
		}
	}
	return nil
}

// Heal moves every host's switch port back to br0.
func (l *Lab) Heal(ctx context.Context) error {
	for _, h := range l.Hosts() {
		if err := l.switchOf(h).ip(ctx, "link", "set", h.Name, "master", "br0"); err != nil {
			return err
		}
	}
	return nil
}

// Close stops every agent and removes everything the lab created. It keeps
// going after errors and returns them all.
func (l *Lab) Close(ctx context.Context) error {
	var errs []error
	for _, h := range l.Hosts() {
		if err := h.KillAgent(); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, l.record().Remove(ctx))
	return errors.Join(errs...)
}

// Down removes every namespace of the lab with the given run id, after
// killing any process still running inside them (agents, echo servers). It
// works from the names alone, so it also cleans up after a process that died
// before it could close its lab.
func Down(ctx context.Context, id string) error {
	if id == "" {
		return errors.New("lab down: empty run id")
	}
	names, err := Namespaces(NamePrefix + id + "-")
	if err != nil {
		return err
	}
	// The namespaces' processes are ended all at once: each waits for its
	// parent to reap it, which init does only every second or two.
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() { errs[i] = Namespace{Name: name}.killProcesses(ctx) })
	}
	wg.Wait()
	// Containers live in namespaces of their own; their runtime's cgroups
	// still hold them.
	errs = append(errs, removeCgroups(id))
	// Any order works: a veth pair goes away with the first of its two
	// namespaces to be deleted.
	for _, name := range names {
		if _, err := Run(ctx, "ip", "netns", "delete", name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Namespaces lists the named network namespaces whose names start with
// prefix, sorted.
func Namespaces(prefix string) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}
