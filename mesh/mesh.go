package mesh

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Timings of the claim protocol.
const (
	// voteTimeout bounds the wait for votes from members that do not
	// answer (crashed, partitioned).
	voteTimeout = 2 * time.Second
	// promiseTTL is how long a granted vote binds the voter when the
	// claimant neither commits nor aborts.
	promiseTTL = 3 * time.Second
	// contestedFor is how long a block another claimant won the race for is
	// skipped as a candidate here.
	contestedFor = 5 * time.Second
)

// Mesh is one node's membership in the cluster and its claim on a block.
// Create it with New, start it with Run; View, Changed, Release and
// AddJoinAddrs are safe to call from any goroutine at any time.
type Mesh struct {
	cfg     Config
	rules   Rules
	log     *slog.Logger
	now     func() time.Time
	metrics *metrics
	changed chan struct{}
	// wake nudges the claim loop: membership or the table changed.
	wake chan struct{}
	// seedsAdded nudges the reconnect loop to dial new seeds now.
	seedsAdded chan struct{}

	mu       sync.Mutex
	ml       *memberlist.Memberlist // nil until Run created it
	queue    *memberlist.TransmitLimitedQueue
	running  bool
	seeds    []string
	peers    map[string]*peer
	table    map[string]Record
	promises map[netip.Prefix]promise
	votes    map[uint64]*ballot
	voteID   uint64
	// contested maps blocks lost in a race to when they may be tried again.
	contested map[netip.Prefix]time.Time
	// missingSince tracks table owners that are live in nobody's eyes here,
	// to mark them dead after a grace period.
	missingSince map[string]time.Time
	own          ownClaim
	reason       string
	degraded     string
	// grewAt is when a member this node did not count before appeared,
	// other than through its own join; joining marks the join in progress.
	grewAt  time.Time
	joining bool
	// advertised is the metadata memberlist last applied for this node.
	advertised []byte
	// leaving is set on shutdown, before memberlist's leave.
	leaving bool
	// settle is how long membership must stay still before a vote: during
	// a join storm electorates grow fast and majorities of views that differ
	// this much need not intersect.
	settle time.Duration
}

// ownClaim is this node's current claim; Block is zero while it holds none.
type ownClaim struct {
	Block netip.Prefix
	Since time.Time
	Gen   uint64
}

// peer is what this node knows about another member.
type peer struct {
	name  string
	addr  netip.AddrPort
	state MemberState
	// meta is the member's validated metadata; metaErr is set instead when
	// it was rejected (the member then gets no route).
	meta    Meta
	metaErr error
	metaRaw []byte // last metadata seen, to count a rejection once
	// since is when state last changed.
	since time.Time
}

// usable reports whether p is live with accepted metadata: only such a
// member holds a block, votes, and is sent claims.
func (p *peer) usable() bool { return p.state.live() && p.metaErr == nil }

// promise is a vote granted to claimant for one block, binding until expires.
type promise struct {
	claimant string
	id       uint64
	expires  time.Time
}

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
	m := &Mesh{
		cfg:          cfg,
		rules:        Rules{Pool: cfg.Pool, BlockBits: cfg.BlockBits, AllowForeignHostIP: cfg.AllowForeignHostIP},
		log:          cfg.Logger.With("component", "mesh"),
		now:          cfg.Now,
		metrics:      met,
		changed:      make(chan struct{}, 1),
		wake:         make(chan struct{}, 1),
		seedsAdded:   make(chan struct{}, 1),
		seeds:        slices.Clone(cfg.Join),
		peers:        make(map[string]*peer),
		table:        make(map[string]Record),
		promises:     make(map[netip.Prefix]promise),
		votes:        make(map[uint64]*ballot),
		contested:    make(map[netip.Prefix]time.Time),
		missingSince: make(map[string]time.Time),
		reason:       "joining",
	}
	return m, nil
}

// Changed returns a channel that receives a value whenever the View may have
// changed. Notifications are coalesced: one value may stand for many changes.
func (m *Mesh) Changed() <-chan struct{} { return m.changed }

