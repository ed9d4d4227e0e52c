package mesh_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/ledger"
	"github.com/grapevine-net/grapevine/mesh/meshtest"
)

func waitFor(t *testing.T, what string, within time.Duration, cond func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := poll.Until(ctx, what, 10*time.Millisecond, cond); err != nil {
		t.Fatal(err)
	}
}

func start(t *testing.T, c *meshtest.Cluster, spec meshtest.Spec) *meshtest.Node {
	t.Helper()
	n, err := c.Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// sees reports whether observer's View shows member in state.
func sees(observer *meshtest.Node, member string, state mesh.MemberState) error {
	for _, m := range observer.Mesh.View().Members {
		if m.Name == member {
			if m.State != state {
				return fmt.Errorf("%s sees %s as %s, want %s", observer.Name, member, m.State, state)
			}
			return nil
		}
	}
	return fmt.Errorf("%s does not know %s", observer.Name, member)
}

// heldBy reports whether observer's View shows member holding block in the
// ledger (Member.Held; zero: none).
func heldBy(observer *meshtest.Node, member string, block netip.Prefix) error {
	for _, m := range observer.Mesh.View().Members {
		if m.Name == member {
			if m.Held != block {
				return fmt.Errorf("%s sees %s holding %s, want %s", observer.Name, member, m.Held, block)
			}
			return nil
		}
	}
	return fmt.Errorf("%s does not know %s", observer.Name, member)
}

// waitReleased has observer release the dead member's block. Release is
// allowed from the instant the member's lease has ended, which is also
// when the leader's reclaim loop may free the block itself: on a loaded
// machine its tick can come first, and then nothing is left to release.
// Either way the block is free when it returns.
func waitReleased(t *testing.T, observer *meshtest.Node, member string) {
	t.Helper()
	waitFor(t, observer.Name+" releases "+member+", or the leader reclaims its block first", 20*time.Second, func() error {
		err := observer.Mesh.Release(context.Background(), member)
		if errors.Is(err, ledger.ErrUnknownNode) && heldBy(observer, member, netip.Prefix{}) == nil {
			return nil
		}
		return err
	})
}

// gone reports whether observer's View shows member dead or departed.
func gone(observer *meshtest.Node, member string) error {
	err := sees(observer, member, mesh.Left)
	if err != nil && sees(observer, member, mesh.Dead) == nil {
		return nil
	}
	return err
}

func reasonContains(n *meshtest.Node, s string) func() error {
	return func() error {
		v := n.Mesh.View()
		if v.Ready || !strings.Contains(v.Reason, s) {
			return fmt.Errorf("%s: ready=%v reason %q, want not ready with %q", n.Name, v.Ready, v.Reason, s)
		}
		return nil
	}
}

// counter sums the samples of a counter or gauge family with the given
// label value (any label value when labelValue is empty).
func counter(t *testing.T, reg *prometheus.Registry, name, labelValue string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			match := labelValue == ""
			for _, l := range m.GetLabel() {
				if l.GetValue() == labelValue {
					match = true
				}
			}
			if match {
				sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// TestPartitionMinorityClaimsNothing: a newcomer on the side of a partition
// without the ledger's quorum gets no block; after the heal it does, and
// no block changes hands.
func TestPartitionMinorityClaimsNothing(t *testing.T) {
	c := newCluster(t, meshtest.Options{Logger: testLogger(t)})
	nodes := []*meshtest.Node{start(t, c, meshtest.Spec{Name: "p0"})}
	for i := 1; i < 5; i++ {
		nodes = append(nodes, start(t, c, meshtest.Spec{Name: fmt.Sprintf("p%d", i), Join: seed(nodes[0])}))
	}
	waitConverged(t, c, 30*time.Second)
	before := c.Views()
	minority, majority := splitByVoters(t, c, nodes)

	// The newcomer gets the next host address: put it on the minority side.
	newcomer := meshtest.HostAddr(5)
	c.Net.Partition(append(addrs(minority), newcomer), addrs(majority))
	p5 := start(t, c, meshtest.Spec{Name: "p5", Join: seed(minority[0])})
	if p5.Addr.Addr() != newcomer {
		t.Fatalf("p5 got address %s, the partition expects %s", p5.Addr.Addr(), newcomer)
	}
	holdFor(t, c, 3*time.Second, func(views map[string]mesh.View) error {
		if v := views["p5"]; v.Block.IsValid() || v.Ready {
			return fmt.Errorf("p5 holds %s (ready=%v) without the ledger's quorum", v.Block, v.Ready)
		}
		return nil
	})
	c.Net.Heal()
	d := waitConverged(t, c, 60*time.Second)
	t.Logf("merged %v after healing", d)
	for _, n := range nodes {
		if got := n.Mesh.View().Block; got != before[n.Name].Block {
			t.Errorf("%s: block changed from %s to %s across the partition", n.Name, before[n.Name].Block, got)
		}
	}
}

// splitByVoters divides converged nodes into a side with a minority of the
// ledger's voters (including non-voters to make it two nodes where it can)
// and the rest.
func splitByVoters(t *testing.T, c *meshtest.Cluster, nodes []*meshtest.Node) (minority, majority []*meshtest.Node) {
	t.Helper()
	voters := waitThreeVoters(t, nodes)
	isVoter := func(n *meshtest.Node) bool { return slices.Contains(voters, n.Name) }
	for _, n := range nodes {
		switch {
		case isVoter(n) && !slices.ContainsFunc(minority, isVoter):
			minority = append(minority, n)
		case !isVoter(n) && len(minority) < 2 && !slices.ContainsFunc(minority, func(m *meshtest.Node) bool { return !isVoter(m) }):
			minority = append(minority, n)
		default:
			majority = append(majority, n)
		}
	}
	return minority, majority
}

// waitThreeVoters waits until every node holds one configuration of three
// voters, and returns them. Not only the leader: a promotion the leader
// has appended but not yet sent leaves the others with the two-voter
// configuration, which loses its majority with either voter.
func waitThreeVoters(t *testing.T, nodes []*meshtest.Node) []string {
	t.Helper()
	var voters []string
	waitFor(t, "three voters known to every node", 30*time.Second, func() error {
		voters = slices.Sorted(slices.Values(nodes[0].Mesh.View().Ledger.Voters))
		if len(voters) != 3 {
			return fmt.Errorf("voters %v", voters)
		}
		for _, n := range nodes[1:] {
			if got := slices.Sorted(slices.Values(n.Mesh.View().Ledger.Voters)); !slices.Equal(got, voters) {
				return fmt.Errorf("%s knows voters %v, %s knows %v", n.Name, got, nodes[0].Name, voters)
			}
		}
		return nil
	})
	return voters
}

func addrs(nodes []*meshtest.Node) []netip.Addr {
	var out []netip.Addr
	for _, n := range nodes {
		out = append(out, n.Addr.Addr())
	}
	return out
}

// holdFor checks, for d, that no block is shared and cond holds on every
// poll of the running nodes' views.
func holdFor(t *testing.T, c *meshtest.Cluster, d time.Duration, cond func(map[string]mesh.View) error) {
	t.Helper()
	err := poll.Hold(context.Background(), "no block shared", d, 20*time.Millisecond, func() error {
		views := c.Views()
		if err := meshtest.SharedBlock(views); err != nil || cond == nil {
			return err
		}
		return cond(views)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestStableBlocks(t *testing.T) {
	// 4 blocks: a, b, c, d fill the pool, so reuse is observable.
	pool := netip.MustParsePrefix("10.244.0.0/21")
	const lease = 3 * time.Second
	c := newCluster(t, meshtest.Options{Pool: pool, Lease: lease, Logger: testLogger(t)})
	a := start(t, c, meshtest.Spec{Name: "a"})
	start(t, c, meshtest.Spec{Name: "b", Join: seed(a)})
	start(t, c, meshtest.Spec{Name: "c", Join: seed(a)})
	waitConverged(t, c, 20*time.Second)
	views := c.Views()

	t.Run("restart keeps the block", func(t *testing.T) {
		b := c.Node("b")
		if err := c.Stop("b"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "a sees b gone", 10*time.Second, func() error { return gone(a, "b") })
		start(t, c, meshtest.Spec{Name: "b", Addr: b.Addr.Addr(), StateDir: b.StateDir, Join: seed(a)})
		waitConverged(t, c, 20*time.Second)
		if got := c.Node("b").Mesh.View().Block; got != views["b"].Block {
			t.Fatalf("b restarted with %s, had %s", got, views["b"].Block)
		}
	})

	cBlock := views["c"].Block
	t.Run("a dead node's block is reclaimed after Lease", func(t *testing.T) {
		// b's restart may have cost it its vote (autopilot replaced it
		// while it was gone) until it is promoted again: kill c only once
		// a, b and c vote, so a and b keep the majority.
		waitThreeVoters(t, []*meshtest.Node{a, c.Node("b"), c.Node("c")})
		if err := c.Kill("c"); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		waitFor(t, "a sees c fail", 20*time.Second, func() error { return sees(a, "c", mesh.Dead) })
		d := start(t, c, meshtest.Spec{Name: "d", Join: seed(a)})
		waitFor(t, "d claims the last free block", 20*time.Second, func() error {
			if v := d.Mesh.View(); !v.Ready {
				return fmt.Errorf("d: %s", v.Reason)
			}
			return nil
		})
		if d.Mesh.View().Block == cBlock {
			t.Fatalf("d took the dead c's block %s", cBlock)
		}
		e := start(t, c, meshtest.Spec{Name: "e", Join: seed(a)})
		waitFor(t, "e reclaims c's block after Lease", 30*time.Second, func() error {
			if got := e.Mesh.View().Block; got != cBlock {
				return fmt.Errorf("e holds %s (%s), want %s", got, e.Mesh.View().Reason, cBlock)
			}
			return nil
		})
		if since := time.Since(killed); since < lease {
			t.Fatalf("c's block was reclaimed %v after c died, before Lease %v", since, lease)
		}
	})

	t.Run("release frees a block once its lease has ended", func(t *testing.T) {
		dBlock := c.Node("d").Mesh.View().Block
		if err := a.Mesh.Release(context.Background(), "b"); err == nil {
			t.Fatal("released the block of a live node")
		}
		// d may have replaced the dead c as a voter: kill it only once c
		// has left the configuration, so the ledger keeps its majority.
		waitFor(t, "the ledger to vote without c", 30*time.Second, func() error {
			if info := a.Mesh.View().Ledger; info.Leader == "" || slices.Contains(info.Voters, "c") {
				return fmt.Errorf("leader %q, voters %v", info.Leader, info.Voters)
			}
			return nil
		})
		if err := c.Kill("d"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "a sees d fail", 20*time.Second, func() error { return sees(a, "d", mesh.Dead) })
		if err := heldBy(a, "d", dBlock); err != nil {
			t.Fatalf("before the release: %v", err)
		}
		waitReleased(t, a, "d")
		// A route kept to the dead d on the data path ends with its block.
		waitFor(t, "a to see d's block released", 10*time.Second, func() error { return heldBy(a, "d", netip.Prefix{}) })
		f := start(t, c, meshtest.Spec{Name: "f", Join: seed(a)})
		waitFor(t, "f claims the released block", 20*time.Second, func() error {
			if got := f.Mesh.View().Block; got != dBlock {
				return fmt.Errorf("f holds %s (%s), want %s", got, f.Mesh.View().Reason, dBlock)
			}
			return nil
		})
	})

	t.Run("a node whose block was reclaimed is fenced and claims anew", func(t *testing.T) {
		// c comes back with its state dir; e holds its old block now and
		// the pool is full.
		cNode := start(t, c, meshtest.Spec{Name: "c", Join: seed(a)})
		waitFor(t, "c gives up its reclaimed block", 20*time.Second, func() error {
			v := cNode.Mesh.View()
			if v.Ready || v.Block.IsValid() || !strings.Contains(v.Degraded, cBlock.String()) || !strings.Contains(v.Reason, "exhausted") {
				return fmt.Errorf("c: block %s ready=%v reason %q degraded %q", v.Block, v.Ready, v.Reason, v.Degraded)
			}
			return nil
		})
		if n := counter(t, cNode.Metrics, "grapevine_mesh_fenced_total", ""); n != 1 {
			t.Errorf("c fenced %v times, want 1", n)
		}
		fBlock := c.Node("f").Mesh.View().Block
		if err := c.Kill("f"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "c claims f's block once reclaimed", 30*time.Second, func() error {
			if got := cNode.Mesh.View().Block; got != fBlock {
				return fmt.Errorf("c holds %s (%s), want %s", got, cNode.Mesh.View().Reason, fBlock)
			}
			return nil
		})
		waitConverged(t, c, 20*time.Second)
	})
}

func TestExhaustedPool(t *testing.T) {
	c := newCluster(t, meshtest.Options{Pool: netip.MustParsePrefix("10.244.0.0/22"), Logger: testLogger(t)})
	a := start(t, c, meshtest.Spec{Name: "a"})
	start(t, c, meshtest.Spec{Name: "b", Join: seed(a)})
	waitConverged(t, c, 20*time.Second)
	x := start(t, c, meshtest.Spec{Name: "x", Join: seed(a)})
	waitFor(t, "x reports the exhausted pool", 20*time.Second, reasonContains(x, "pool 10.244.0.0/22 exhausted"))
	// Backing off, not spinning: over two seconds at most a few attempts.
	before := counter(t, x.Metrics, "grapevine_mesh_claims_total", "exhausted")
	time.Sleep(2 * time.Second)
	if n := counter(t, x.Metrics, "grapevine_mesh_claims_total", "exhausted") - before; n > 6 {
		t.Fatalf("%v claim attempts in two seconds on an exhausted pool", n)
	}
	for _, n := range c.Nodes() {
		if n.Name != "x" && !n.Mesh.View().Ready {
			t.Errorf("%s lost its block", n.Name)
		}
	}
}

// TestWrongKeyCannotJoin: hosts without the key reach neither gossip nor
// the ledger; with seeds they found nothing, and the cluster never lists
// them.
func TestWrongKeyCannotJoin(t *testing.T) {
	key := []byte("0123456789abcdef")
	c := newCluster(t, meshtest.Options{SecretKey: key, Logger: testLogger(t)})
	a := start(t, c, meshtest.Spec{Name: "a"})
	start(t, c, meshtest.Spec{Name: "b", Join: seed(a)})
	waitConverged(t, c, 20*time.Second)

	wrong := start(t, c, meshtest.Spec{Name: "wrong-key", SecretKey: []byte("fedcba9876543210"), Join: seed(a)})
	plain := start(t, c, meshtest.Spec{Name: "no-key", SecretKey: []byte{}, Join: seed(a)})
	for _, n := range []*meshtest.Node{wrong, plain} {
		waitFor(t, n.Name+" waits, naming the seed", 20*time.Second, reasonContains(n, "no answer from seeds "+a.Addr.String()))
	}
	time.Sleep(time.Second) // let the reconnect loops retry the seed
	for _, n := range []*meshtest.Node{wrong, plain} {
		if v := n.Mesh.View(); v.Ready || v.Block.IsValid() || len(v.Members) != 0 {
			t.Errorf("%s: ready=%v block %s members %d", n.Name, v.Ready, v.Block, len(v.Members))
		}
	}
	for _, name := range []string{"a", "b"} {
		for _, m := range c.Node(name).Mesh.View().Members {
			if m.Name == "wrong-key" || m.Name == "no-key" {
				t.Errorf("%s lists %s (%s, block %s)", name, m.Name, m.State, m.Block)
			}
		}
	}
}

// rawDelegate is a memberlist delegate that advertises whatever metadata a
// test sets: a broken or hostile peer.
type rawDelegate struct {
	mu   sync.Mutex
	meta []byte
}

func (d *rawDelegate) set(b []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.meta = b
}

func (d *rawDelegate) NodeMeta(int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.meta
}
func (d *rawDelegate) NotifyMsg([]byte)                {}
func (d *rawDelegate) GetBroadcasts(int, int) [][]byte { return nil }
func (d *rawDelegate) LocalState(bool) []byte          { return nil }
func (d *rawDelegate) MergeRemoteState([]byte, bool)   {}

func TestHostileMetadataGetsNoRoute(t *testing.T) {
	c := newCluster(t, meshtest.Options{})
	a := start(t, c, meshtest.Spec{Name: "a"})
	start(t, c, meshtest.Spec{Name: "b", Join: seed(a)})
	waitConverged(t, c, 10*time.Second)

	evilAddr := netip.AddrPortFrom(netip.MustParseAddr("10.9.9.9"), meshtest.GossipPort)
	tr, err := c.Net.NewTransport(evilAddr)
	if err != nil {
		t.Fatal(err)
	}
	d := &rawDelegate{meta: []byte("\x07garbage")}
	evilID := ledger.NewNodeID()
	cfg := memberlist.DefaultLANConfig()
	cfg.Name, cfg.Transport, cfg.Delegate, cfg.LogOutput = evilID.String(), tr, d, io.Discard
	meshtest.FastTimers(cfg)
	evil, err := memberlist.Create(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer evil.Shutdown()
	if _, err := evil.Join([]string{a.Addr.String()}); err != nil {
		t.Fatal(err)
	}

	victim := c.Node("b").Mesh.View()
	meta := func(f func(*mesh.Meta)) []byte {
		m := mesh.Meta{Name: "evil", HostIP: evilAddr.Addr(), Pool: mesh.DefaultPool, BlockBits: mesh.DefaultBlockBits,
			LedgerPort: meshtest.LedgerPort, ID: victim.ID, ClusterID: victim.Ledger.ClusterID, Block: victim.Block}
		f(&m)
		b, err := m.AppendBinary(nil)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		reason string
		meta   []byte
	}{
		{"version", []byte("\x07garbage")},
		{"node_id", meta(func(m *mesh.Meta) { m.ID = ledger.NodeID{} })},
		{"foreign_host_ip", meta(func(m *mesh.Meta) { m.HostIP = victim.HostIP })}, // b's address, with b's ID
		{"pool_mismatch", meta(func(m *mesh.Meta) { m.BlockBits = 24 })},
		{"node_id_mismatch", meta(func(*mesh.Meta) {})}, // b's ID, gossiping under another
	} {
		d.set(tc.meta)
		if err := evil.UpdateNode(time.Second); err != nil {
			t.Fatal(err)
		}
		for _, n := range c.Nodes() {
			waitFor(t, n.Name+" rejects "+tc.reason, 10*time.Second, func() error {
				if got := counter(t, n.Metrics, "grapevine_mesh_rejected_metadata_total", tc.reason); got < 1 {
					return fmt.Errorf("%s counted %v rejections for %s", n.Name, got, tc.reason)
				}
				return nil
			})
		}
		for _, n := range c.Nodes() {
			for _, m := range n.Mesh.View().Members {
				if m.Addr == evilAddr.Addr() && m.Block.IsValid() {
					t.Errorf("%s routes %s to evil (%s)", n.Name, m.Block, tc.reason)
				}
			}
		}
	}
	// Valid metadata under evil's own ID with b's name, advertising b's
	// block: accepted, yet the ledger assigns evil's ID nothing, so nothing
	// moves.
	d.set(meta(func(m *mesh.Meta) { m.ID, m.Name = evilID, "b" }))
	if err := evil.UpdateNode(time.Second); err != nil {
		t.Fatal(err)
	}
	holdFor(t, c, 2*time.Second, func(views map[string]mesh.View) error {
		for name, v := range views {
			for _, m := range v.Members {
				if m.Addr == evilAddr.Addr() && m.Block.IsValid() {
					return fmt.Errorf("%s routes %s to evil", name, m.Block)
				}
				if m.ID == victim.ID && m.Block != victim.Block {
					return fmt.Errorf("%s routes %s to b, which holds %s", name, m.Block, victim.Block)
				}
			}
		}
		return nil
	})
}

func TestGracefulLeaveIsLeft(t *testing.T) {
	c := newCluster(t, meshtest.Options{Logger: testLogger(t)})
	a := start(t, c, meshtest.Spec{Name: "a"})
	start(t, c, meshtest.Spec{Name: "b", Join: seed(a)})
	waitConverged(t, c, 10*time.Second)
	views := c.Views()
	if err := c.Stop("b"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a sees b leave", 10*time.Second, func() error { return sees(a, "b", mesh.Left) })
	for _, m := range a.Mesh.View().Members {
		if m.Block.IsValid() {
			t.Errorf("a still shows %s live with %s after it left", m.Name, m.Block)
		}
		// Its block stays its own in the ledger: the agent keeps the
		// route while b's host answers (an agent restart).
		if m.Held != views["b"].Block {
			t.Errorf("a shows %s holding %s after it left, want %s", m.Name, m.Held, views["b"].Block)
		}
	}
}

func TestUnusableStateDirFailsRun(t *testing.T) {
	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tr, err := meshtest.NewNetwork().NewTransport(netip.AddrPortFrom(meshtest.HostAddr(0), meshtest.GossipPort))
	if err != nil {
		t.Fatal(err)
	}
	m, err := mesh.New(mesh.Config{NodeName: "a", AdvertiseAddr: meshtest.HostAddr(0), StateDir: filepath.Join(notADir, "state"), Transport: tr, Found: true})
	if err != nil {
		t.Fatal(err)
	}
	err = m.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), notADir) {
		t.Fatalf("Run with a state dir under a file: %v, want an error naming the path", err)
	}
	if v := m.View(); v.Ready || v.Block.IsValid() {
		t.Fatalf("not running, yet ready with %s", v.Block)
	}
}

func TestConfigErrors(t *testing.T) {
	good := mesh.Config{NodeName: "a", AdvertiseAddr: netip.MustParseAddr("10.0.0.1"), StateDir: t.TempDir()}
	for name, edit := range map[string]func(*mesh.Config){
		"no name":           func(c *mesh.Config) { c.NodeName = "" },
		"space in name":     func(c *mesh.Config) { c.NodeName = "a b" },
		"no address":        func(c *mesh.Config) { c.AdvertiseAddr = netip.Addr{} },
		"loopback address":  func(c *mesh.Config) { c.AdvertiseAddr = netip.MustParseAddr("127.0.0.1") },
		"IPv6 address":      func(c *mesh.Config) { c.AdvertiseAddr = netip.MustParseAddr("fd00::1") },
		"block above pool":  func(c *mesh.Config) { c.BlockBits = 8 },
		"unmasked pool":     func(c *mesh.Config) { c.Pool = netip.MustParsePrefix("10.244.1.0/16") },
		"short key":         func(c *mesh.Config) { c.SecretKey = []byte("short") },
		"no state dir":      func(c *mesh.Config) { c.StateDir = "" },
		"port out of range": func(c *mesh.Config) { c.Port = 70000 },
		"negative reclaim":  func(c *mesh.Config) { c.Lease = -time.Second },
		"two voters":        func(c *mesh.Config) { c.Voters = 2 },
		"seven voters":      func(c *mesh.Config) { c.Voters = 7 },
		"ledger on gossip":  func(c *mesh.Config) { c.LedgerPort = mesh.DefaultPort },
		"ledger port range": func(c *mesh.Config) { c.LedgerPort = 70000 },
	} {
		t.Run(name, func(t *testing.T) {
			cfg := good
			edit(&cfg)
			if _, err := mesh.New(cfg); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if _, err := mesh.New(good); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
}
