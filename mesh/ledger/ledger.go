package ledger

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/bbolt"
)

// Defaults.
const (
	DefaultPort              = 7963
	DefaultVoters            = 3
	DefaultLease             = 24 * time.Hour
	DefaultDeadVoterGrace    = 10 * time.Second
	DefaultStableAfter       = 10 * time.Second
	DefaultDeadNonvoterAfter = 30 * time.Minute

	applyTimeout       = 10 * time.Second
	rpcTimeout         = 15 * time.Second
	defaultCallTimeout = 30 * time.Second // Claim and Release without a ctx deadline
)

// Config configures one node of the ledger.
type Config struct {
	ID         NodeID
	Name       string         // node name (memberlist name)
	Advertise  netip.AddrPort // TCP address peers dial for raft and ledger RPCs; port 0 with the TCP network: the port bound
	Bind       netip.AddrPort // listen address (zero: 0.0.0.0:<advertise port>)
	Dir        string         // <state-dir>/raft
	Key        []byte         // the gossip key (16/24/32 bytes); nil: plaintext (logged once as a warning)
	Voters     int            // default 3; odd, 1..5
	Pool       netip.Prefix
	BlockBits  int
	Lease      time.Duration // how long a grant of a block lasts (see LeaseMargin)
	Found      bool          // no existing raft state: bootstrap a new single-voter ledger at once (see Bootstrap for more founders)
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Network    Network // nil: TCP (+TLS with a key)
	Stores     *Stores // nil: bolt + file snapshots under Dir
	// Report is what this node answers a report request from a member
	// with (see Ledger.Report): JSON of the caller's making, at most
	// MaxReport bytes. nil: such requests are refused.
	Report func(ctx context.Context) ([]byte, error)
	Tune   func(*raft.Config) // tests: faster timers

	// Autopilot timings (zero: defaults). A voter dead in gossip for
	// DeadVoterGrace is replaced; a non-voter alive for StableAfter may be
	// promoted; a non-voter dead for DeadNonvoterAfter is removed.
	DeadVoterGrace    time.Duration
	StableAfter       time.Duration
	DeadNonvoterAfter time.Duration
}

// Stores are raft's log, stable store and snapshots.
type Stores struct {
	Log       raft.LogStore
	Stable    raft.StableStore
	Snapshots raft.SnapshotStore
}

// NewMemStores returns stores kept in memory: pass the same Stores to a
// restarted ledger to restart "with state".
func NewMemStores() *Stores {
	s := raft.NewInmemStore()
	return &Stores{Log: s, Stable: s, Snapshots: raft.NewInmemSnapshotStore()}
}

// Peer is gossip's view of one member, pushed by the mesh on every change.
// A member whose metadata the mesh rejected has only ID and Alive: it
// counts for liveness, never as an address to dial or a name.
type Peer struct {
	ID        NodeID
	Name      string
	Addr      netip.AddrPort // raft/RPC address from metadata
	HostIP    netip.Addr
	ClusterID ClusterID // zero: not in any ledger yet
	Alive     bool      // memberlist Alive or Suspect
	// LedgerState: the node advertises that it belongs to a ledger or
	// began founding one, so its raft runs and can vote.
	LedgerState bool
}

// Info describes this node's place in the ledger.
type Info struct {
	ClusterID    ClusterID
	Role         string   // "leader", "voter", "nonvoter", "none"
	Leader       string   // leader's node name ("" unknown)
	Voters       []string // names
	LastIndex    uint64   // last log index
	AppliedIndex uint64
}

// Ledger is one node of the replicated block ownership log.
type Ledger struct {
	cfg       Config
	log       *slog.Logger
	fsm       *fsm
	stores    *Stores
	closeDisk func() error
	net       Network
	ln        net.Listener
	serverTLS *tls.Config
	clientTLS *tls.Config
	metrics   *metrics
	rpcsSent  *rpcCounts
	changed   chan struct{}

	raft atomic.Pointer[raft.Raft]
	// serveCtx bounds the RPCs this node serves; Run cancels it on shutdown.
	serveCtx    context.Context
	cancelServe context.CancelFunc
	started     chan struct{} // closed once raft runs
	stopped     chan struct{} // closed when Run has shut everything down

	// leases is the leader's record of the leases it granted.
	leases leaseTable

	mu        sync.Mutex
	peers     []Peer
	peersSeen bool
	// wake wakes the leader loop when gossip's view changes (a voter
	// stands as soon as gossip calls its leader dead) or this node founds.
	wake chan struct{}
	// founderStands: this node is the founder that stands for the new
	// ledger's first election (standing).
	founderStands atomic.Bool
}

