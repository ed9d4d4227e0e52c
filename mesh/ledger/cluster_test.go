package ledger

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/mesh/ledger/ledgertest"
)

// Deadlines are generous: the tests must pass on a loaded 2-core machine,
// and waiting longer only costs time when something is broken.
const (
	waitLong  = 60 * time.Second
	waitShort = 20 * time.Second
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

func testLogger() *slog.Logger {
	if os.Getenv("LEDGER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// fastRaft keeps timers short but not so short that a loaded machine
// flaps leadership.
func fastRaft(c *raft.Config) {
	c.HeartbeatTimeout = 500 * time.Millisecond
	c.ElectionTimeout = 500 * time.Millisecond
	c.LeaderLeaseTimeout = 250 * time.Millisecond
	c.CommitTimeout = 20 * time.Millisecond
}

type tnode struct {
	name    string
	id      NodeID
	addr    netip.AddrPort
	hostIP  netip.Addr
	stores  *Stores
	reg     *prometheus.Registry
	l       *Ledger
	cancel  context.CancelFunc
	done    chan error
	running bool
	mod     func(*Config) // per-node configuration, applied last
}

type tcluster struct {
	t    testing.TB
	net  *ledgertest.Network
	base Config // Pool, BlockBits, Voters, Lease, autopilot timings, Key
	tune func(*raft.Config)

	mu    sync.Mutex
	nodes []*tnode
	dead  map[string]bool // gossip says not alive even if running
	extra []Peer          // members gossip shows beside the nodes (no ledger runs for them)
	stop  chan struct{}
	wg    sync.WaitGroup
}

func newCluster(t testing.TB, mod func(*Config)) *tcluster {
	c := &tcluster{
		t:   t,
		net: ledgertest.NewNetwork(),
		base: Config{
			Pool: testPool, BlockBits: 24, Voters: 3, Key: testKey,
			Lease: time.Hour, DeadVoterGrace: time.Second,
			StableAfter: 500 * time.Millisecond, DeadNonvoterAfter: time.Hour,
		},
		tune: fastRaft,
		dead: map[string]bool{},
		stop: make(chan struct{}),
	}
	if mod != nil {
		mod(&c.base)
	}
	c.wg.Add(1)
	go c.gossipLoop()
	t.Cleanup(c.close)
	return c
}

func (c *tcluster) close() {
	close(c.stop)
	c.wg.Wait()
	c.mu.Lock()
	nodes := append([]*tnode(nil), c.nodes...)
	c.mu.Unlock()
	for _, n := range nodes {
		c.kill(n)
	}
}

// add creates a node (not started) with the next virtual address.
func (c *tcluster) add(name string) *tnode {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := len(c.nodes) + 1
	ip := netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})
	n := &tnode{name: name, id: NewNodeID(), addr: netip.AddrPortFrom(ip, DefaultPort), hostIP: ip, stores: NewMemStores()}
	c.nodes = append(c.nodes, n)
	return n
}

func (c *tcluster) start(n *tnode, found bool) {
	c.t.Helper()
	cfg := c.base
	cfg.ID, cfg.Name, cfg.Advertise = n.id, n.name, n.addr
	cfg.Found = found
	cfg.Logger = testLogger().With("node", n.name)
	n.reg = prometheus.NewRegistry()
	cfg.Registerer = n.reg
	cfg.Network = c.net.Host(n.addr)
	cfg.Stores = n.stores
	cfg.Tune = c.tune
	if n.mod != nil {
		n.mod(&cfg)
	}
	l, err := Open(cfg)
	if err != nil {
		c.t.Fatalf("open %s: %v", n.name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	c.mu.Lock()
	n.l, n.cancel, n.done, n.running = l, cancel, done, true
	c.mu.Unlock()
	c.pushGossip()
}

// kill stops a node's ledger (its stores survive for a restart).
func (c *tcluster) kill(n *tnode) {
	c.mu.Lock()
	running := n.running
	n.running = false
	c.mu.Unlock()
	if !running {
		return
	}
	n.cancel()
	select {
	case err := <-n.done:
		if err != nil {
			c.t.Errorf("run %s: %v", n.name, err)
		}
	case <-time.After(2 * waitLong): // raft, RPC and transport timeouts add up under -race
		var buf strings.Builder
		pprof.Lookup("goroutine").WriteTo(&buf, 1)
		c.t.Errorf("%s did not shut down; goroutines:\n%s", n.name, buf.String())
	}
	c.pushGossip()
}

func (c *tcluster) setDead(n *tnode, dead bool) {
	c.mu.Lock()
	c.dead[n.name] = dead
	c.mu.Unlock()
	c.pushGossip()
}

// pushGossip gives every running node the same view: a member is alive if
// it runs and is not marked dead.
func (c *tcluster) pushGossip() {
	c.mu.Lock()
	var peers []Peer
	var live []*Ledger
	for _, n := range c.nodes {
		p := Peer{ID: n.id, Name: n.name, Addr: n.addr, HostIP: n.hostIP, Alive: n.running && !c.dead[n.name]}
		if n.l != nil {
			st, _ := n.l.State()
			p.ClusterID, p.LedgerState = st.ClusterID, n.l.HasState()
		}
		peers = append(peers, p)
		if n.running {
			live = append(live, n.l)
		}
	}
	peers = append(peers, c.extra...)
	c.mu.Unlock()
	for _, l := range live {
		l.SetPeers(peers)
	}
}

func (c *tcluster) gossipLoop() {
	defer c.wg.Done()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.pushGossip()
		}
	}
}

func (c *tcluster) running() []*tnode {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*tnode
	for _, n := range c.nodes {
		if n.running {
			out = append(out, n)
		}
	}
	return out
}

// leader waits until exactly one running node leads and returns it.
func (c *tcluster) leader() *tnode {
	c.t.Helper()
	var lead *tnode
	waitFor(c.t, waitLong, "a single leader", func() bool {
		lead = nil
		for _, n := range c.running() {
			if n.l.Info().Role == "leader" {
				if lead != nil {
					return false
				}
				lead = n
			}
		}
		return lead != nil
	})
	return lead
}

// join asks n to join through the given nodes until it is accepted.
func (c *tcluster) join(n *tnode, via ...*tnode) {
	c.t.Helper()
	var addrs []netip.AddrPort
	for _, v := range via {
		addrs = append(addrs, v.addr)
	}
	var last error
	waitFor(c.t, waitLong, n.name+" accepted by the ledger", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		last = n.l.RequestJoin(ctx, ClusterID{}, addrs)
		return last == nil
	}, func() string { return fmt.Sprint(last) })
}

