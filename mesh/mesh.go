package mesh

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/grapevine-net/grapevine/internal/hostclock"
	"github.com/grapevine-net/grapevine/mesh/ledger"
)

// Mesh is one node's membership in the cluster and its block. Create it
// with New, start it with Run; View, Changed, Release and AddJoinAddrs are
// safe to call from any goroutine at any time.
type Mesh struct {
	cfg     Config
	rules   Rules
	log     *slog.Logger
	clock   hostclock.Clock
	metrics *metrics
	changed chan struct{}
	// wake nudges the ownership loop: membership or the ledger changed.
	wake chan struct{}
	// ledgerChanged wakes the ownership loop even while it backs off: a
	// ledger appearing in gossip, a leader, or this node joining it is what
	// a failing join or claim was waiting for.
	ledgerChanged chan struct{}
	// peersChanged nudges the loop that hands membership to the ledger.
	peersChanged chan struct{}
	// seedsAdded nudges the reconnect loop to dial new seeds now.
	seedsAdded chan struct{}
	// foreignCheck nudges the founding loop's watch for a foreign
	// ledger: the ledgers members advertise, or this node's own, changed.
	foreignCheck chan struct{}

	mu      sync.Mutex
	ml      *memberlist.Memberlist // nil until Run created it
	led     *ledger.Ledger         // nil until Run opened it
	id      ledger.NodeID
	running bool
	seeds   []string
	peers   map[string]*peer
	// byName, clusters and states index peers for what runs on every
	// membership event (see indexPeerLocked): the usable peers by the
	// name they advertise (names maps to those several nodes advertise,
	// this one included), the usable peers by the ledger they advertise
	// (none: not counted), and every peer by its state.
	byName   map[string][]*peer
	shared   map[string]bool
	clusters map[ledger.ClusterID]int
	states   [Left + 1]int
	own      ownBlock
	// reason says why this node is not ready (beyond what View derives).
	reason   string
	degraded string
	// identity is set while the ledger refuses this node's identity (its
	// name or ID in use by another live node): it then routes nothing.
	identity string
	// clusterID is the ledger this node advertises in its metadata.
	clusterID ledger.ClusterID
	// metaBlock is the block this node advertises in its metadata: its
	// View's block when last advertised (see advertiseBlock).
	metaBlock netip.Prefix
	// conflicts are the name conflicts already logged, by conflictKey.
	conflicts map[string]bool
	// advertised is the metadata memberlist last applied for this node.
	advertised []byte
	// leaving is set on shutdown, before memberlist's leave.
	leaving bool
	// restart and restartReason are what restore made of the saved block.
	restart       RestartRule
	restartReason string
	// founding says why this node, which may found a ledger, has not yet
	// (see foundingLoop); "" once it has state or may not found.
	founding string
	// foreign is set while this node's ledger state belongs to another
	// ledger than the one its peers hold: it then hands out no addresses.
	foreign string
	// ledgerState: this node's ledger has state (advertised in metadata).
	ledgerState bool
	// recorded is the ledger Config.LedgerRecord names, once read;
	// record is the whole record then.
	recorded ledger.ClusterID
	record   RecordedLedger
}

// peer is what this node knows about another member.
type peer struct {
	// name is memberlist's name of the member: its node ID if its
	// metadata is valid; the member's own name is meta.Name.
	name  string
	addr  netip.AddrPort
	state MemberState
	// meta is the member's validated metadata, kept from when it was last
	// live; metaErr is set instead when it was rejected (the member then
	// gets no route and is not handed to the ledger).
	meta    Meta
	metaErr error
	metaRaw []byte // last metadata seen, to count a rejection once
	// indexed is what indexPeerLocked last recorded of this peer.
	indexed peerIndex
	// since is when state last changed.
	since time.Time
}

// usable reports whether p is live with accepted metadata.
func (p *peer) usable() bool { return p.state.Live() && p.metaErr == nil }

