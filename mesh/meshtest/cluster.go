package meshtest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/grapevine-net/grapevine/internal/hostclock"
	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/ledger"
)

// GossipPort and LedgerPort are the ports every in-memory node listens on.
const (
	GossipPort = 7962
	LedgerPort = 7963
)

// FastRaft shortens the ledger's raft timers in proportion to FastTimers:
// elections within a second, leader leases that survive a loaded machine.
func FastRaft(c *raft.Config) {
	c.HeartbeatTimeout = 500 * time.Millisecond
	c.ElectionTimeout = 500 * time.Millisecond
	c.LeaderLeaseTimeout = 250 * time.Millisecond
	c.CommitTimeout = 10 * time.Millisecond
}

// FastLedger is FastRaft plus autopilot timings to match: a joiner is
// promoted to voter after a second alive, a dead voter replaced after two,
// a dead non-voter dropped from the configuration after five.
func FastLedger(c *ledger.Config) {
	c.Tune = FastRaft
	c.StableAfter = time.Second
	c.DeadVoterGrace = 2 * time.Second
	c.DeadNonvoterAfter = 5 * time.Second
}

// FastTimers shortens memberlist's LAN timers so in-memory clusters detect
// failures and spread state in a fraction of a second, while leaving
// enough slack that a loaded test machine does not cause false suspicion.
func FastTimers(c *memberlist.Config) {
	c.GossipInterval = 50 * time.Millisecond
	c.ProbeInterval = 500 * time.Millisecond
	c.ProbeTimeout = 250 * time.Millisecond
	c.PushPullInterval = time.Second
	c.GossipToTheDeadTime = 2 * time.Second
	c.DeadNodeReclaimTime = 100 * time.Millisecond
	c.TCPTimeout = time.Second
	c.SuspicionMult = 3
}

// Options configure every node of a Cluster.
type Options struct {
	Pool      netip.Prefix // zero: mesh.DefaultPool
	BlockBits int          // zero: mesh.DefaultBlockBits
	Lease     time.Duration
	// ReconnectInterval defaults to 500ms here.
	ReconnectInterval time.Duration
	SecretKey         []byte
	Tune              func(*memberlist.Config) // nil: FastTimers
	TuneLedger        func(*ledger.Config)     // nil: FastLedger
	Voters            int                      // zero: mesh.DefaultVoters
	Clock             hostclock.Clock          // every node's host clock unless its Spec has one
	Logger            *slog.Logger
	// Dilation stretches every node's protocol timers, those Tune and
	// TuneLedger chose included (zero: none).
	Dilation Dilation
}

// Cluster is a set of mesh nodes on one in-memory Network. Each node has
// its own state directory under the cluster's directory.
type Cluster struct {
	Net  *Network
	dir  string
	opts Options

	mu    sync.Mutex
	nodes map[string]*Node
	next  int
	// stores keeps each state directory's ledger log and snapshots in
	// memory, so a node restarted with its state dir finds them again.
	stores map[string]*ledger.Stores
}

// Node is one running mesh.
type Node struct {
	// Key is how the cluster knows the node: its name unless Spec.Key
	// set another (two nodes with one name).
	Key       string
	Name      string
	Addr      netip.AddrPort
	StateDir  string
	Mesh      *mesh.Mesh
	Transport *Transport
	Streams   *StreamHost
	Metrics   *prometheus.Registry

	cancel context.CancelFunc
	done   chan error
	snaps  *crashableSnapshots
}

// crashableSnapshots is a snapshot store that takes no snapshot once its
// node has crashed.
type crashableSnapshots struct {
	raft.SnapshotStore
	crashed atomic.Bool
}

func (s *crashableSnapshots) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	if s.crashed.Load() {
		return nil, errors.New("meshtest: the node crashed")
	}
	return s.SnapshotStore.Create(version, index, term, configuration, configurationIndex, trans)
}

// NewCluster returns an empty cluster keeping node state under dir.
func NewCluster(dir string, opts Options) *Cluster {
	if opts.Tune == nil {
		opts.Tune = FastTimers
	}
	if opts.TuneLedger == nil {
		opts.TuneLedger = FastLedger
	}
	if opts.ReconnectInterval == 0 {
		opts.ReconnectInterval = 500 * time.Millisecond
	}
	opts = opts.dilated()
	return &Cluster{Net: NewNetwork(), dir: dir, opts: opts, nodes: make(map[string]*Node), stores: make(map[string]*ledger.Stores)}
}

// HostAddr returns the address the cluster gives its i-th node.
func HostAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(1 + i>>16), byte(i >> 8), byte(1 + i&0xff)})
}