func (m *Mesh) notify() {
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

func (m *Mesh) nudge() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

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
	select {
	case m.seedsAdded <- struct{}{}:
	default:
	}
}

// View returns a snapshot of this node and its peers. Each block appears at
// most once: of two live members advertising one block only the winner of
// the conflict (older claim, then smaller name) is listed with it.
func (m *Mesh) View() View {
	m.mu.Lock()
	defer m.mu.Unlock()
	winners := m.blockWinnersLocked()
	v := View{
		Self:     m.cfg.NodeName,
		HostIP:   m.cfg.AdvertiseAddr,
		Reason:   m.reason,
		Degraded: m.degraded,
		Members:  make([]Member, 0, len(m.peers)),
	}
	if b := m.own.Block; b.IsValid() && winners[b].name == m.cfg.NodeName {
		v.Block = b
		v.Ready = true
		v.Reason = ""
	}
	for _, p := range m.peers {
		mem := Member{Name: p.name, Addr: p.addr.Addr(), State: p.state}
		if p.metaErr == nil {
			mem.HostIP = p.meta.HostIP
			if b, _ := m.claimOfLocked(p); b.IsValid() && winners[b].name == p.name {
				mem.Block = b
			}
		}
		v.Members = append(v.Members, mem)
	}
	slices.SortFunc(v.Members, func(a, b Member) int { return cmp.Compare(a.Name, b.Name) })
	return v
}

// holder is a live member advertising a block.
type holder struct {
	name  string
	since time.Time
}

// beats reports whether h keeps a block that o advertises too: the older
// claim wins, then the smaller name. Every node decides alike.
func (h holder) beats(o holder) bool {
	if c := h.since.Compare(o.since); c != 0 {
		return c < 0
	}
	return h.name < o.name
}

// claimOfLocked returns the block a live peer with valid metadata holds and
// since when: its metadata's, unless the peer's own newer record (sent
// straight to every member on commit) arrived before the metadata update
// was gossiped.
func (m *Mesh) claimOfLocked(p *peer) (netip.Prefix, time.Time) {
	if !p.usable() {
		return netip.Prefix{}, time.Time{}
	}
	r, ok := m.table[p.name]
	if ok && r.Gen > p.meta.Gen && !r.Released && r.DeadAt.IsZero() && r.HostIP == p.meta.HostIP {
		return r.Block, r.Since
	}
	return p.meta.Block, p.meta.Since
}

// blockWinnersLocked maps every block advertised by a live member (this node
// included) to the member that keeps it.
func (m *Mesh) blockWinnersLocked() map[netip.Prefix]holder {
	best := make(map[netip.Prefix]holder)
	consider := func(b netip.Prefix, h holder) {
		if cur, ok := best[b]; !ok || h.beats(cur) {
			best[b] = h
		}
	}
	if m.own.Block.IsValid() {
		consider(m.own.Block, holder{m.cfg.NodeName, m.own.Since})
	}
	for _, p := range m.peers {
		if b, since := m.claimOfLocked(p); b.IsValid() {
			consider(b, holder{p.name, since})
		}
	}
	return best
}