// New checks cfg and returns a Mesh that is not running yet.
func New(cfg Config) (*Mesh, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("mesh: register metrics: %w", err)
	}
	return &Mesh{
		cfg:           cfg,
		rules:         Rules{Pool: cfg.Pool, BlockBits: cfg.BlockBits, AllowForeignHostIP: cfg.AllowForeignHostIP},
		log:           cfg.Logger.With("component", "mesh"),
		clock:         cfg.Clock,
		metrics:       met,
		changed:       make(chan struct{}, 1),
		wake:          make(chan struct{}, 1),
		ledgerChanged: make(chan struct{}, 1),
		peersChanged:  make(chan struct{}, 1),
		seedsAdded:    make(chan struct{}, 1),
		foreignCheck:  make(chan struct{}, 1),
		seeds:         slices.Clone(cfg.Join),
		peers:         make(map[string]*peer),
		byName:        make(map[string][]*peer),
		shared:        make(map[string]bool),
		clusters:      make(map[ledger.ClusterID]int),
		conflicts:     make(map[string]bool),
		reason:        "joining",
	}, nil
}

// Changed returns a channel that receives a value whenever the View may have
// changed. Notifications are coalesced: one value may stand for many changes.
func (m *Mesh) Changed() <-chan struct{} { return m.changed }

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (m *Mesh) notify() { signal(m.changed) }

// AddJoinAddrs adds seed addresses ("host" or "host:port"). Added before Run
// they are joined like Config.Join; added later they are dialled at once and
// then by the reconnect loop until they are members.
func (m *Mesh) AddJoinAddrs(addrs ...string) {
	m.mu.Lock()
	for _, a := range addrs {
		if !slices.Contains(m.seeds, a) {
			m.seeds = append(m.seeds, a)
		}
	}
	m.mu.Unlock()
	signal(m.seedsAdded)
}

// ledgerDir is where the ledger keeps its log and snapshots.
func ledgerDir(stateDir string) string { return filepath.Join(stateDir, "raft") }

// Run joins the cluster and its ledger (founding one if Config.Found allows
// and nobody reachable has one), holds this node's block, and keeps
// membership whole until ctx ends; then it leaves gracefully and shuts down.
// It returns nil after a clean shutdown. A Mesh runs once.
func (m *Mesh) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.running {
		m.mu.Unlock()
		return errors.New("mesh: Run called twice")
	}
	m.running = true
	m.mu.Unlock()

	id, err := ledger.LoadOrCreateNodeID(m.cfg.StateDir)
	if err != nil {
		return fmt.Errorf("mesh: node ID in %s: %w", m.cfg.StateDir, err)
	}
	saved, err := loadBlock(m.cfg.StateDir)
	if err != nil {
		return fmt.Errorf("mesh: %w", err)
	}
	if saved != nil {
		if err := m.rules.checkBlock(saved.Block); err != nil {
			m.log.Warn("saved block does not fit the configured pool; claiming a new one", "block", saved.Block, "pool", m.cfg.Pool, "err", err)
			saved = nil
		}
	}
	m.mu.Lock()
	m.id = id
	if saved != nil && saved.ID == id {
		// Advertised from the first gossip message, so a restarted agent's
		// metadata agrees with the ledger from the start instead of after
		// the restart rule has run. A block the ledger no longer assigns
		// to this ID gets no route anyway, and the ownership loop corrects
		// it.
		m.metaBlock = saved.Block
	}
	m.mu.Unlock()

	ml, err := memberlist.Create(m.memberlistConfig())
	if err != nil {
		return fmt.Errorf("mesh: start gossip on %s: %w", netip.AddrPortFrom(m.cfg.listenAddr(), uint16(m.cfg.Port)), err)
	}
	m.mu.Lock()
	m.ml = ml
	m.mu.Unlock()
	if len(m.cfg.SecretKey) == 0 {
		m.log.Warn("gossip is not encrypted, nor is the ledger: any host that reaches their ports can join and advertise routes")
	}
	m.joinSeeds(ctx)

	led, err := m.openLedger(id)
	if err != nil {
		ml.Shutdown()
		return fmt.Errorf("mesh: %w", err)
	}
	m.mu.Lock()
	m.led = led
	m.mu.Unlock()
	if m.restore(ctx, saved) {
		// Peers route a restored block only once this node advertises it.
		m.advertiseBlock(m.View().Block)
		m.pushStateToLive()
	}

	var wg sync.WaitGroup
	ledgerDone := make(chan error, 1)
	wg.Go(func() { ledgerDone <- led.Run(ctx) })
	wg.Go(func() { m.ownershipLoop(ctx, saved) })
	wg.Go(func() { m.reconnectLoop(ctx) })
	wg.Go(func() { m.peersLoop(ctx) })
	wg.Go(func() { m.ledgerEvents(ctx) })
	wg.Go(func() { m.foundingLoop(ctx) })

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-ledgerDone:
		// The ledger stopped on its own: without it this node cannot hold
		// a block, so the mesh stops too and the agent reports why.
		m.log.Error("ledger stopped", "err", runErr)
	}
	m.leave()
	wg.Wait()
	if err := ml.Shutdown(); err != nil && runErr == nil {
		runErr = fmt.Errorf("mesh: shut down gossip: %w", err)
	}
	m.mu.Lock()
	m.reason = "stopped"
	m.mu.Unlock()
	m.notify()
	if runErr != nil && !errors.Is(runErr, context.Canceled) {
		return fmt.Errorf("mesh: ledger: %w", runErr)
	}
	return nil
}