// Spec describes a node to start.
type Spec struct {
	Name string
	// Key registers the node under another key than its name, so that a
	// test can run two nodes with one name.
	Key string
	// Addr defaults to the next free HostAddr; set it to restart a node at
	// its old address (or at a new one).
	Addr netip.Addr
	// StateDir defaults to <cluster dir>/<name>.
	StateDir string
	// Join lists seeds. A node without seeds may found a new ledger, as
	// the agent started without --join; Found lets one with seeds found
	// too (a test's first node).
	Join  []string
	Found bool
	// BootstrapExpect founds with that many agents instead (see
	// mesh.Config.BootstrapExpect); the node then never founds alone.
	BootstrapExpect int
	// SecretKey overrides the cluster's key for this node.
	SecretKey []byte
	// Pool overrides the cluster's pool for this node: an agent started
	// with another --pool.
	Pool netip.Prefix
	// Clock is this node's host clock (nil: the cluster's).
	Clock hostclock.Clock
	// Incarnation gates the node's restart rule (nil: none, as without
	// --join-kubernetes).
	Incarnation mesh.Incarnation
	// LedgerRecord founds through a record outside the mesh (see
	// mesh.Config.LedgerRecord); the node then never founds otherwise.
	LedgerRecord mesh.LedgerRecord
}

// Start creates and runs a node. It returns once the node runs; the node
// claims its block in the background.
func (c *Cluster) Start(spec Spec) (*Node, error) {
	if spec.Key == "" {
		spec.Key = spec.Name
	}
	c.mu.Lock()
	if old, ok := c.nodes[spec.Key]; ok {
		c.mu.Unlock()
		return nil, fmt.Errorf("meshtest: node %s is already running at %s", spec.Key, old.Addr)
	}
	if !spec.Addr.IsValid() {
		spec.Addr = HostAddr(c.next)
		c.next++
	}
	if spec.StateDir == "" {
		spec.StateDir = filepath.Join(c.dir, spec.Key)
	}
	kept, ok := c.stores[spec.StateDir]
	if !ok {
		kept = ledger.NewMemStores()
		c.stores[spec.StateDir] = kept
	}
	c.mu.Unlock()
	// This run's view of the stores: Kill makes its snapshots fail, as a
	// crash takes none on the way down.
	snaps := &crashableSnapshots{SnapshotStore: kept.Snapshots}
	stores := &ledger.Stores{Log: kept.Log, Stable: kept.Stable, Snapshots: snaps}
	key := c.opts.SecretKey
	if spec.SecretKey != nil {
		key = spec.SecretKey
	}
	clock := c.opts.Clock
	if spec.Clock != nil {
		clock = spec.Clock
	}
	pool := c.opts.Pool
	if spec.Pool.IsValid() {
		pool = spec.Pool
	}
	addr := netip.AddrPortFrom(spec.Addr, GossipPort)
	tr, err := c.Net.NewTransport(addr)
	if err != nil {
		return nil, err
	}
	streams := c.Net.StreamHost(netip.AddrPortFrom(spec.Addr, LedgerPort))
	reg := prometheus.NewRegistry()
	logger := c.opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := mesh.New(mesh.Config{
		NodeName:          spec.Name,
		AdvertiseAddr:     spec.Addr,
		Port:              GossipPort,
		LedgerPort:        LedgerPort,
		Voters:            c.opts.Voters,
		Found:             (len(spec.Join) == 0 || spec.Found) && spec.BootstrapExpect == 0 && spec.LedgerRecord == nil,
		LedgerRecord:      spec.LedgerRecord,
		BootstrapExpect:   spec.BootstrapExpect,
		Pool:              pool,
		BlockBits:         c.opts.BlockBits,
		Lease:             c.opts.Lease,
		ReconnectInterval: c.opts.ReconnectInterval,
		// In memory a leave is gossiped within a few gossip intervals; a
		// killed node (no network) gives up quickly.
		LeaveTimeout:  c.opts.Dilation.Wall(300 * time.Millisecond),
		StateDir:      spec.StateDir,
		Incarnation:   spec.Incarnation,
		SecretKey:     key,
		Join:          spec.Join,
		Logger:        logger.With("node", spec.Name),
		Registerer:    reg,
		Transport:     tr,
		Tune:          c.opts.Tune,
		Clock:         clock,
		LedgerNetwork: streams,
		LedgerStores:  stores,
		TuneLedger:    c.opts.TuneLedger,
	})
	if err != nil {
		tr.Shutdown()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &Node{Key: spec.Key, Name: spec.Name, Addr: addr, StateDir: spec.StateDir, Mesh: m, Transport: tr, Streams: streams, Metrics: reg, cancel: cancel, done: make(chan error, 1), snaps: snaps}
	go func() { n.done <- m.Run(ctx) }()
	c.mu.Lock()
	c.nodes[spec.Key] = n
	c.mu.Unlock()
	return n, nil
}

// Record is an in-memory mesh.LedgerRecord: the Kubernetes API's create
// that fails if the object exists.
type Record struct {
	mu      sync.Mutex
	ledger  mesh.RecordedLedger
	set     bool
	creates int
	// by counts the creates by the node each names as its founder.
	by map[string]int
}

// Create records want unless a ledger is recorded already.
func (r *Record) Create(_ context.Context, want mesh.RecordedLedger) (mesh.RecordedLedger, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.creates++
	if r.by == nil {
		r.by = make(map[string]int)
	}
	r.by[want.Founder]++
	if r.set {
		return r.ledger, false, nil
	}
	r.ledger, r.set = want, true
	return want, true, nil
}

// Read returns the recorded ledger, if any.
func (r *Record) Read(context.Context) (mesh.RecordedLedger, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ledger, r.set, nil
}

// Where names the record.
func (r *Record) Where() string { return "the test's record" }

// Get returns the recorded ledger, if any, and how many creates were asked.
func (r *Record) Get() (mesh.RecordedLedger, bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ledger, r.set, r.creates
}

// CreatesBy is how many creates node asked for.
func (r *Record) CreatesBy(node string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.by[node]
}

// ResetLedger is `grapevine ledger reset` on a stopped node's state
// directory: its ledger state (kept in memory here) is set aside, its node
// ID stays.
func (c *Cluster) ResetLedger(stateDir string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		if n.StateDir == stateDir {
			return fmt.Errorf("meshtest: node %s still runs on %s", n.Key, stateDir)
		}
	}
	c.stores[stateDir] = ledger.NewMemStores()
	_, err := mesh.ResetLedger(stateDir, time.Now())
	return err
}