// Run joins the cluster, restores or claims a block, and keeps membership
// whole until ctx ends; then it leaves gracefully and shuts memberlist down.
// It returns nil after a clean shutdown. A Mesh runs once.
func (m *Mesh) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.running {
		m.mu.Unlock()
		return errors.New("mesh: Run called twice")
	}
	m.running = true
	m.mu.Unlock()

	saved, err := loadClaim(m.cfg.StateDir)
	if err != nil {
		return fmt.Errorf("mesh: %w", err)
	}
	if saved != nil {
		if err := m.rules.checkBlock(saved.Block); err != nil {
			m.log.Warn("saved block does not fit the configured pool; claiming a new one", "block", saved.Block, "pool", m.cfg.Pool, "err", err)
			saved = nil
		} else if saved.Node != m.cfg.NodeName {
			m.log.Warn("saved claim was made under another node name", "saved_node", saved.Node, "block", saved.Block)
		}
	}

	ml, err := memberlist.Create(m.memberlistConfig())
	if err != nil {
		return fmt.Errorf("mesh: start gossip on %s:%d: %w", m.cfg.BindAddr, m.cfg.Port, err)
	}
	m.mu.Lock()
	m.ml = ml
	m.queue = &memberlist.TransmitLimitedQueue{NumNodes: ml.NumMembers, RetransmitMult: 4}
	m.mu.Unlock()
	if len(m.cfg.SecretKey) == 0 {
		m.log.Warn("gossip is not encrypted: any host that reaches the gossip port can join and advertise routes")
	}

	m.joinSeeds(ctx)

	var wg sync.WaitGroup
	wg.Go(func() { m.claimLoop(ctx, saved) })
	wg.Go(func() { m.reconnectLoop(ctx) })
	wg.Go(func() { m.reannounceLoop(ctx) })
	<-ctx.Done()
	wg.Wait()

	// Announce the leave in metadata first, so peers record "left", not
	// "failed" (memberlist's own leave message does not reach delegates).
	m.mu.Lock()
	m.leaving = true
	m.mu.Unlock()
	if err := ml.UpdateNode(m.cfg.LeaveTimeout / 2); err != nil {
		m.log.Debug("announce leave", "err", err)
	}
	if err := ml.Leave(m.cfg.LeaveTimeout / 2); err != nil {
		m.log.Warn("leave the cluster", "err", err)
	}
	if err := ml.Shutdown(); err != nil {
		return fmt.Errorf("mesh: shut down gossip: %w", err)
	}
	m.mu.Lock()
	m.reason = "stopped"
	m.mu.Unlock()
	m.notify()
	return nil
}

// memberlistConfig is the LAN default configuration with this node's
// addresses, delegates, and encryption.
func (m *Mesh) memberlistConfig() *memberlist.Config {
	c := memberlist.DefaultLANConfig()
	c.Name = m.cfg.NodeName
	c.BindAddr = "0.0.0.0"
	if m.cfg.BindAddr.IsValid() {
		c.BindAddr = m.cfg.BindAddr.String()
	}
	c.BindPort = m.cfg.Port
	c.AdvertiseAddr = m.cfg.AdvertiseAddr.String()
	c.AdvertisePort = m.cfg.Port
	// A host that comes back under its name at a new address is accepted
	// once its old incarnation has been dead this long.
	c.DeadNodeReclaimTime = 10 * time.Second
	// Claims, leaves and the refutation a restarted node sends travel by
	// gossip; memberlist sends a gossip round only when something is queued,
	// so halving the LAN interval halves how long a change takes to reach
	// every peer at no cost while nothing changes.
	c.GossipInterval = 100 * time.Millisecond
	if len(m.cfg.SecretKey) > 0 {
		c.SecretKey = m.cfg.SecretKey
		c.GossipVerifyIncoming = true
		c.GossipVerifyOutgoing = true
	}
	d := &delegate{m: m}
	c.Delegate = d
	c.Events = d
	c.Alive = d
	c.LogOutput = &logWriter{log: m.log}
	if m.cfg.Transport != nil {
		c.Transport = m.cfg.Transport
	}
	if m.cfg.Tune != nil {
		m.cfg.Tune(c)
	}
	m.settle = 4 * c.GossipInterval
	return c
}

// joinSeeds tries the seeds a few times with backoff. When none answers the
// node goes on alone: it is the first node, or the reconnect loop will merge
// it into the cluster later.
func (m *Mesh) joinSeeds(ctx context.Context) {
	backoff := 250 * time.Millisecond
	for attempt := 0; attempt < 3; attempt++ {
		seeds := m.seedTargets()
		if len(seeds) == 0 {
			return
		}
		m.mu.Lock()
		m.joining = true
		m.mu.Unlock()
		n, err := m.ml.Join(seeds)
		m.mu.Lock()
		m.joining = false
		m.mu.Unlock()
		if n > 0 {
			m.log.Info("joined the cluster", "contacted", n, "members", m.ml.NumMembers())
			return
		}
		m.log.Warn("no seed answered", "seeds", seeds, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff *= 2
	}
	m.log.Warn("starting alone; seeds are retried in the background")
}

// seedTargets returns the seeds that are not this node and not already a
// live member.
func (m *Mesh) seedTargets() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	live := make(map[string]bool)
	live[netip.AddrPortFrom(m.cfg.AdvertiseAddr, uint16(m.cfg.Port)).String()] = true
	for _, p := range m.peers {
		if p.state.live() {
			live[p.addr.String()] = true
		}
	}
	var out []string
	for _, s := range m.seeds {
		if !live[withPort(s, m.cfg.Port)] {
			out = append(out, s)
		}
	}
	return out
}