// openLedger opens this node's ledger replica. It founds a new ledger only
// if Config.Found allows and no live member this node reached belongs to
// one; the ledger itself ignores founding when it has state of its own.
func (m *Mesh) openLedger(id ledger.NodeID) (*ledger.Ledger, error) {
	m.mu.Lock()
	found := m.cfg.Found
	m.mu.Unlock()
	if found {
		if c, ok := m.ledgerToJoin(); ok {
			m.log.Info("a reachable member belongs to a ledger; joining it instead of founding one", "cluster", c)
			found = false
		}
	}
	cfg := ledger.Config{
		ID:         id,
		Name:       m.cfg.NodeName,
		Advertise:  netip.AddrPortFrom(m.cfg.AdvertiseAddr, uint16(m.cfg.LedgerPort)),
		Bind:       netip.AddrPortFrom(m.cfg.listenAddr(), uint16(m.cfg.LedgerPort)),
		Dir:        ledgerDir(m.cfg.StateDir),
		Key:        m.cfg.SecretKey,
		Voters:     m.cfg.Voters,
		Pool:       m.cfg.Pool,
		BlockBits:  m.cfg.BlockBits,
		Lease:      m.cfg.Lease,
		Found:      found,
		Logger:     m.cfg.Logger,
		Registerer: m.cfg.Registerer,
		Network:    m.cfg.LedgerNetwork,
		Stores:     m.cfg.LedgerStores,
		Report:     m.cfg.Report,
	}
	if m.cfg.TuneLedger != nil {
		m.cfg.TuneLedger(&cfg)
	}
	return ledger.Open(cfg)
}

// maxStatePushes bounds how many members a restarted node exchanges full
// state with directly.
const maxStatePushes = 16

// pushStateToLive exchanges full state (memberlist's push/pull) with up to
// maxStatePushes live members. Peers still hold a restarted node as left or
// dead, at a higher incarnation than the one it started with, and ignore it
// until its refutation reaches them. memberlist refutes during the join's
// push/pull with the seed, but then spreads the refutation by gossip; a
// direct exchange puts it on every peer at once, so they route the
// restored block without waiting for gossip rounds.
func (m *Mesh) pushStateToLive() {
	m.mu.Lock()
	var addrs []string
	for _, p := range m.peers {
		if p.usable() && len(addrs) < maxStatePushes {
			addrs = append(addrs, p.addr.String())
		}
	}
	m.mu.Unlock()
	if len(addrs) == 0 {
		return
	}
	if _, err := m.ml.Join(addrs); err != nil {
		m.log.Debug("state exchange after restart", "err", err)
	}
}

