package mesh_test

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/meshtest"
)

// clock is a settable Now for ReclaimAfter.
type clock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if _, err := meshtest.WaitFor(ctx, 10*time.Millisecond, cond); err != nil {
		t.Fatalf("%s: %v", what, err)
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

func TestPartitionMinorityClaimsNothing(t *testing.T) {
	c := newCluster(t, meshtest.Options{})
	nodes := []*meshtest.Node{start(t, c, meshtest.Spec{Name: "p0"})}
	for i := 1; i < 5; i++ {
		nodes = append(nodes, start(t, c, meshtest.Spec{Name: fmt.Sprintf("p%d", i), Join: seed(nodes[0])}))
	}
	waitConverged(t, c, 20*time.Second)
	before := c.Views()

	// p5 will join the minority side; it gets the next host address.
	minority := []netip.Addr{nodes[0].Addr.Addr(), nodes[1].Addr.Addr(), meshtest.HostAddr(5)}
	majority := []netip.Addr{nodes[2].Addr.Addr(), nodes[3].Addr.Addr(), nodes[4].Addr.Addr()}
	c.Net.Partition(minority, majority)
	for _, obs := range nodes[:2] {
		for _, peer := range nodes[2:] {
			waitFor(t, "minority sees the majority fail", 20*time.Second, func() error { return sees(obs, peer.Name, mesh.Dead) })
		}
	}

	p5 := start(t, c, meshtest.Spec{Name: "p5", Join: seed(nodes[0])})
	if p5.Addr.Addr() != meshtest.HostAddr(5) {
		t.Fatalf("p5 got address %s, the partition expects %s", p5.Addr.Addr(), meshtest.HostAddr(5))
	}
	// 3 reachable (p0, p1, p5) of an electorate of 6 (the 3 recently dead
	// owners count): a majority needs 4.
	waitFor(t, "p5 reports no quorum", 20*time.Second, reasonContains(p5, "no quorum: reached 3 of needed 4 (electorate 6)"))
	if b := p5.Mesh.View().Block; b.IsValid() {
		t.Fatalf("p5 claimed %s without a majority", b)
	}
	for _, n := range nodes {
		if v := n.Mesh.View(); v.Block != before[n.Name].Block || !v.Ready {
			t.Errorf("%s: block %s ready=%v during the partition, had %s", n.Name, v.Block, v.Ready, before[n.Name].Block)
		}
	}

	// Heal: the reconnect loops merge the halves, p5 gets its block, and no
	// block is held twice.
	c.Net.Heal()
	d := waitConverged(t, c, 30*time.Second)
	t.Logf("merged %v after healing", d)
	for _, n := range nodes {
		if got := n.Mesh.View().Block; got != before[n.Name].Block {
			t.Errorf("%s: block changed from %s to %s across the partition", n.Name, before[n.Name].Block, got)
		}
	}
}

func TestStableBlocks(t *testing.T) {
	var clk clock
	// 4 blocks: a, b, c, d fill the pool, so reuse is observable.
	pool := netip.MustParsePrefix("10.244.0.0/21")
	c := newCluster(t, meshtest.Options{Pool: pool, ReclaimAfter: time.Hour, Now: clk.Now})
	a := start(t, c, meshtest.Spec{Name: "a"})
	start(t, c, meshtest.Spec{Name: "b", Join: seed(a)})
	start(t, c, meshtest.Spec{Name: "c", Join: seed(a)})
	views := c.Views()
	waitConverged(t, c, 10*time.Second)
	views = c.Views()

	t.Run("restart keeps the block", func(t *testing.T) {
		b := c.Node("b")
		if err := c.Stop("b"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "a sees b gone", 10*time.Second, func() error { return gone(a, "b") })
		start(t, c, meshtest.Spec{Name: "b", Addr: b.Addr.Addr(), StateDir: b.StateDir, Join: seed(a)})
		waitConverged(t, c, 10*time.Second)
		if got := c.Node("b").Mesh.View().Block; got != views["b"].Block {
			t.Fatalf("b restarted with %s, had %s", got, views["b"].Block)
		}
	})

	cBlock := views["c"].Block
	t.Run("dead peer's block is kept for ReclaimAfter", func(t *testing.T) {
		if err := c.Kill("c"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "a sees c fail", 20*time.Second, func() error { return sees(a, "c", mesh.Dead) })
		d := start(t, c, meshtest.Spec{Name: "d", Join: seed(a)})
		waitFor(t, "d claims the last free block", 10*time.Second, func() error {
			if v := d.Mesh.View(); !v.Ready {
				return fmt.Errorf("d: %s", v.Reason)
			}
			return nil
		})
		if d.Mesh.View().Block == cBlock {
			t.Fatalf("d reused the dead c's block %s before ReclaimAfter", cBlock)
		}
		e := start(t, c, meshtest.Spec{Name: "e", Join: seed(a)})
		waitFor(t, "e finds the pool exhausted", 10*time.Second, reasonContains(e, "exhausted"))

		clk.Advance(time.Hour + time.Minute)
		waitFor(t, "e reclaims c's block after ReclaimAfter", 30*time.Second, func() error {
			if got := e.Mesh.View().Block; got != cBlock {
				return fmt.Errorf("e holds %s (%s), want %s", got, e.Mesh.View().Reason, cBlock)
			}
			return nil
		})
	})

	t.Run("release frees a block at once", func(t *testing.T) {
		dBlock := c.Node("d").Mesh.View().Block
		if err := c.Kill("d"); err != nil {
			t.Fatal(err)
		}
		if err := a.Mesh.Release(context.Background(), "b"); err == nil {
			t.Fatal("released the block of a live node")
		}
		waitFor(t, "a sees d fail", 20*time.Second, func() error { return sees(a, "d", mesh.Dead) })
		if err := a.Mesh.Release(context.Background(), "d"); err != nil {
			t.Fatal(err)
		}
		f := start(t, c, meshtest.Spec{Name: "f", Join: seed(a)})
		waitFor(t, "f claims the released block", 10*time.Second, func() error {
			if got := f.Mesh.View().Block; got != dBlock {
				return fmt.Errorf("f holds %s (%s), want %s", got, f.Mesh.View().Reason, dBlock)
			}
			return nil
		})
	})

	t.Run("a node whose block was reclaimed claims anew", func(t *testing.T) {
		// c comes back with its state dir, at a new address; e holds its
		// old block now and the pool is full.
		cNode := start(t, c, meshtest.Spec{Name: "c", Join: seed(a)})
		waitFor(t, "c gives up its reclaimed block", 10*time.Second, func() error {
			v := cNode.Mesh.View()
			if v.Ready || !strings.Contains(v.Degraded, cBlock.String()) || !strings.Contains(v.Reason, "exhausted") {
				return fmt.Errorf("c: block %s ready=%v reason %q degraded %q", v.Block, v.Ready, v.Reason, v.Degraded)
			}
			return nil
		})
		fBlock := c.Node("f").Mesh.View().Block
		if err := c.Kill("f"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "a sees f fail", 20*time.Second, func() error { return sees(a, "f", mesh.Dead) })
		if err := a.Mesh.Release(context.Background(), "f"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "c claims the released block", 20*time.Second, func() error {
			if got := cNode.Mesh.View().Block; got != fBlock {
				return fmt.Errorf("c holds %s (%s), want %s", got, cNode.Mesh.View().Reason, fBlock)
			}
			return nil
		})
		waitConverged(t, c, 10*time.Second)
	})
}

func TestClonedStateConflict(t *testing.T) {
	c := newCluster(t, meshtest.Options{})
	orig := start(t, c, meshtest.Spec{Name: "orig"})
	waitConverged(t, c, 10*time.Second)
	block := orig.Mesh.View().Block
	if err := c.Stop("orig"); err != nil {
		t.Fatal(err)
	}
	saved, err := os.ReadFile(filepath.Join(orig.StateDir, mesh.BlockFileName))
	if err != nil {
		t.Fatal(err)
	}
	dirs := map[string]string{}
	for _, name := range []string{"clone-a", "clone-b"} {
		dirs[name] = filepath.Join(t.TempDir(), name)
		if err := os.MkdirAll(dirs[name], 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dirs[name], mesh.BlockFileName), saved, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	w := start(t, c, meshtest.Spec{Name: "witness"})
	ca := start(t, c, meshtest.Spec{Name: "clone-a", StateDir: dirs["clone-a"], Join: seed(w)})
	cb := start(t, c, meshtest.Spec{Name: "clone-b", StateDir: dirs["clone-b"], Join: seed(w)})
	waitConverged(t, c, 20*time.Second)

	// Equal claim times: the smaller name wins, on every node.
	if got := ca.Mesh.View().Block; got != block {
		t.Errorf("clone-a holds %s, want the cloned %s", got, block)
	}
	vb := cb.Mesh.View()
	if vb.Block == block || !vb.Block.IsValid() {
		t.Errorf("clone-b holds %s, want a fresh block", vb.Block)
	}
	if !strings.Contains(vb.Degraded, block.String()) {
		t.Errorf("clone-b is not degraded about %s: %q", block, vb.Degraded)
	}
	if v := ca.Mesh.View(); v.Degraded != "" {
		t.Errorf("the winner reports degraded: %q", v.Degraded)
	}
	if n := counter(t, cb.Metrics, "grapevine_mesh_conflicts_total", ""); n < 1 {
		t.Errorf("clone-b counted %v conflicts", n)
	}
}

func TestExhaustedPool(t *testing.T) {
	c := newCluster(t, meshtest.Options{Pool: netip.MustParsePrefix("10.244.0.0/22")})
	a := start(t, c, meshtest.Spec{Name: "a"})
	start(t, c, meshtest.Spec{Name: "b", Join: seed(a)})
	waitConverged(t, c, 10*time.Second)
	x := start(t, c, meshtest.Spec{Name: "x", Join: seed(a)})
	waitFor(t, "x reports the exhausted pool", 10*time.Second, reasonContains(x, "pool 10.244.0.0/22 exhausted: 2 blocks of /23 all held"))
	// Backing off, not spinning: over a second at most a few attempts (the
	// first retry waits at least half a second).
	before := counter(t, x.Metrics, "grapevine_mesh_claims_total", "exhausted")
	time.Sleep(time.Second)
	if n := counter(t, x.Metrics, "grapevine_mesh_claims_total", "exhausted") - before; n > 3 {
		t.Fatalf("%v claim attempts in one second on an exhausted pool", n)
	}
	for _, n := range c.Nodes() {
		if n.Name != "x" && !n.Mesh.View().Ready {
			t.Errorf("%s lost its block", n.Name)
		}
	}
}

func TestWrongKeyCannotJoin(t *testing.T) {
	key := []byte("0123456789abcdef")
	c := newCluster(t, meshtest.Options{SecretKey: key})
	a := start(t, c, meshtest.Spec{Name: "a"})
	start(t, c, meshtest.Spec{Name: "b", Join: seed(a)})
	waitConverged(t, c, 10*time.Second)

	wrong := start(t, c, meshtest.Spec{Name: "wrong-key", SecretKey: []byte("fedcba9876543210"), Join: seed(a)})
	plain := start(t, c, meshtest.Spec{Name: "no-key", SecretKey: []byte{}, Join: seed(a)})
	// Both give up on the seed and start alone: they hold blocks of their
	// own, which must never show up in the cluster.
	for _, n := range []*meshtest.Node{wrong, plain} {
		waitFor(t, n.Name+" starts alone", 20*time.Second, func() error {
			if v := n.Mesh.View(); !v.Ready || len(v.Members) != 0 {
				return fmt.Errorf("%s: ready=%v members=%d", n.Name, v.Ready, len(v.Members))
			}
			return nil
		})
	}
	time.Sleep(time.Second) // let the reconnect loops retry the seed
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
	cfg := memberlist.DefaultLANConfig()
	cfg.Name, cfg.Transport, cfg.Delegate, cfg.LogOutput = "evil", tr, d, io.Discard
	meshtest.FastTimers(cfg)
	evil, err := memberlist.Create(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer evil.Shutdown()
	if _, err := evil.Join([]string{a.Addr.String()}); err != nil {
		t.Fatal(err)
	}

	meta := func(f func(*mesh.Meta)) []byte {
		m := mesh.Meta{HostIP: evilAddr.Addr(), Pool: mesh.DefaultPool, BlockBits: mesh.DefaultBlockBits,
			Block: netip.MustParsePrefix("10.244.100.0/23"), Since: time.UnixMilli(1), Gen: 1}
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
		{"block_outside_pool", meta(func(m *mesh.Meta) { m.Block = netip.MustParsePrefix("10.245.0.0/23") })},
		{"foreign_host_ip", meta(func(m *mesh.Meta) { m.HostIP = netip.MustParseAddr("10.1.0.1") })}, // a's address
		{"pool_mismatch", meta(func(m *mesh.Meta) { m.BlockBits = 24; m.Block = netip.MustParsePrefix("10.244.100.0/24") })},
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
				if m.Name == "evil" && m.Block.IsValid() {
					t.Errorf("%s routes %s to evil (%s)", n.Name, m.Block, tc.reason)
				}
			}
		}
	}
	if err := meshtest.DuplicateBlock(c.Views()); err != nil {
		t.Fatal(err)
	}
}

func TestGracefulLeaveIsLeft(t *testing.T) {
	c := newCluster(t, meshtest.Options{Logger: testLogger(t)})
	a := start(t, c, meshtest.Spec{Name: "a"})
	start(t, c, meshtest.Spec{Name: "b", Join: seed(a)})
	waitConverged(t, c, 10*time.Second)
	if err := c.Stop("b"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a sees b leave", 10*time.Second, func() error { return sees(a, "b", mesh.Left) })
	for _, m := range a.Mesh.View().Members {
		if m.Block.IsValid() {
			t.Errorf("a still routes %s to %s after it left", m.Block, m.Name)
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
	m, err := mesh.New(mesh.Config{NodeName: "a", AdvertiseAddr: meshtest.HostAddr(0), StateDir: filepath.Join(notADir, "state"), Transport: tr})
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
		"negative reclaim":  func(c *mesh.Config) { c.ReclaimAfter = -time.Second },
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