// configured reports whether the raft configuration as n sees it lists
// the node with ID id, voter or not.
func configured(n *tnode, id NodeID) bool {
	f := n.l.raft.Load().GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == id.String() {
			return true
		}
	}
	return false
}

// voters returns the voter names as seen by n.
func voterSet(n *tnode) map[string]bool {
	m := map[string]bool{}
	for _, v := range n.l.Info().Voters {
		m[v] = true
	}
	return m
}

func (c *tcluster) claim(n *tnode, hint netip.Prefix) netip.Prefix {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	g, err := n.l.Claim(ctx, hint, n.hostIP)
	if err != nil {
		c.t.Fatalf("claim by %s: %v", n.name, err)
	}
	return g.Block
}

// waitFor polls cond every 50ms until it holds or timeout passes, and
// then fails with what detail says.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool, detail ...func() string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := poll.Until(ctx, what, 50*time.Millisecond, func() error {
		if cond() {
			return nil
		}
		return errors.New("not yet")
	})
	if err != nil {
		for _, d := range detail {
			err = fmt.Errorf("%w; %s", err, d())
		}
		t.Fatal(err)
	}
}

// startCluster founds a ledger on the first of names and joins the others
// as non-voters; it waits for min(len, Voters) voters.
func startCluster(t testing.TB, mod func(*Config), names ...string) (*tcluster, []*tnode) {
	t.Helper()
	c := newCluster(t, mod)
	return c, c.startNodes(names...)
}

// startNodes is startCluster on a cluster made with newCluster.
func (c *tcluster) startNodes(names ...string) []*tnode {
	t := c.t
	t.Helper()
	var nodes []*tnode
	for _, name := range names {
		nodes = append(nodes, c.add(name))
	}
	c.start(nodes[0], true)
	waitFor(t, waitLong, "the founder to write the Found entry", func() bool {
		st, _ := nodes[0].l.State()
		return st.Founded()
	})
	for _, n := range nodes[1:] {
		c.start(n, false)
		c.join(n, nodes[0])
	}
	want := min(len(nodes), c.base.Voters)
	if want%2 == 0 {
		want-- // autopilot keeps the count of voters odd
	}
	waitFor(t, waitLong, fmt.Sprintf("%d voters", want), func() bool {
		return len(c.leader().l.Info().Voters) == want
	}, func() string { return fmt.Sprint(c.leader().l.Info()) })
	return nodes
}