// Ping asks the agent of the member with node ID id, now and directly, as
// memberlist's failure detector does in its own order: one ping, answered
// within memberlist's probe timeout or an error. The agent uses it as
// gossip's word on a peer whose host has stopped answering on the data
// path, rather than wait for memberlist to confirm a suspicion.
func (m *Mesh) Ping(id ledger.NodeID) (time.Duration, error) {
	m.mu.Lock()
	p, ok := m.peers[gossipName(id)]
	var addr netip.AddrPort
	if ok {
		addr = p.addr
	}
	ml := m.ml
	m.mu.Unlock()
	if !ok || ml == nil {
		return 0, fmt.Errorf("mesh: no member with node ID %s", id)
	}
	rtt, err := ml.Ping(gossipName(id), net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return 0, fmt.Errorf("mesh: ping %s at %s: %w", id, addr, err)
	}
	return rtt, nil
}

// leave announces the leave in metadata first, so peers record "left", not
// "failed" (memberlist's own leave message does not reach delegates), then
// leaves memberlist: peers see it left at once. Its block stays its own in
// the ledger, so their agents keep its route while its host answers.
func (m *Mesh) leave() {
	m.mu.Lock()
	m.leaving = true
	ml := m.ml
	m.mu.Unlock()
	if err := ml.UpdateNode(m.cfg.LeaveTimeout / 2); err != nil {
		m.log.Debug("announce leave", "err", err)
	}
	if err := ml.Leave(m.cfg.LeaveTimeout / 2); err != nil {
		m.log.Warn("leave the cluster", "err", err)
	}
}

// memberlistConfig is the LAN default configuration with this node's
// addresses, delegates, and encryption.
func (m *Mesh) memberlistConfig() *memberlist.Config {
	c := memberlist.DefaultLANConfig()
	c.Name = gossipName(m.id)
	c.BindAddr = m.cfg.listenAddr().String()
	c.BindPort = m.cfg.Port
	c.AdvertiseAddr = m.cfg.AdvertiseAddr.String()
	c.AdvertisePort = m.cfg.Port
	// A host that comes back under its node ID at a new address is
	// accepted once its old incarnation has been dead this long.
	c.DeadNodeReclaimTime = 10 * time.Second
	// Gossip at memberlist's LAN interval, said here because it was once
	// halved: its ticker wakes an idle agent whether or not anything is
	// queued. At 100 ms an idle follower made 128 context switches a
	// second and used 0.33 % of a core, at 200 ms 85 and 0.25 % (5-host
	// lab, 60 s). A join still reaches 99 % of a simulated 256-node cluster
	// in 0.8 s, and crashed hosts are withdrawn in 5.2-5.4 s (bench rows
	// 5e, 10f-10h).
	c.GossipInterval = 200 * time.Millisecond
	// A prober whose probes fail loses "health" and stretches its own probe
	// interval (1 s, 2 s, 3 s ...): with two hosts crashed at once, the
	// second was suspected up to 9.5 s late and withdrawn after 10-13 s.
	// Without the stretch it is 6.5-7.5 s. The cost memberlist guards
	// against, false suspicion from an overloaded prober, is what the
	// data-path probe covers: a host that answers keeps its routes.
	c.AwarenessMaxMultiplier = 1
	// No LZW on outgoing messages: memberlist compresses every packet
	// with a fresh LZW writer (a 64 KiB table), so an idle agent's pings
	// and acks allocated about 130 KB a second, two fifths of all it
	// allocated, and kept the garbage collector busy, to shrink packets of
	// a few hundred bytes. Receivers still accept compressed messages, so
	// agents that compress and agents that do not mix in one cluster.
	c.EnableCompression = false
	if len(m.cfg.SecretKey) > 0 {
		c.SecretKey = m.cfg.SecretKey
		c.GossipVerifyIncoming = true
		c.GossipVerifyOutgoing = true
	}
	d := &delegate{m: m}
	c.Delegate = d
	c.Events = d
	c.Alive = d
	c.Conflict = d
	c.LogOutput = newLogWriter(m.log, m.metrics.rejectedGossip)
	if m.cfg.Transport != nil {
		c.Transport = m.cfg.Transport
	}
	if m.cfg.Tune != nil {
		m.cfg.Tune(c)
	}
	return c
}