// withPort normalizes an IP seed to "ip:port" so it compares with member
// addresses; host names are returned unchanged.
func withPort(seed string, port int) string {
	if ap, err := netip.ParseAddrPort(seed); err == nil {
		return ap.String()
	}
	if a, err := netip.ParseAddr(seed); err == nil {
		return netip.AddrPortFrom(a, uint16(port)).String()
	}
	return seed
}

// reconnectLoop re-dials members memberlist declared dead (it never does so
// itself) and seeds that are not members, so the halves of a healed
// partition merge again. It also ages local state.
func (m *Mesh) reconnectLoop(ctx context.Context) {
	interval := min(time.Second, m.cfg.ReconnectInterval)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		case <-m.seedsAdded:
		}
		m.expire()
		targets := append(m.deadTargets(), m.seedTargets()...)
		if len(targets) == 0 {
			interval = m.cfg.ReconnectInterval
			continue
		}
		n, err := m.ml.Join(targets)
		if n > 0 {
			m.log.Info("reconnected", "contacted", n, "of", len(targets))
			interval = m.cfg.ReconnectInterval
		} else {
			m.log.Debug("reconnect found nobody", "targets", targets, "err", err)
			interval = min(2*interval, m.cfg.ReconnectInterval)
		}
	}
}

// reannounceInterval is how often a node gossips its own claim record again.
const reannounceInterval = 10 * time.Second

// reannounceLoop gossips this node's own record again every
// reannounceInterval (jittered). A claim travels once by direct message and a
// bounded number of gossip retransmissions; a member that missed both (it
// joined meanwhile, or its queue overflowed while many nodes started at once)
// would otherwise show this node without a block until the next push/pull,
// which memberlist spaces 30 s to minutes apart as the cluster grows. The
// record is tens of bytes, so this costs well under 100 bytes/s per node.
func (m *Mesh) reannounceLoop(ctx context.Context) {
	for {
		jitter := time.Duration(rand.Int64N(int64(reannounceInterval / 5)))
		select {
		case <-ctx.Done():
			return
		case <-time.After(reannounceInterval - reannounceInterval/10 + jitter):
		}
		m.mu.Lock()
		own, ok := m.table[m.cfg.NodeName]
		m.mu.Unlock()
		if ok && own.Block.IsValid() && !own.Released {
			m.broadcast(own)
		}
	}
}

// deadTargets returns the addresses of members that failed (not those that
// left on purpose).
func (m *Mesh) deadTargets() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, p := range m.peers {
		if p.state == Dead && p.addr.IsValid() {
			out = append(out, p.name+"/"+p.addr.String())
		}
	}
	slices.Sort(out)
	return out
}

// expire drops stale promises and forgets departed members, marks table
// owners nobody sees as dead, and refreshes the member gauge.
func (m *Mesh) expire() {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	for b, p := range m.promises {
		if !now.Before(p.expires) {
			delete(m.promises, b)
		}
	}
	for b, t := range m.contested {
		if !now.Before(t) {
			delete(m.contested, b)
		}
	}
	for name, p := range m.peers {
		if !p.state.live() && now.Sub(p.since) > m.cfg.ReclaimAfter {
			delete(m.peers, name)
		}
	}
	// An owner recorded as alive that no member list here knows (it died
	// while this node was away) is marked dead after a grace period, so it
	// does not stay in every electorate for good.
	grace := 2 * m.cfg.ReconnectInterval
	for name, r := range m.table {
		if name == m.cfg.NodeName || r.Released || !r.DeadAt.IsZero() || m.isLiveLocked(name) {
			delete(m.missingSince, name)
			continue
		}
		first, ok := m.missingSince[name]
		if !ok {
			m.missingSince[name] = now
			continue
		}
		if now.Sub(first) > grace {
			r.DeadAt = first
			m.table[name] = r
			delete(m.missingSince, name)
		}
	}
	m.countMembersLocked()
}