// Open validates cfg, opens the stores and the listener, and loads the
// last snapshot so State is meaningful at once. Run starts the node; the
// end of Run's context releases everything Open took.
func Open(cfg Config) (*Ledger, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	l := &Ledger{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "ledger"),
		changed: make(chan struct{}, 1),
		started: make(chan struct{}),
		stopped: make(chan struct{}),
		wake:    make(chan struct{}, 1),
	}
	l.serveCtx, l.cancelServe = context.WithCancel(context.Background())
	m, err := newMetrics(cfg.Registerer, l.leaderGauge, l.lastIndexGauge, l.appliedIndexGauge)
	if err != nil {
		return nil, err
	}
	l.metrics = m
	l.fsm = newFSM(l.notify, m.apply)
	if cfg.Key != nil {
		if l.serverTLS, l.clientTLS, err = tlsConfigs(cfg.Key); err != nil {
			m.unregister()
			return nil, err
		}
	} else {
		l.log.Warn("ledger traffic is NOT authenticated or encrypted: no gossip key configured")
	}
	l.stores = cfg.Stores
	if l.stores == nil {
		if l.stores, l.closeDisk, err = openDiskStores(cfg.Dir, l.log); err != nil {
			m.unregister()
			return nil, err
		}
	}
	if err := l.loadSnapshot(); err != nil {
		l.closeStores()
		m.unregister()
		return nil, err
	}
	if err := l.checkStoredLayout(); err != nil {
		l.closeStores()
		m.unregister()
		return nil, err
	}
	l.net = cfg.Network
	if l.net == nil {
		bind := cfg.Bind
		if !bind.IsValid() {
			bind = netip.AddrPortFrom(netip.IPv4Unspecified(), cfg.Advertise.Port())
		}
		l.net = TCPNetwork(bind)
	}
	ln, err := l.net.Listen()
	if err != nil {
		l.closeStores()
		m.unregister()
		return nil, fmt.Errorf("ledger listen: %w", err)
	}
	l.ln = ln
	if l.cfg.Advertise.Port() == 0 {
		if ta, ok := ln.Addr().(*net.TCPAddr); ok {
			l.cfg.Advertise = netip.AddrPortFrom(l.cfg.Advertise.Addr(), uint16(ta.Port))
		}
	}
	return l, nil
}