// converged waits until the replicas of the given nodes (default: all
// running) equal the leader's, and returns that state.
func (c *tcluster) converged(among ...*tnode) State {
	c.t.Helper()
	var want State
	waitFor(c.t, waitLong, "replicas to converge", func() bool {
		lead := c.leader()
		want, _ = lead.l.State()
		nodes := among
		if len(nodes) == 0 {
			nodes = c.running()
		}
		for _, n := range nodes {
			st, _ := n.l.State()
			if !equalState(st, want) {
				return false
			}
		}
		return true
	})
	return want
}

func equalState(a, b State) bool {
	if a.ClusterID != b.ClusterID || a.Pool != b.Pool || a.BlockBits != b.BlockBits || len(a.Blocks) != len(b.Blocks) {
		return false
	}
	for k, v := range a.Blocks {
		if b.Blocks[k] != v {
			return false
		}
	}
	return true
}

func TestFoundJoinPromote(t *testing.T) {
	c, nodes := startCluster(t, nil, "n1", "n2", "n3", "n4")
	lead := c.leader()
	want := lead.l.Info()
	if want.ClusterID.IsZero() {
		t.Fatal("no cluster ID after founding")
	}
	roles := map[string]int{}
	waitFor(t, waitLong, "every node to see one leader, 3 voters and one non-voter", func() bool {
		roles = map[string]int{}
		for _, n := range nodes {
			info := n.l.Info()
			if info.Leader != lead.name || len(info.Voters) != 3 || info.ClusterID != want.ClusterID {
				return false
			}
			roles[info.Role]++
		}
		return roles["leader"] == 1 && roles["voter"] == 2 && roles["nonvoter"] == 1
	}, func() string { return fmt.Sprint(roles) })
}

// counterValue sums a counter in reg over series matching labels.
func counterValue(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue metric
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

func TestVoterCountConfigurable(t *testing.T) {
	for _, tt := range []struct {
		voters int
		nodes  []string
	}{
		{1, []string{"n1", "n2", "n3"}},
		{5, []string{"n1", "n2", "n3", "n4", "n5", "n6"}},
	} {
		t.Run(fmt.Sprint(tt.voters, "voters"), func(t *testing.T) {
			c, nodes := startCluster(t, func(cfg *Config) { cfg.Voters = tt.voters }, tt.nodes...)
			// startCluster waited for min(nodes, voters) voters; it must stay so
			time.Sleep(time.Second)
			if v := c.leader().l.Info().Voters; len(v) != tt.voters {
				t.Fatalf("voters %v, want %d", v, tt.voters)
			}
			c.claim(nodes[len(nodes)-1], netip.Prefix{})
		})
	}
	if _, err := Open(Config{ID: idA, Name: "a", Advertise: netip.MustParseAddrPort("192.0.2.1:7963"), Pool: testPool, BlockBits: 24, Voters: 4, Stores: NewMemStores()}); err == nil {
		t.Fatal("4 voters accepted")
	}
}

func TestOpenRejectsBadConfig(t *testing.T) {
	ok := Config{ID: idA, Name: "a", Advertise: netip.MustParseAddrPort("192.0.2.1:7963"), Pool: testPool, BlockBits: 24, Stores: NewMemStores()}
	for name, mod := range map[string]func(*Config){
		"zero ID":          func(c *Config) { c.ID = NodeID{} },
		"bad name":         func(c *Config) { c.Name = "a b" },
		"no advertise":     func(c *Config) { c.Advertise = netip.AddrPort{} },
		"unspecified addr": func(c *Config) { c.Advertise = netip.MustParseAddrPort("0.0.0.0:7963") },
		"even voters":      func(c *Config) { c.Voters = 2 },
		"7 voters":         func(c *Config) { c.Voters = 7 },
		"short key":        func(c *Config) { c.Key = []byte("short") },
		"block > pool":     func(c *Config) { c.BlockBits = 16 },
		"no pool":          func(c *Config) { c.Pool = netip.Prefix{} },
		"no dir or stores": func(c *Config) { c.Stores = nil },
		"negative reclaim": func(c *Config) { c.Lease = -time.Second },
	} {
		c := ok
		mod(&c)
		if _, err := Open(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