// RecoverLedger is `grapevine ledger recover` on a stopped node's state
// directory, as mesh.RecoverLedger does it: the node at host becomes the
// only voter of a new ledger holding its replica, unless another voter of
// its configuration answers on its ledger or gossip port from host (so a
// partition hides voters from it, as it hides them from the command).
func (c *Cluster) RecoverLedger(ctx context.Context, stateDir string, host netip.Addr) (ledger.Recovery, error) {
	c.mu.Lock()
	for _, n := range c.nodes {
		if n.StateDir == stateDir {
			c.mu.Unlock()
			return ledger.Recovery{}, fmt.Errorf("meshtest: node %s still runs on %s", n.Key, stateDir)
		}
	}
	stores := c.stores[stateDir]
	c.mu.Unlock()
	if stores == nil {
		return ledger.Recovery{}, fmt.Errorf("meshtest: no ledger state in %s", stateDir)
	}
	id, err := ledger.LoadOrCreateNodeID(stateDir)
	if err != nil {
		return ledger.Recovery{}, fmt.Errorf("node ID in %s: %w", stateDir, err)
	}
	from := c.Net.StreamHost(netip.AddrPortFrom(host, LedgerPort))
	dial := func(ctx context.Context, addr netip.AddrPort) error {
		if addr.Port() == GossipPort {
			_, err := c.Net.peer(host, addr.String())
			return err
		}
		// A listener that never accepts is down, as a silent host is.
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		conn, err := from.Dial(ctx, addr)
		if err != nil {
			return err
		}
		return conn.Close()
	}
	return ledger.RecoverStores(stores, id, netip.AddrPortFrom(host, LedgerPort), ledger.RefuseAnswering(ctx, dial, GossipPort))
}

// Stop ends a node (by key) gracefully: it leaves the cluster.
func (c *Cluster) Stop(name string) error {
	n, err := c.remove(name)
	if err != nil {
		return err
	}
	n.cancel()
	err = <-n.done
	n.Transport.Shutdown()
	n.Streams.Close()
	return err
}

// Kill ends a node as a crash (kill -9) would: its network goes silent
// first, so peers see a failure, not a leave; its ledger hands nothing over
// and takes no snapshot on the way down, so a restart finds the replica of
// its last snapshot.
func (c *Cluster) Kill(name string) error {
	n, err := c.remove(name)
	if err != nil {
		return err
	}
	n.snaps.crashed.Store(true)
	n.Transport.Shutdown()
	n.Streams.Close()
	n.cancel()
	return <-n.done
}

func (c *Cluster) remove(name string) (*Node, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.nodes[name]
	if !ok {
		return nil, fmt.Errorf("meshtest: no running node %s", name)
	}
	delete(c.nodes, name)
	return n, nil
}