// countMembersLocked refreshes the members-by-state gauge.
func (m *Mesh) countMembersLocked() {
	var counts [Left + 1]int
	for _, p := range m.peers {
		counts[p.state]++
	}
	for s, n := range counts {
		m.metrics.members.WithLabelValues(MemberState(s).String()).Set(float64(n))
	}
}

func (m *Mesh) isLiveLocked(name string) bool {
	if name == m.cfg.NodeName {
		return true
	}
	p, ok := m.peers[name]
	return ok && p.state.live()
}

// Release frees the block of a dead or departed node at once, cluster-wide.
// It refuses a node that is alive (or suspect) and a node without a claim.
func (m *Mesh) Release(ctx context.Context, node string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	if m.queue == nil {
		m.mu.Unlock()
		return errors.New("mesh: not running")
	}
	if m.isLiveLocked(node) {
		m.mu.Unlock()
		return fmt.Errorf("mesh: node %s is alive; stop it (or wait until it is declared dead) before releasing its block", node)
	}
	rec, ok := m.table[node]
	if !ok {
		m.mu.Unlock()
		return fmt.Errorf("mesh: no claim recorded for node %s", node)
	}
	if rec.Released {
		m.mu.Unlock()
		return fmt.Errorf("mesh: the block %s of node %s is already released", rec.Block, node)
	}
	rec.Released = true
	rec.Gen++
	m.table[node] = rec
	m.mu.Unlock()
	m.broadcast(rec)
	m.log.Info("released the block of a departed node", "node", node, "block", rec.Block)
	m.nudge()
	m.notify()
	return nil
}

// broadcast gossips records to the cluster.
func (m *Mesh) broadcast(recs ...Record) {
	for _, r := range recs {
		m.queue.QueueBroadcast(&recordBroadcast{node: r.Node, msg: encodeRecords([]Record{r})})
	}
}

// recordBroadcast is one record on its way through the gossip queue; a newer
// record of the same node replaces it.
type recordBroadcast struct {
	node string
	msg  []byte
}

func (b *recordBroadcast) Invalidates(o memberlist.Broadcast) bool {
	ob, ok := o.(*recordBroadcast)
	return ok && ob.node == b.node
}
func (b *recordBroadcast) Name() string    { return "record:" + b.node }
func (b *recordBroadcast) Message() []byte { return b.msg }
func (b *recordBroadcast) Finished()       {}

// nodeAddr converts memberlist's address of n.
func nodeAddr(n *memberlist.Node) netip.AddrPort {
	a, ok := netip.AddrFromSlice(n.Addr)
	if !ok {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a.Unmap(), n.Port)
}

// memberNode builds the memberlist address of a member for SendReliable.
func memberNode(name string, addr netip.AddrPort) *memberlist.Node {
	return &memberlist.Node{Name: name, Addr: net.IP(addr.Addr().AsSlice()), Port: addr.Port()}
}

// logWriter forwards memberlist's log lines ("[LEVEL] memberlist: ...") to
// slog at the matching level.
type logWriter struct{ log *slog.Logger }

var memberlistLevels = []struct {
	prefix string
	level  slog.Level
}{{"[DEBUG] ", slog.LevelDebug}, {"[INFO] ", slog.LevelInfo}, {"[WARN] ", slog.LevelWarn}, {"[ERR] ", slog.LevelError}}

func (w *logWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	for _, l := range memberlistLevels {
		if _, rest, ok := strings.Cut(line, l.prefix); ok {
			line, level = rest, l.level
			break
		}
	}
	w.log.Log(context.Background(), level, strings.TrimPrefix(line, "memberlist: "), "source", "memberlist")
	return len(p), nil
}