func (c *Config) setDefaults() error {
	if c.ID.IsZero() {
		return errors.New("ledger: zero node ID")
	}
	if err := validName(c.Name); err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	if !c.Advertise.IsValid() || c.Advertise.Addr().IsUnspecified() {
		return fmt.Errorf("ledger: advertise address %q must be an IP address and port peers can dial", c.Advertise)
	}
	if c.Voters == 0 {
		c.Voters = DefaultVoters
	}
	if c.Voters < 1 || c.Voters > 5 || c.Voters%2 == 0 {
		return fmt.Errorf("ledger: %d voters: want 1, 3 or 5", c.Voters)
	}
	if err := validatePool(c.Pool, c.BlockBits); err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	switch len(c.Key) {
	case 0:
		c.Key = nil
	case 16, 24, 32:
	default:
		return fmt.Errorf("ledger: gossip key of %d bytes: want 16, 24 or 32", len(c.Key))
	}
	if c.Stores == nil && c.Dir == "" {
		return errors.New("ledger: no state directory")
	}
	if c.Lease == 0 {
		c.Lease = DefaultLease
	}
	if c.Lease < 0 {
		return fmt.Errorf("ledger: negative lease %s", c.Lease)
	}
	if c.DeadVoterGrace <= 0 {
		c.DeadVoterGrace = DefaultDeadVoterGrace
	}
	if c.StableAfter <= 0 {
		c.StableAfter = DefaultStableAfter
	}
	if c.DeadNonvoterAfter <= 0 {
		c.DeadNonvoterAfter = DefaultDeadNonvoterAfter
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// openDiskStores opens <dir>/raft.db (log and stable store) and
// <dir>/snapshots. A second agent on the same directory fails here
// instead of sharing the log.
func openDiskStores(dir string, log *slog.Logger) (*Stores, func() error, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("ledger state dir: %w", err)
	}
	bolt, err := raftboltdb.New(raftboltdb.Options{
		Path:        filepath.Join(dir, "raft.db"),
		BoltOptions: &bbolt.Options{Timeout: 2 * time.Second},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("open ledger log %s (is another agent using this state dir?): %w", filepath.Join(dir, "raft.db"), err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, newHCLog(log, "raft-snapshots"))
	if err != nil {
		bolt.Close()
		return nil, nil, fmt.Errorf("open ledger snapshots: %w", err)
	}
	logs, err := raft.NewLogCache(256, bolt)
	if err != nil {
		bolt.Close()
		return nil, nil, err
	}
	return &Stores{Log: logs, Stable: bolt, Snapshots: snaps}, bolt.Close, nil
}

func (l *Ledger) closeStores() {
	if l.closeDisk != nil {
		if err := l.closeDisk(); err != nil {
			l.log.Warn("close ledger log", "err", err)
		}
		l.closeDisk = nil
	}
}

// loadSnapshot restores the newest snapshot into the state machine, so a
// restarted node knows the (committed) ledger before it hears a leader.
func (l *Ledger) loadSnapshot() error {
	metas, err := l.stores.Snapshots.List()
	if err != nil {
		return fmt.Errorf("list ledger snapshots: %w", err)
	}
	if len(metas) == 0 {
		return nil
	}
	meta, rc, err := l.stores.Snapshots.Open(metas[0].ID)
	if err != nil {
		return fmt.Errorf("open ledger snapshot %s: %w", metas[0].ID, err)
	}
	if err := l.fsm.Restore(rc); err != nil {
		return err
	}
	l.fsm.setApplied(meta.Index)
	return nil
}

// Addr is the address peers dial for this node (Advertise, with the bound
// port if Advertise had port 0).
func (l *Ledger) Addr() netip.AddrPort { return l.cfg.Advertise }

// ID is this node's ID.
func (l *Ledger) ID() NodeID { return l.cfg.ID }

// Raft's timers. With raft's defaults (a heartbeat every 100-200 ms, an
// AppendEntries every 50-100 ms for the commit index) a leader sends each
// follower 15-30 RPCs a second for a ledger that changes a few times a
// day, and every agent is a follower. Nothing a user sees waits on the
// ledger's timers: routes come from each host's replica, and a failover
// only delays claims. And an idle agent's cost is what wakes it. So:
//   - heartbeats every 1-2 s (a tenth to a fifth of the heartbeat
//     timeout): about 0.7 a second per follower;
//   - a voter that hears nothing for 10-20 s stands for election; but
//     gossip tells of a crashed leader in about 5 s, and then one voter
//     stands at once (standing), so a failover takes about as long as
//     gossip's verdict, as with raft's own timeout at 3 s;
//   - the leader lease, 5 s, is 2.5 of the longest heartbeat intervals,
//     raft's own ratio, so a loaded leader does not step down;
//   - CommitTimeout bounds how late a follower learns a commit index
//     when nothing else tells it: the leader tells followers at once after
//     each change it commits (announceCommit), but a follower restarted
//     after a crash re-applies the entries after its last snapshot only
//     once it learns the commit index, and until then routes none of its
//     peers' blocks. So 5 s, not longer: at 30 s (30-60 s) a restarted
//     host waited over a minute for its routes.
//
// A founder does not wait out the heartbeat timeout (electNow).
const (
	raftHeartbeatTimeout = 10 * time.Second
	raftElectionTimeout  = 10 * time.Second
	raftLeaderLease      = 5 * time.Second
	raftCommitTimeout    = 5 * time.Second
)

func (l *Ledger) raftConfig() *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = raft.ServerID(l.cfg.ID.String())
	c.HeartbeatTimeout = raftHeartbeatTimeout
	c.ElectionTimeout = raftElectionTimeout
	c.LeaderLeaseTimeout = raftLeaderLease
	c.CommitTimeout = raftCommitTimeout
	c.Logger = newHCLog(l.log, "raft")
	// A removed node stays alive so it can ask to join again.
	c.ShutdownOnRemove = false
	// The state is small: snapshot often, keep a short log behind it.
	c.SnapshotThreshold = 1024
	c.TrailingLogs = 1024
	c.SnapshotInterval = 30 * time.Second
	if l.cfg.Tune != nil {
		l.cfg.Tune(c)
	}
	return c
}

// Run runs the raft node, the RPC server, and the leader's autopilot and
// reclaim loops until ctx ends; then it shuts down cleanly (a leader hands
// leadership over first), closes the stores and the listener and
// unregisters its metrics. Call it once.
func (l *Ledger) Run(ctx context.Context) error {
	defer close(l.stopped)
	defer l.closeStores()
	defer l.metrics.unregister()
	defer l.cancelServe()

	m := l.newMux()
	stream := l.newStreamLayer(m)
	l.rpcsSent = newRPCCounts(l.metrics.raftRPCs)
	trans := &countingTransport{sent: l.rpcsSent, Transport: raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: 3,
		// No pipelining: it holds one more connection per follower, with
		// a 256 kB buffer at each end and a goroutine, for a log that
		// grows a few entries a day. Synchronous AppendEntries over the
		// pooled connections serve that as fast.
		MaxRPCsInFlight: 1,
		Timeout:         10 * time.Second,
		Logger:          newHCLog(l.log, "raft-net"),
	})}
	conf := l.raftConfig()
	r, err := raft.NewRaft(conf, l.fsm, l.stores.Log, l.stores.Stable, l.stores.Snapshots, trans)
	if err != nil {
		trans.Close()
		l.ln.Close()
		return fmt.Errorf("start ledger raft: %w", err)
	}
	if l.cfg.Found { // bootstrap refuses (ErrHasState) a node with state
		self := []Founder{{ID: l.cfg.ID, Addr: l.cfg.Advertise}}
		if err := l.bootstrap(r, self, ClusterID{}); err != nil && !errors.Is(err, ErrHasState) {
			r.Shutdown()
			trans.Close()
			l.ln.Close()
			return err
		}
	}
	l.raft.Store(r)
	close(l.started)

	m.wg.Add(1)
	go m.serve()

	obsCh := make(chan raft.Observation, 16)
	obs := raft.NewObserver(obsCh, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.LeaderObservation, raft.PeerObservation, raft.RaftState:
			return true
		}
		return false
	})
	r.RegisterObserver(obs)

	loopCtx, stopLoops := context.WithCancel(context.Background())
	var loops sync.WaitGroup
	loops.Add(2)
	go func() {
		defer loops.Done()
		for {
			select {
			case <-obsCh:
				l.notify()
			case <-loopCtx.Done():
				return
			}
		}
	}()
	go func() {
		defer loops.Done()
		l.leaderLoop(loopCtx, r)
	}()

	<-ctx.Done()
	stopLoops()
	loops.Wait()
	r.DeregisterObserver(obs)
	l.cancelServe()
	l.shutdown(r)
	close(m.done)
	l.ln.Close()
	stream.Close()
	trans.Close()
	m.wg.Wait()
	l.notify()
	return nil
}