// Release frees the block of a dead or departed node cluster-wide, an
// operator's decision: a ledger entry, refused while the node is alive
// here or to the leader, and until its lease has ended by the leader's
// clock (errors.Is ledger.ErrLeaseActive; ledger.LeaseWait says how long).
func (m *Mesh) Release(ctx context.Context, node string) error {
	led, err := m.releaseTarget(node)
	if err != nil {
		return err
	}
	// Nothing to wait for when this replica shows no block (never had one,
	// released already, say after its Node object was deleted). A replica
	// behind the leader only makes the operator ask again.
	if st, _ := led.State(); st.Founded() {
		if _, _, ok := st.BlockOfName(node); !ok {
			return fmt.Errorf("mesh: release %s: %w: %s", node, ledger.ErrUnknownNode, node)
		}
	}
	if err := led.Release(ctx, node); err != nil {
		return fmt.Errorf("mesh: %w", err)
	}
	m.metrics.releases.WithLabelValues("operator").Inc()
	m.log.Info("released the block of a departed node", "node", node)
	return nil
}

// ReleaseDeletedNode frees the block of a node whose record outside the
// mesh was deleted: with --join-kubernetes, its Node object, which
// Kubernetes takes as the operator's word that the host is gone. It takes
// Release's one path: refused while the node is alive here or to the
// leader (errors.Is ledger.ErrNodeAlive), and until its lease has ended by
// the leader's clock (errors.Is ledger.ErrLeaseActive), so a host that is
// alive but cut off keeps its block while it may still use it.
//
// It returns the block released, or none (and no error) when the ledger
// assigns the node no block: never held one, or already released.
func (m *Mesh) ReleaseDeletedNode(ctx context.Context, node string) (netip.Prefix, error) {
	led, err := m.releaseTarget(node)
	if err != nil {
		return netip.Prefix{}, err
	}
	st, _ := led.State()
	block, _, _ := st.BlockOfName(node)
	if err := led.Release(ctx, node); err != nil {
		if errors.Is(err, ledger.ErrUnknownNode) {
			return netip.Prefix{}, nil
		}
		return netip.Prefix{}, fmt.Errorf("mesh: %w", err)
	}
	m.metrics.releases.WithLabelValues("record_deleted").Inc()
	m.log.Info("released the block of a node whose Node object was deleted", "node", node, "block", block)
	return block, nil
}

// Report asks the member whose ledger listens at addr for its report
// (Config.Report), over the ledger's authenticated connection.
func (m *Mesh) Report(ctx context.Context, addr netip.AddrPort) ([]byte, error) {
	m.mu.Lock()
	led := m.led
	m.mu.Unlock()
	if led == nil {
		return nil, errors.New("mesh: not running")
	}
	report, err := led.Report(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("mesh: %w", err)
	}
	return report, nil
}

// releaseTarget holds the checks every release shares: the mesh runs and
// node is not alive here (errors.Is ledger.ErrNodeAlive). Two live hosts
// may carry one name (see View.NameConflicts); a release by name is about
// the node the ledger records under it, so that node's ID decides whether
// it is alive: a clone that kept the name neither blocks the release of a
// dead holder's block here nor stands for the holder. (The ledger's leader
// still refuses while any node of that name is alive to it.) With no
// record, any live member carrying the name counts.
func (m *Mesh) releaseTarget(node string) (*ledger.Ledger, error) {
	m.mu.Lock()
	led := m.led
	m.mu.Unlock()
	if led == nil {
		return nil, errors.New("mesh: not running")
	}
	st, _ := led.State()
	_, owner, recorded := st.BlockOfName(node)
	m.mu.Lock()
	alive := (recorded && owner.ID == m.id) || (!recorded && node == m.cfg.NodeName)
	for _, p := range m.peers {
		if p.usable() && ((recorded && p.meta.ID == owner.ID) || (!recorded && p.meta.Name == node)) {
			alive = true
		}
	}
	m.mu.Unlock()
	if alive {
		return nil, nodeAliveError(fmt.Sprintf("mesh: node %s is alive; stop it (or wait until it is declared dead) before releasing its block", node))
	}
	return led, nil
}