// Close ends every node at once, as Kill does: a cluster leaving all at
// once has nobody left to tell, and a graceful leave would wait for that.
func (c *Cluster) Close() error {
	nodes := c.Nodes()
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() { errs[i] = c.Kill(n.Key) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// LedgerStores returns the ledger log and snapshots kept for state
// directory dir (nil: none yet), for what an operator does to a stopped
// node's state: grapevine ledger recover.
func (c *Cluster) LedgerStores(dir string) *ledger.Stores {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stores[dir]
}

// RemoveLedgerStores forgets the ledger log and snapshots of state
// directory dir, as removing <state-dir>/raft does: the node keeps its
// node ID and block.json.
func (c *Cluster) RemoveLedgerStores(dir string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.stores, dir)
}

// Node returns the running node with key name, or nil.
func (c *Cluster) Node(name string) *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[name]
}

// Nodes returns the running nodes sorted by name.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*Node, 0, len(c.nodes))
	for _, n := range c.nodes {
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b *Node) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// Views returns every running node's View by node key.
func (c *Cluster) Views() map[string]mesh.View {
	out := make(map[string]mesh.View)
	for _, n := range c.Nodes() {
		out[n.Key] = n.Mesh.View()
	}
	return out
}

// BytesSent is the total gossip traffic of the running nodes so far.
func (c *Cluster) BytesSent() int64 {
	var sum int64
	for _, n := range c.Nodes() {
		sum += n.Transport.BytesSent()
	}
	return sum
}

// Traffic is what one node has sent so far: gossip at its memberlist
// transport, and the ledger's bytes on its streams.
type Traffic struct {
	Messages, Bytes int64
	LedgerBytes     int64
}

// Traffic returns every running node's traffic so far, by node name.
func (c *Cluster) Traffic() map[string]Traffic {
	out := make(map[string]Traffic)
	for _, n := range c.Nodes() {
		out[n.Name] = Traffic{Messages: n.Transport.MessagesSent(), Bytes: n.Transport.BytesSent(), LedgerBytes: n.Streams.BytesSent()}
	}
	return out
}

// SharedBlock returns an error if one block is used by two nodes in what
// the views hand to the kernel and the CNI plugin: the blocks of ready
// nodes (pods get addresses from them), and each node's routes (what the
// agent's desiredState programs: live, non-foreign members with a block).
// No two ready nodes may hold one block, no node may route one block to
// two members, and no node may route its own ready block to another.
func SharedBlock(views map[string]mesh.View) error {
	owner := make(map[netip.Prefix]string)
	for _, name := range sortedNames(views) {
		v := views[name]
		if !v.Ready || !v.Block.IsValid() {
			continue
		}
		if other, ok := owner[v.Block]; ok {
			return fmt.Errorf("block %s is used by both %s and %s", v.Block, other, name)
		}
		owner[v.Block] = name
	}
	for _, name := range sortedNames(views) {
		v := views[name]
		routed := make(map[netip.Prefix]string)
		for _, m := range v.Members {
			if !m.Block.IsValid() || !(m.State == mesh.Alive || m.State == mesh.Suspect) {
				continue
			}
			if m.Foreign {
				return fmt.Errorf("%s routes %s to %s, a member of another ledger", name, m.Block, m.Name)
			}
			if other, ok := routed[m.Block]; ok {
				return fmt.Errorf("%s routes %s to both %s and %s", name, m.Block, other, m.Name)
			}
			routed[m.Block] = m.Name
			if v.Ready && m.Block == v.Block {
				return fmt.Errorf("%s routes its own block %s to %s", name, m.Block, m.Name)
			}
		}
	}
	return nil
}

func sortedNames(views map[string]mesh.View) []string {
	names := make([]string, 0, len(views))
	for n := range views {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Converged returns nil when every view is ready with a block, the blocks
// are unique, and every view lists every other node alive with that node's
// block; otherwise it says what is missing.
func Converged(views map[string]mesh.View) error {
	if err := SharedBlock(views); err != nil {
		return err
	}
	for name, v := range views {
		if !v.Ready || !v.Block.IsValid() {
			return fmt.Errorf("%s is not ready: %s", name, v.Reason)
		}
	}
	for name, v := range views {
		seen := make(map[string]mesh.Member, len(v.Members))
		for _, m := range v.Members {
			seen[m.Name] = m
		}
		for other, ov := range views {
			if other == name {
				continue
			}
			m, ok := seen[other]
			switch {
			case !ok:
				return fmt.Errorf("%s does not know %s", name, other)
			case m.State != mesh.Alive:
				return fmt.Errorf("%s sees %s as %s", name, other, m.State)
			case m.Block != ov.Block:
				return fmt.Errorf("%s routes %s to %s, which holds %s", name, m.Block, other, ov.Block)
			}
		}
	}
	return nil
}