func (l *Ledger) shutdown(r *raft.Raft) {
	if r.State() == raft.Leader && len(l.voterIDs(r)) > 1 {
		if err := r.LeadershipTransfer().Error(); err != nil {
			l.log.Warn("ledger leadership transfer before shutdown failed", "err", err)
		}
	}
	// A snapshot at shutdown lets the next start show the current ledger
	// before it hears a leader.
	if err := r.Snapshot().Error(); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
		l.log.Debug("ledger snapshot at shutdown", "err", err)
	}
	if err := r.Shutdown().Error(); err != nil {
		l.log.Warn("ledger raft shutdown", "err", err)
	}
}

func (l *Ledger) voterIDs(r *raft.Raft) []raft.ServerID {
	f := r.GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	var ids []raft.ServerID
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			ids = append(ids, s.ID)
		}
	}
	return ids
}

func (l *Ledger) notify() {
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

// Changed signals (coalesced) that the state or Info changed.
func (l *Ledger) Changed() <-chan struct{} { return l.changed }

// State returns this node's replica of the ledger and the index of the
// last entry applied to it. Reads are local: they never wait for the
// leader. The State's Blocks map is shared by every caller until the next
// entry applies: read it, and Clone it before changing anything.
func (l *Ledger) State() (State, uint64) {
	s, idx := l.fsm.snapshotState()
	if r := l.raft.Load(); r != nil {
		idx = max(idx, r.AppliedIndex())
	}
	return s, idx
}

// SetPeers replaces gossip's view of the members. The leader uses it for
// autopilot, reclaim, release and identity checks, a voter to stand when
// its leader is dead (standing).
func (l *Ledger) SetPeers(peers []Peer) {
	p := slices.Clone(peers)
	l.mu.Lock()
	changed := !l.peersSeen || !slices.Equal(l.peers, p)
	l.peers = p
	l.peersSeen = true
	l.mu.Unlock()
	if changed {
		l.wakeLoop()
	}
}

func (l *Ledger) wakeLoop() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *Ledger) peerView() ([]Peer, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.peers, l.peersSeen
}