// nodeAliveError is a release refused because this node sees the target
// alive; errors.Is(err, ledger.ErrNodeAlive) holds, as for the leader's
// refusal, without changing the sentence an operator reads.
type nodeAliveError string

func (e nodeAliveError) Error() string        { return string(e) }
func (e nodeAliveError) Is(target error) bool { return target == ledger.ErrNodeAlive }

// View returns a snapshot of this node and its peers. Every block in it is
// the ledger's assignment, so each appears at most once.
func (m *Mesh) View() View {
	m.mu.Lock()
	defer m.mu.Unlock()
	v := View{
		Self:     m.cfg.NodeName,
		ID:       m.id,
		HostIP:   m.cfg.AdvertiseAddr,
		Reason:   m.reason,
		Degraded: m.degraded,
		Members:  make([]Member, 0, len(m.peers)),

		Restart:       m.restart,
		RestartReason: m.restartReason,
	}
	var st ledger.State
	if m.led != nil {
		st, _ = m.led.State()
		v.Ledger = m.led.Info()
	}
	ours := v.Ledger.ClusterID
	byID := blocksByID(st)
	v.Block, v.Ready = m.viewBlockLocked(st)
	switch {
	case m.foreign != "":
		v.Reason = m.foreign
	case m.identity == "":
		if v.Block.IsValid() {
			v.Lease, v.LeaseRenewed, v.LeaseEndsAt = m.own.lease, m.own.renewed, m.own.endsAt
		}
		switch {
		case v.Ready:
			v.Reason = ""
		case v.Block.IsValid() && !m.own.lease.IsZero():
			// Why the lease was not renewed, if a claim said why.
			v.Reason = "the lease on " + v.Block.String() + " has ended and the ledger's leader has not renewed it; not handing out new addresses from it"
			if m.reason != "" {
				v.Reason += " (" + m.reason + ")"
			}
		}
	default:
		v.Reason = m.identity
	}
	for _, p := range m.peers {
		mem := Member{Name: p.name, Addr: p.addr.Addr(), State: p.state}
		if p.metaErr == nil {
			mem.Name, mem.HostIP, mem.ID, mem.ClusterID = p.meta.Name, p.meta.HostIP, p.meta.ID, p.meta.ClusterID
			mem.Advertised = p.meta.Block
			mem.HostIP6 = p.meta.HostIP6
			mem.Foreign = !ours.IsZero() && !p.meta.ClusterID.IsZero() && p.meta.ClusterID != ours
			if !mem.Foreign && m.identity == "" {
				mem.Held = heldBlock(byID, p.meta)
				if mem.Held == v.Block {
					mem.Held = netip.Prefix{}
				}
				if p.state.Live() && mem.Held.IsValid() {
					mem.Block = routedBlock(byID, p.meta)
				}
			}
		}
		v.Members = append(v.Members, mem)
	}
	slices.SortFunc(v.Members, func(a, b Member) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), slices.Compare(a.ID[:], b.ID[:]))
	})
	v.NameConflicts = m.nameConflictsLocked(byID)
	return v
}

// viewBlock is View's Block and Ready alone, without the members: what
// the ownership loop looks at after every step.
func (m *Mesh) viewBlock() (netip.Prefix, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var st ledger.State
	if m.led != nil {
		st, _ = m.led.State()
	}
	return m.viewBlockLocked(st)
}

// viewBlockLocked is View's Block and Ready given the ledger's state st:
// none while this node's ledger is foreign or its identity refused.
func (m *Mesh) viewBlockLocked(st ledger.State) (netip.Prefix, bool) {
	if m.foreign != "" || m.identity != "" {
		return netip.Prefix{}, false
	}
	return m.ownBlockLocked(st)
}

// assignment is one block of the ledger with its owner.
type assignment struct {
	block netip.Prefix
	owner ledger.Owner
}