// alive reports whether node id is alive in gossip (this node always is).
func (l *Ledger) alive(peers []Peer, id NodeID) bool {
	if id == l.cfg.ID {
		return true
	}
	for _, p := range peers {
		if p.ID == id && p.Alive {
			return true
		}
	}
	return false
}

// nameOf names a node ID for Info: gossip first, then the ledger (st; nil:
// this replica's current state).
func (l *Ledger) nameOf(peers []Peer, st *State, id string) string {
	nid, err := ParseNodeID(id)
	if err != nil {
		return id
	}
	if nid == l.cfg.ID {
		return l.cfg.Name
	}
	for _, p := range peers {
		if p.ID == nid && p.Name != "" {
			return p.Name
		}
	}
	if st == nil {
		if name, ok := l.fsm.ownerName(nid); ok {
			return name
		}
		return id
	}
	for _, o := range st.Blocks {
		if o.ID == nid {
			return o.Name
		}
	}
	return id
}

// Info describes this node's view of the ledger.
func (l *Ledger) Info() Info {
	// Not State: Info is read on every change, and the state is copied
	// after every entry.
	cluster, applied := l.fsm.clusterAndApplied()
	info := Info{ClusterID: cluster, Role: "none", AppliedIndex: applied}
	r := l.raft.Load()
	if r == nil {
		return info
	}
	info.AppliedIndex = max(applied, r.AppliedIndex())
	peers, _ := l.peerView()
	info.LastIndex = r.LastIndex()
	self := raft.ServerID(l.cfg.ID.String())
	if f := r.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			if s.Suffrage == raft.Voter {
				info.Voters = append(info.Voters, l.nameOf(peers, nil, string(s.ID)))
			}
			if s.ID == self {
				info.Role = "nonvoter"
				if s.Suffrage == raft.Voter {
					info.Role = "voter"
				}
			}
		}
	}
	slices.Sort(info.Voters)
	if _, id := r.LeaderWithID(); id != "" {
		info.Leader = l.nameOf(peers, nil, string(id))
	}
	if r.State() == raft.Leader {
		info.Role = "leader"
	}
	return info
}

func (l *Ledger) leaderGauge() float64 {
	if r := l.raft.Load(); r != nil && r.State() == raft.Leader {
		return 1
	}
	return 0
}

func (l *Ledger) lastIndexGauge() float64 {
	if r := l.raft.Load(); r != nil {
		return float64(r.LastIndex())
	}
	return 0
}

func (l *Ledger) appliedIndexGauge() float64 {
	_, idx := l.State()
	return float64(idx)
}

func (l *Ledger) reject(reason string) {
	l.metrics.rejected.WithLabelValues(reason).Inc()
}

// running waits until Run has started raft.
func (l *Ledger) running(ctx context.Context) (*raft.Raft, error) {
	select {
	case <-l.started:
	case <-l.stopped:
		return nil, ErrStopped
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: ledger not started: %w", ErrNoLeader, ctx.Err())
	}
	select {
	case <-l.stopped:
		return nil, ErrStopped
	default:
	}
	return l.raft.Load(), nil
}