// blocksByID indexes the ledger's assignments by owner.
func blocksByID(st ledger.State) map[ledger.NodeID]assignment {
	out := make(map[ledger.NodeID]assignment, len(st.Blocks))
	for b, o := range st.Blocks {
		out[o.ID] = assignment{b, o}
	}
	return out
}

// heldBlock is the block the ledger assigns to a member's node ID, if the
// ledger recorded the name and host IP the member advertises. Metadata
// alone can never move a route: the member is routed only while it also
// advertises this block.
func heldBlock(byID map[ledger.NodeID]assignment, meta Meta) netip.Prefix {
	a, ok := byID[meta.ID]
	if !ok || a.owner.HostIP != meta.HostIP || a.owner.Name != meta.Name {
		return netip.Prefix{}
	}
	return a.block
}

// routedBlock is the block to route to a live member: the one the ledger
// assigns to its node ID under the name and host IP it advertises, unless
// the member advertises another block: then its metadata and the ledger
// disagree, and it is not routed. A member that advertises no block yet is
// routed on the ledger's word: its advertisement travels by gossip, which
// delivers a lost update only at memberlist's next push-pull (30 s; seen
// in the Kubernetes lab), while the ledger's replica is already here.
func routedBlock(byID map[ledger.NodeID]assignment, meta Meta) netip.Prefix {
	if held := heldBlock(byID, meta); !meta.Block.IsValid() || held == meta.Block {
		return held
	}
	return netip.Prefix{}
}

// nameConflictsLocked finds the names that live members with valid
// metadata, and this node, advertise under more than one node ID. byID
// (the ledger's assignments; nil: unknown) marks the holders.
func (m *Mesh) nameConflictsLocked(byID map[ledger.NodeID]assignment) []NameConflict {
	var out []NameConflict
	for name := range m.shared {
		var nodes []NameClaimant
		if name == m.cfg.NodeName {
			nodes = append(nodes, NameClaimant{ID: m.id, HostIP: m.cfg.AdvertiseAddr, Self: true})
		}
		for _, p := range m.byName[name] {
			nodes = append(nodes, NameClaimant{ID: p.meta.ID, HostIP: p.meta.HostIP})
		}
		for i := range nodes {
			a, ok := byID[nodes[i].ID]
			nodes[i].Holder = ok && a.owner.Name == name
		}
		slices.SortFunc(nodes, func(a, b NameClaimant) int {
			if a.Holder != b.Holder {
				if a.Holder {
					return -1
				}
				return 1
			}
			return cmp.Or(a.HostIP.Compare(b.HostIP), slices.Compare(a.ID[:], b.ID[:]))
		})
		out = append(out, NameConflict{Name: name, Nodes: nodes})
	}
	slices.SortFunc(out, func(a, b NameConflict) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// key identifies a name conflict by its name and node IDs, so
// that it is logged once however often it is seen.
func (c NameConflict) key() string {
	ids := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		ids[i] = n.ID.String()
	}
	slices.Sort(ids)
	return c.Name + "/" + strings.Join(ids, ",")
}

// noteNameConflicts logs each new name conflict once, counts it, and sets
// the gauge of names in conflict now. It runs off memberlist's goroutines
// whenever membership changes.
func (m *Mesh) noteNameConflicts() {
	m.mu.Lock()
	conflicts := m.nameConflictsLocked(nil)
	var fresh []NameConflict
	seen := make(map[string]bool, len(conflicts))
	for _, c := range conflicts {
		k := c.key()
		seen[k] = true
		if !m.conflicts[k] {
			fresh = append(fresh, c)
		}
	}
	m.conflicts = seen
	m.mu.Unlock()
	m.metrics.nameConflictsNow.Set(float64(len(conflicts)))
	for _, c := range fresh {
		m.metrics.nameConflicts.Inc()
		hosts := make([]string, len(c.Nodes))
		for i, n := range c.Nodes {
			hosts[i] = n.HostIP.String() + " (ID " + n.ID.String() + ")"
		}
		m.log.Warn("live hosts advertise one node name; gossip keeps them apart, the ledger keeps the name's block with the node that holds it and refuses the others",
			"name", c.Name, "hosts", strings.Join(hosts, ", "))
	}
}
