package mesh_test

// Regression tests for the ways the vote protocol that preceded the ledger
// could hand one block to two nodes. Each builds its trace in the in-process
// harness and asserts, on every poll, that no block is used by two nodes
// (meshtest.SharedBlock), plus what the trace broke. Several traces cannot
// happen by construction now (no votes, no promises, no claim records in
// gossip); their tests still build the scenario and assert the invariant.

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
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/ledger"
	"github.com/grapevine-net/grapevine/mesh/meshtest"
)

// converged5 starts p0 (founder) and p1..p4 joining it.
func converged5(t *testing.T, c *meshtest.Cluster) []*meshtest.Node {
	t.Helper()
	nodes := []*meshtest.Node{start(t, c, meshtest.Spec{Name: "p0"})}
	for i := 1; i < 5; i++ {
		nodes = append(nodes, start(t, c, meshtest.Spec{Name: fmt.Sprintf("p%d", i), Join: seed(nodes[0])}))
	}
	waitConverged(t, c, 30*time.Second)
	return nodes
}

func blocksOf(views map[string]mesh.View) map[string]netip.Prefix {
	out := make(map[string]netip.Prefix)
	for n, v := range views {
		out[n] = v.Block
	}
	return out
}

// Trace 1: partition 2|3, then two newcomers join each side. Newcomers on
// the side without the ledger's quorum get nothing; nothing is ever shared;
// after the heal all converge.
func TestTrace01PartitionNewcomersOnBothSides(t *testing.T) {
	c := newCluster(t, meshtest.Options{Logger: testLogger(t)})
	nodes := converged5(t, c)
	before := blocksOf(c.Views())
	minority, majority := splitByVoters(t, c, nodes)
	if len(minority) != 2 || len(majority) != 3 {
		t.Fatalf("split %d|%d, want 2|3", len(minority), len(majority))
	}
	// Next addresses: 5, 6 on the minority side, 7, 8 on the majority's.
	minAddrs := append(addrs(minority), meshtest.HostAddr(5), meshtest.HostAddr(6))
	majAddrs := append(addrs(majority), meshtest.HostAddr(7), meshtest.HostAddr(8))
	c.Net.Partition(minAddrs, majAddrs)
	waitFor(t, "the minority sees the majority fail", 20*time.Second, func() error {
		for _, m := range majority {
			if err := sees(minority[0], m.Name, mesh.Dead); err != nil {
				return err
			}
		}
		return nil
	})
	for i, side := range [][]*meshtest.Node{minority, minority, majority, majority} {
		n := start(t, c, meshtest.Spec{Name: fmt.Sprintf("new%d", i), Join: seed(side[0])})
		if want := meshtest.HostAddr(5 + i); n.Addr.Addr() != want {
			t.Fatalf("%s got %s, the partition expects %s", n.Name, n.Addr.Addr(), want)
		}
	}
	waitFor(t, "the majority's newcomers get blocks", 30*time.Second, func() error {
		views := c.Views()
		if err := meshtest.SharedBlock(views); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"new2", "new3"} {
			if !views[n].Ready {
				return fmt.Errorf("%s: %s", n, views[n].Reason)
			}
		}
		return nil
	})
	holdFor(t, c, 2*time.Second, func(views map[string]mesh.View) error {
		for _, n := range []string{"new0", "new1"} {
			if views[n].Block.IsValid() {
				return fmt.Errorf("%s holds %s on the side without quorum", n, views[n].Block)
			}
		}
		return nil
	})
	c.Net.Heal()
	waitConvergedChecked(t, c, 60*time.Second)
	for name, b := range before {
		if got := c.Node(name).Mesh.View().Block; got != b {
			t.Errorf("%s: block moved from %s to %s", name, b, got)
		}
	}
}

// checkedBy turns a condition on the running nodes' views into a poll
// that fails the test at once when a block is shared or invariant breaks.
func checkedBy(t *testing.T, c *meshtest.Cluster, invariant func(map[string]mesh.View) error) func(cond func(map[string]mesh.View) error) func() error {
	return func(cond func(map[string]mesh.View) error) func() error {
		return func() error {
			views := c.Views()
			if err := meshtest.SharedBlock(views); err != nil {
				t.Fatal(err)
			}
			if err := invariant(views); err != nil {
				t.Fatal(err)
			}
			return cond(views)
		}
	}
}

// waitConverged, checking the invariant on every poll.
func waitConvergedChecked(t *testing.T, c *meshtest.Cluster, within time.Duration) {
	t.Helper()
	waitFor(t, "convergence", within, func() error {
		views := c.Views()
		if err := meshtest.SharedBlock(views); err != nil {
			t.Fatal(err)
		}
		return meshtest.Converged(views)
	})
}

// Trace 2: a host whose --join seeds do not answer at boot, its clock a day
// behind, must not found a ledger nor take any block: it waits, not ready,
// naming the seeds; once it reaches them it joins and gets a free block.
func TestTrace02IsolatedBootWithSlowClock(t *testing.T) {
	c := newCluster(t, meshtest.Options{Logger: testLogger(t)})
	a := start(t, c, meshtest.Spec{Name: "a"})
	start(t, c, meshtest.Spec{Name: "b", Join: seed(a)})
	waitConverged(t, c, 20*time.Second)
	before := blocksOf(c.Views())

	lonely := meshtest.HostAddr(2)
	c.Net.Partition([]netip.Addr{lonely}, []netip.Addr{a.Addr.Addr(), c.Node("b").Addr.Addr()})
	x := start(t, c, meshtest.Spec{Name: "x", Join: seed(a), Clock: meshtest.NewClock(-24 * time.Hour).Host})
	waitFor(t, "x names the seed it cannot reach", 20*time.Second, reasonContains(x, "no answer from seeds "+a.Addr.String()))
	holdFor(t, c, 2*time.Second, func(views map[string]mesh.View) error {
		if v := views["x"]; v.Block.IsValid() || !v.Ledger.ClusterID.IsZero() {
			return fmt.Errorf("isolated x holds %s in ledger %s", v.Block, v.Ledger.ClusterID)
		}
		return nil
	})
	c.Net.Heal()
	waitConvergedChecked(t, c, 30*time.Second)
	for name, b := range before {
		if got := c.Node(name).Mesh.View().Block; got != b {
			t.Errorf("%s: block moved from %s to %s", name, b, got)
		}
	}
}

// Trace 3: an operator-released node that returns isolated must not use
// its old block, which a new node holds; and a partition longer than
// Lease costs only the cut-off owner its block, never the majority's.
func TestTrace03ReleaseAndLongPartition(t *testing.T) {
	const reclaimAfter = 2 * time.Second
	// Two blocks: a and c hold them; d can only get c's.
	c := newCluster(t, meshtest.Options{Pool: netip.MustParsePrefix("10.244.0.0/22"), Lease: reclaimAfter, Voters: 1, Logger: testLogger(t)})
	a := start(t, c, meshtest.Spec{Name: "a"})
	cn := start(t, c, meshtest.Spec{Name: "c", Join: seed(a)})
	waitConverged(t, c, 20*time.Second)
	cBlock, cDir, cAddr := cn.Mesh.View().Block, cn.StateDir, cn.Addr.Addr()

	if err := c.Kill("c"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a sees c fail", 20*time.Second, func() error { return sees(a, "c", mesh.Dead) })
	waitReleased(t, a, "c")
	d := start(t, c, meshtest.Spec{Name: "d", Join: seed(a)})
	waitFor(t, "d takes the released block", 20*time.Second, func() error {
		if v := d.Mesh.View(); !v.Ready || v.Block != cBlock {
			return fmt.Errorf("d: block %s ready=%v (%s)", v.Block, v.Ready, v.Reason)
		}
		return nil
	})
	// c returns with its state, cut off from everyone.
	c.Net.Partition([]netip.Addr{cAddr}, []netip.Addr{a.Addr.Addr(), d.Addr.Addr()})
	start(t, c, meshtest.Spec{Name: "c", Addr: cAddr, StateDir: cDir, Join: seed(a)})
	holdFor(t, c, 3*time.Second, func(views map[string]mesh.View) error {
		if v := views["c"]; v.Ready {
			return fmt.Errorf("isolated c is ready with %s", v.Block)
		}
		if v := views["d"]; v.Block != cBlock || !v.Ready {
			return fmt.Errorf("d lost %s: %s ready=%v", cBlock, v.Block, v.Ready)
		}
		return nil
	})
	c.Net.Heal()
	waitFor(t, "c notices and waits for a free block", 30*time.Second, func() error {
		v := c.Node("c").Mesh.View()
		if v.Block.IsValid() || !strings.Contains(v.Reason, "exhausted") {
			return fmt.Errorf("c: block %s reason %q", v.Block, v.Reason)
		}
		return nil
	})
	holdFor(t, c, time.Second, nil)

	// A partition longer than Lease: the cut-off owner (d) loses its
	// block to the waiting c; a, on the leader's side, keeps its own.
	aBlock := a.Mesh.View().Block
	c.Net.Partition([]netip.Addr{d.Addr.Addr()}, []netip.Addr{a.Addr.Addr(), cAddr})
	waitFor(t, "c gets d's block after Lease", 30*time.Second, func() error {
		views := c.Views()
		if err := meshtest.SharedBlock(views); err != nil {
			t.Fatal(err)
		}
		if v := views["c"]; !v.Ready || v.Block != cBlock {
			return fmt.Errorf("c: block %s ready=%v (%s)", v.Block, v.Ready, v.Reason)
		}
		return nil
	})
	c.Net.Heal()
	waitFor(t, "d is fenced and reports it", 30*time.Second, func() error {
		views := c.Views()
		if err := meshtest.SharedBlock(views); err != nil {
			t.Fatal(err)
		}
		if v := views["d"]; v.Block == cBlock || !strings.Contains(v.Degraded, cBlock.String()) {
			return fmt.Errorf("d: block %s degraded %q", v.Block, v.Degraded)
		}
		return nil
	})
	if got := a.Mesh.View().Block; got != aBlock || !a.Mesh.View().Ready {
		t.Errorf("a, on the leader's side, went from %s to %s", aBlock, got)
	}
}

// Trace 4: a member with the key advertises forged metadata (another
// node's ID, an ancient or future clock, any flags): metadata carries no
// claim, so nothing it says moves a block or a route, and the victim is
// never fenced. (Forged ledger entries need the ledger's TLS key: the
// ledger's own tests.)
func TestTrace04ForgedMetadataMovesNothing(t *testing.T) {
	key := []byte("0123456789abcdef")
	c := newCluster(t, meshtest.Options{SecretKey: key, Logger: testLogger(t)})
	a := start(t, c, meshtest.Spec{Name: "a"})
	victim := start(t, c, meshtest.Spec{Name: "victim", Join: seed(a)})
	waitConverged(t, c, 20*time.Second)
	vv := victim.Mesh.View()

	evilAddr := netip.AddrPortFrom(netip.MustParseAddr("10.9.9.9"), meshtest.GossipPort)
	tr, err := c.Net.NewTransport(evilAddr)
	if err != nil {
		t.Fatal(err)
	}
	forged := mesh.Meta{Name: "victim", HostIP: evilAddr.Addr(), Pool: mesh.DefaultPool, BlockBits: mesh.DefaultBlockBits,
		LedgerPort: meshtest.LedgerPort, ID: vv.ID, ClusterID: vv.Ledger.ClusterID, Block: vv.Block}
	raw, err := forged.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := memberlist.DefaultLANConfig()
	cfg.Name, cfg.Transport, cfg.Delegate, cfg.LogOutput = "evil", tr, &rawDelegate{meta: raw}, io.Discard
	cfg.SecretKey = key
	meshtest.FastTimers(cfg)
	evil, err := memberlist.Create(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer evil.Shutdown()
	if _, err := evil.Join([]string{a.Addr.String()}); err != nil {
		t.Fatal(err)
	}
	holdFor(t, c, 3*time.Second, func(views map[string]mesh.View) error {
		for name, v := range views {
			for _, m := range v.Members {
				if m.Name == "evil" && m.Block.IsValid() {
					return fmt.Errorf("%s routes %s to evil", name, m.Block)
				}
			}
		}
		if v := views["victim"]; v.Block != vv.Block || !v.Ready {
			return fmt.Errorf("victim: %s ready=%v, had %s", v.Block, v.Ready, vv.Block)
		}
		return nil
	})
	if n := counter(t, victim.Metrics, "grapevine_mesh_fenced_total", ""); n != 0 {
		t.Errorf("victim fenced %v times", n)
	}
}

// Trace 5: a fresh two-node start in a two-block pool: every round gives
// the two nodes the two blocks, never one twice.
func TestTrace05FreshStartTwoBlocks(t *testing.T) {
	rounds := 5
	if testing.Short() || raceEnabled {
		rounds = 3
	}
	for round := range rounds {
		c := meshtest.NewCluster(t.TempDir(), meshtest.Options{Pool: netip.MustParsePrefix("10.244.0.0/22"), Logger: testLogger(t)})
		a := start(t, c, meshtest.Spec{Name: "a"})
		start(t, c, meshtest.Spec{Name: "b", Join: seed(a)})
		waitConvergedChecked(t, c, 30*time.Second)
		if err := c.Close(); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
}

// Trace 6: a claimant whose messages to one member hang must not end up
// sharing a block. There are no votes or promises any more; a claim is a
// log entry committed by the leader's quorum. The scenario: one voter is
// cut off while a newcomer claims.
func TestTrace06SilentMemberDuringClaim(t *testing.T) {
	c := newCluster(t, meshtest.Options{Logger: testLogger(t)})
	nodes := converged5(t, c)
	minority, _ := splitByVoters(t, c, nodes)
	cut := minority[0] // a voter
	var others []netip.Addr
	for _, n := range nodes {
		if n != cut {
			others = append(others, n.Addr.Addr())
		}
	}
	c.Net.Partition([]netip.Addr{cut.Addr.Addr()}, append(others, meshtest.HostAddr(5)))
	var via *meshtest.Node
	for _, n := range nodes {
		if n != cut {
			via = n
			break
		}
	}
	start(t, c, meshtest.Spec{Name: "newcomer", Join: seed(via)})
	waitFor(t, "the newcomer gets a block", 30*time.Second, func() error {
		views := c.Views()
		if err := meshtest.SharedBlock(views); err != nil {
			t.Fatal(err)
		}
		if v := views["newcomer"]; !v.Ready {
			return fmt.Errorf("newcomer: %s", v.Reason)
		}
		return nil
	})
	c.Net.Heal()
	waitConvergedChecked(t, c, 60*time.Second)
}

// Trace 7: hours of clock skew change nothing: the leader reclaims a dead
// owner's block only after it has itself seen the owner gone for
// Lease on its monotonic clock.
func TestTrace07ClockSkewDoesNotShortenReclaim(t *testing.T) {
	// Two blocks, so a newcomer wants the dead node's block.
	// One voter, so that losing the owner leaves the ledger its quorum.
	c := newCluster(t, meshtest.Options{Pool: netip.MustParsePrefix("10.244.0.0/22"), Lease: time.Hour, Voters: 1, Logger: testLogger(t)})
	a := start(t, c, meshtest.Spec{Name: "a", Clock: meshtest.NewClock(-61 * time.Minute).Host})
	owner := start(t, c, meshtest.Spec{Name: "owner", Join: seed(a), Clock: meshtest.NewClock(2 * time.Hour).Host})
	waitConverged(t, c, 20*time.Second)
	block := owner.Mesh.View().Block
	if err := c.Kill("owner"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a sees the owner fail", 20*time.Second, func() error { return sees(a, "owner", mesh.Dead) })
	late := start(t, c, meshtest.Spec{Name: "late", Join: seed(a), Clock: meshtest.NewClock(-24 * time.Hour).Host})
	waitFor(t, "the newcomer finds the pool exhausted", 20*time.Second, reasonContains(late, "exhausted"))
	holdFor(t, c, 12*time.Second, func(views map[string]mesh.View) error {
		if v := views["late"]; v.Block == block {
			return fmt.Errorf("late took the dead owner's block %s long before Lease", block)
		}
		return nil
	})
}

// Trace 8: a second host with a live node's name (another node ID) and a
// clone of a live node's state directory (same ID) at another address are
// both refused: no block, no routes, and the original keeps everything.
func TestTrace08DuplicateNameAndClone(t *testing.T) {
	c := newCluster(t, meshtest.Options{Logger: testLogger(t)})
	a := start(t, c, meshtest.Spec{Name: "a"})
	orig := start(t, c, meshtest.Spec{Name: "ubuntu", Join: seed(a)})
	waitConverged(t, c, 20*time.Second)
	ov := orig.Mesh.View()

	// A clone of the original's state (its node ID and block.json) under a
	// new name at a new address.
	cloneDir := filepath.Join(t.TempDir(), "clone")
	if err := os.MkdirAll(cloneDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"node-id", mesh.BlockFileName} {
		b, err := os.ReadFile(filepath.Join(orig.StateDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(cloneDir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	clone := start(t, c, meshtest.Spec{Name: "ubuntu-clone", StateDir: cloneDir, Join: seed(a)})

	// A second "ubuntu" with its own state (another node ID) on another
	// host.
	second := start(t, c, meshtest.Spec{Name: "ubuntu", Key: "ubuntu-2", Join: seed(a)})

	waitFor(t, "the clone is refused", 30*time.Second, func() error {
		v := clone.Mesh.View()
		if v.Ready || v.Block.IsValid() || !strings.Contains(v.Reason, "refused by the ledger") {
			return fmt.Errorf("clone: block %s ready=%v reason %q", v.Block, v.Ready, v.Reason)
		}
		for _, m := range v.Members {
			if m.Block.IsValid() {
				return fmt.Errorf("clone routes %s to %s", m.Block, m.Name)
			}
		}
		return nil
	})
	holdFor(t, c, 3*time.Second, func(views map[string]mesh.View) error {
		if v := views["ubuntu"]; v.Block != ov.Block || !v.Ready {
			return fmt.Errorf("original: %s ready=%v, had %s", v.Block, v.Ready, ov.Block)
		}
		if v := views["ubuntu-2"]; v.Ready || v.Block.IsValid() {
			return fmt.Errorf("second ubuntu: %s ready=%v", v.Block, v.Ready)
		}
		for _, m := range views["ubuntu-2"].Members {
			if m.Block.IsValid() {
				return fmt.Errorf("second ubuntu routes %s to %s", m.Block, m.Name)
			}
		}
		return nil
	})
	t.Logf("second ubuntu: %s", second.Mesh.View().Reason)
	if n := counter(t, orig.Metrics, "grapevine_mesh_fenced_total", ""); n != 0 {
		t.Errorf("original fenced %v times", n)
	}
}

// Trace 9: churn of node names leaves nothing behind: the ledger holds
// one entry per assigned block, never more than the pool has.
func TestTrace09NameChurnStaysBounded(t *testing.T) {
	const reclaimAfter = time.Second
	c := newCluster(t, meshtest.Options{Pool: netip.MustParsePrefix("10.244.0.0/22"), Lease: reclaimAfter, Voters: 1, Logger: testLogger(t)})
	a := start(t, c, meshtest.Spec{Name: "a"})
	waitConverged(t, c, 20*time.Second)
	churn := 4
	if testing.Short() {
		churn = 2
	}
	for i := range churn {
		name := fmt.Sprintf("churn-%03d", i)
		start(t, c, meshtest.Spec{Name: name, Join: seed(a), StateDir: filepath.Join(t.TempDir(), name)})
		waitConvergedChecked(t, c, 30*time.Second)
		if err := c.Kill(name); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "a sees "+name+" fail", 20*time.Second, func() error { return sees(a, name, mesh.Dead) })
		// Freed by the release or by the leader's reclaim, which waits for
		// the same lease: then there is nothing left to release.
		waitFor(t, "a releases "+name, 20*time.Second, func() error {
			if err := a.Mesh.Release(context.Background(), name); err != nil && !errors.Is(err, ledger.ErrUnknownNode) {
				return err
			}
			return nil
		})
		if n := ledgerBlocks(a); n > 2 {
			t.Fatalf("after %d names the ledger holds %d blocks of a 2-block pool", i+1, n)
		}
	}
	waitFor(t, "only a's block left", 20*time.Second, func() error {
		if n := ledgerBlocks(a); n != 1 {
			return fmt.Errorf("ledger holds %d blocks", n)
		}
		return nil
	})
}

// ledgerBlocks is how many blocks n's ledger replica assigns, counted from
// its View: its own and its members'.
func ledgerBlocks(n *meshtest.Node) int {
	v := n.Mesh.View()
	count := 0
	if v.Block.IsValid() {
		count++
	}
	for _, m := range v.Members {
		if m.Block.IsValid() {
			count++
		}
	}
	return count
}

// Trace 10: two clusters founded separately with one key and one pool meet
// over gossip: neither starves, each keeps its blocks, each lists the
// other's members as foreign and routes none of them.
func TestTrace10TwoLedgersMeet(t *testing.T) {
	key := []byte("0123456789abcdef")
	c := newCluster(t, meshtest.Options{SecretKey: key, Logger: testLogger(t)})
	x1 := start(t, c, meshtest.Spec{Name: "x1"})
	start(t, c, meshtest.Spec{Name: "x2", Join: seed(x1)})
	y1 := start(t, c, meshtest.Spec{Name: "y1"})
	start(t, c, meshtest.Spec{Name: "y2", Join: seed(y1)})
	side := func(prefix string) map[string]mesh.View {
		out := map[string]mesh.View{}
		for n, v := range c.Views() {
			if strings.HasPrefix(n, prefix) {
				out[n] = v
			}
		}
		return out
	}
	for _, p := range []string{"x", "y"} {
		waitFor(t, "cluster "+p+" converges", 30*time.Second, func() error { return meshtest.Converged(side(p)) })
	}
	before := blocksOf(c.Views())
	x1.Mesh.AddJoinAddrs(y1.Addr.String())
	waitFor(t, "each side lists the other as foreign", 30*time.Second, func() error {
		for n, v := range c.Views() {
			if len(v.Members) != 3 {
				return fmt.Errorf("%s knows %d members", n, len(v.Members))
			}
			for _, m := range v.Members {
				if want := m.Name[0] != n[0]; m.Foreign != want {
					return fmt.Errorf("%s: %s foreign=%v", n, m.Name, m.Foreign)
				}
			}
		}
		return nil
	})
	holdForSides(t, c, 3*time.Second, func(views map[string]mesh.View) error {
		for n, v := range views {
			if !v.Ready || v.Block != before[n] {
				return fmt.Errorf("%s: block %s ready=%v, had %s", n, v.Block, v.Ready, before[n])
			}
		}
		for _, p := range []string{"x", "y"} {
			if err := meshtest.Converged(side(p)); err != nil {
				return err
			}
		}
		return nil
	})
	// Neither ledger is starved: a newcomer joining x gets a block.
	x3 := start(t, c, meshtest.Spec{Name: "x3", Join: seed(x1)})
	waitFor(t, "x3 joins x", 30*time.Second, func() error {
		if v := x3.Mesh.View(); !v.Ready || v.Ledger.ClusterID != x1.Mesh.View().Ledger.ClusterID {
			return fmt.Errorf("x3: ready=%v ledger %s (%s)", v.Ready, v.Ledger.ClusterID, v.Reason)
		}
		return nil
	})
	waitFor(t, "x converges with x3", 30*time.Second, func() error { return meshtest.Converged(side("x")) })
}

// Trace 11: gossip user messages (what vote requests were), however many
// and whatever their reply address, are ignored without stalling memberlist:
// a node joining during the flood is routed by everyone promptly.
func TestTrace11MessageFloodDoesNotStallGossip(t *testing.T) {
	c := newCluster(t, meshtest.Options{Logger: testLogger(t)})
	a := start(t, c, meshtest.Spec{Name: "a"})
	start(t, c, meshtest.Spec{Name: "b", Join: seed(a)})
	waitConverged(t, c, 20*time.Second)

	evilAddr := netip.AddrPortFrom(netip.MustParseAddr("10.9.9.9"), meshtest.GossipPort)
	tr, err := c.Net.NewTransport(evilAddr)
	if err != nil {
		t.Fatal(err)
	}
	cfg := memberlist.DefaultLANConfig()
	cfg.Name, cfg.Transport, cfg.Delegate, cfg.LogOutput = "evil", tr, &rawDelegate{meta: []byte("\x07garbage")}, io.Discard
	meshtest.FastTimers(cfg)
	evil, err := memberlist.Create(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer evil.Shutdown()
	if _, err := evil.Join([]string{a.Addr.String()}); err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() {
		// A vote request of the old protocol whose reply address
		// blackholes, and garbage, as fast as the transport takes them.
		msgs := [][]byte{{1, 2, 0, 0, 0, 0, 0, 0, 0, 1, 1, 'x', 192, 0, 2, 1, 0x1e, 0xfa}, []byte("GET / HTTP/1.1\r\n")}
		for i := 0; ctx.Err() == nil; i++ {
			for _, m := range evil.Members() {
				if m.Name != "evil" {
					evil.SendBestEffort(m, msgs[i%2])
					if i%50 == 0 {
						evil.SendReliable(m, msgs[i%2])
					}
				}
			}
			time.Sleep(time.Millisecond)
		}
	}()
	start(t, c, meshtest.Spec{Name: "late", Join: seed(a)})
	waitFor(t, "everyone routes the newcomer", 20*time.Second, func() error {
		views := c.Views()
		if err := meshtest.SharedBlock(views); err != nil {
			t.Fatal(err)
		}
		return meshtest.Converged(views)
	})
}

// holdForSides is holdFor for two ledgers on one network: blocks may repeat
// across ledgers, so the invariant is checked per side (node name prefix).
func holdForSides(t *testing.T, c *meshtest.Cluster, d time.Duration, cond func(map[string]mesh.View) error) {
	t.Helper()
	err := poll.Hold(context.Background(), "no block shared within a ledger", d, 20*time.Millisecond, func() error {
		views := c.Views()
		sides := map[byte]map[string]mesh.View{}
		for n, v := range views {
			if sides[n[0]] == nil {
				sides[n[0]] = map[string]mesh.View{}
			}
			sides[n[0]][n] = v
		}
		for _, side := range sides {
			if err := meshtest.SharedBlock(side); err != nil {
				return err
			}
		}
		return cond(views)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Lab trace 10 (issue 18): a second host under a live host's name (a cloned
// VM that kept its host name) must not cut that host off. Gossip knows
// nodes by ID, so the impostor is a second member named "c": the ledger
// refuses its claims, every node shows the conflict with both host IPs,
// and c's route never leaves c's host, neither while both are up nor after
// the impostor was cut off and came back.
func TestLabTrace10ImpostorUnderLiveName(t *testing.T) {
	c := newCluster(t, meshtest.Options{Logger: testLogger(t)})
	a := start(t, c, meshtest.Spec{Name: "a"})
	start(t, c, meshtest.Spec{Name: "b", Join: seed(a)})
	orig := start(t, c, meshtest.Spec{Name: "c", Join: seed(a)})
	waitConvergedChecked(t, c, 30*time.Second)
	rv := orig.Mesh.View()
	cBlock, cID, cIP := rv.Block, rv.ID, rv.HostIP

	impostor := start(t, c, meshtest.Spec{Name: "c", Key: "c-impostor", Join: seed(a)})
	impIP := impostor.Addr.Addr()

	// What must hold on every poll: nobody shares a block, c keeps its
	// block, no host routes it anywhere but c's host, and the impostor
	// holds and routes nothing.
	invariant := func(views map[string]mesh.View) error {
		if v := views["c"]; v.Block != cBlock || !v.Ready {
			return fmt.Errorf("c: block %s ready=%v (%s), had %s", v.Block, v.Ready, v.Reason, cBlock)
		}
		if v := views["c-impostor"]; v.Block.IsValid() || v.Ready {
			return fmt.Errorf("impostor holds %s (ready=%v)", v.Block, v.Ready)
		}
		for key, v := range views {
			for _, m := range v.Members {
				if m.HostIP == impIP && (m.Block.IsValid() || m.Held.IsValid()) {
					return fmt.Errorf("%s routes %s (held %s) to the impostor", key, m.Block, m.Held)
				}
				if m.Block == cBlock && (m.ID != cID || m.HostIP != cIP) {
					return fmt.Errorf("%s routes c's block %s to %s (ID %s)", key, cBlock, m.HostIP, m.ID)
				}
				// Not routing c at all for a moment is allowed: on a
				// starved machine gossip can call c dead, and then no one
				// routes it. Routing it anywhere else is not.
				if key != "c-impostor" && m.ID == cID && m.Block.IsValid() && (m.Block != cBlock || m.HostIP != cIP) {
					return fmt.Errorf("%s routes %s via %s to c, which holds %s at %s", key, m.Block, m.HostIP, cBlock, cIP)
				}
			}
		}
		return nil
	}
	checked := checkedBy(t, c, invariant)
	// Every node, the impostor too, shows the conflict naming both hosts.
	conflictShown := func(views map[string]mesh.View) error {
		for key, v := range views {
			if len(v.NameConflicts) != 1 || v.NameConflicts[0].Name != "c" {
				return fmt.Errorf("%s shows conflicts %+v, want one on c", key, v.NameConflicts)
			}
			var ips []netip.Addr
			for _, n := range v.NameConflicts[0].Nodes {
				ips = append(ips, n.HostIP)
			}
			if !slices.Contains(ips, cIP) || !slices.Contains(ips, impIP) || len(ips) != 2 {
				return fmt.Errorf("%s shows the conflict on c at %v, want %s and %s", key, ips, cIP, impIP)
			}
			if first := v.NameConflicts[0].Nodes[0]; key != "c-impostor" && (!first.Holder || first.ID != cID) {
				return fmt.Errorf("%s does not show c (%s) holding the name: %+v", key, cID, v.NameConflicts[0].Nodes)
			}
		}
		return nil
	}
	waitFor(t, "every node shows the conflict and the impostor is refused", 30*time.Second, checked(func(views map[string]mesh.View) error {
		if err := conflictShown(views); err != nil {
			return err
		}
		if v := views["c-impostor"]; !strings.Contains(v.Reason, "refused by the ledger") {
			return fmt.Errorf("impostor not refused yet: %s", v.Reason)
		}
		return nil
	}))
	for _, n := range c.Nodes() {
		if got := counter(t, n.Metrics, "grapevine_mesh_name_conflicts", ""); got != 1 {
			t.Errorf("%s: grapevine_mesh_name_conflicts = %v, want 1", n.Key, got)
		}
	}

	// Cut the impostor off until everyone holds it dead, then heal: this is
	// where memberlist, knowing nodes by name, used to hand c's entry over.
	others := addrs(slices.DeleteFunc(c.Nodes(), func(n *meshtest.Node) bool { return n == impostor }))
	c.Net.Partition([]netip.Addr{impIP}, others)
	waitFor(t, "a sees the impostor dead", 30*time.Second, checked(func(views map[string]mesh.View) error {
		for _, m := range views["a"].Members {
			if m.HostIP == impIP && m.State.Live() {
				return fmt.Errorf("a sees the impostor %s", m.State)
			}
		}
		if len(views["a"].NameConflicts) != 0 {
			return fmt.Errorf("a still shows conflicts %+v", views["a"].NameConflicts)
		}
		return nil
	}))
	c.Net.Heal()
	waitFor(t, "the conflict is shown again after the heal", 30*time.Second, checked(conflictShown))
	waitFor(t, "a and b route c's block to c", 30*time.Second, checked(func(views map[string]mesh.View) error {
		for _, key := range []string{"a", "b"} {
			if !slices.ContainsFunc(views[key].Members, func(m mesh.Member) bool { return m.ID == cID && m.Block == cBlock }) {
				return fmt.Errorf("%s does not route c's block %s", key, cBlock)
			}
		}
		return nil
	}))
	holdFor(t, c, 2*time.Second, invariant)
}

// Lab trace 10 (issue 18), as found: the impostor starts while c is cut
// off. c looks dead, so the ledger cannot tell the impostor from c
// reinstalled and grants it a block of its own (never c's). After the heal
// c must not be cut off: it holds its block under its name, so its
// renewals and its rejoin are not refused for the name the impostor now
// holds a block under too, every host routes c's block to c's host again,
// and every host shows the conflict.
func TestLabTrace10ImpostorDuringPartition(t *testing.T) {
	// A lease long enough to outlast the partition, short enough that c
	// renews it (a claim under its name) a few times after the heal.
	const lease = 20 * time.Second
	c := newCluster(t, meshtest.Options{Lease: lease, Logger: testLogger(t)})
	a := start(t, c, meshtest.Spec{Name: "a"})
	start(t, c, meshtest.Spec{Name: "b", Join: seed(a)})
	orig := start(t, c, meshtest.Spec{Name: "c", Join: seed(a)})
	waitConvergedChecked(t, c, 30*time.Second)
	rv := orig.Mesh.View()
	cBlock, cID, cIP := rv.Block, rv.ID, rv.HostIP

	// c's block never moves: c keeps it, and nobody routes it elsewhere.
	invariant := func(views map[string]mesh.View) error {
		if v := views["c"]; v.Block != cBlock || !v.Ready {
			return fmt.Errorf("c: block %s ready=%v (%s), had %s", v.Block, v.Ready, v.Reason, cBlock)
		}
		if v := views["c-impostor"]; v.Block == cBlock {
			return fmt.Errorf("the impostor holds c's block %s", cBlock)
		}
		for key, v := range views {
			for _, m := range v.Members {
				if m.Block == cBlock && (m.ID != cID || m.HostIP != cIP) {
					return fmt.Errorf("%s routes c's block %s to %s (ID %s)", key, cBlock, m.HostIP, m.ID)
				}
			}
		}
		return nil
	}
	checked := checkedBy(t, c, invariant)

	impIP := meshtest.HostAddr(3) // the next node's address
	c.Net.Partition([]netip.Addr{cIP}, []netip.Addr{a.Addr.Addr(), c.Node("b").Addr.Addr(), impIP})
	waitFor(t, "a sees c dead", 30*time.Second, checked(func(map[string]mesh.View) error { return sees(a, "c", mesh.Dead) }))
	impostor := start(t, c, meshtest.Spec{Name: "c", Key: "c-impostor", Join: seed(a)})
	if impostor.Addr.Addr() != impIP {
		t.Fatalf("the impostor got address %s, the partition expects %s", impostor.Addr.Addr(), impIP)
	}
	waitFor(t, "the impostor holds a block of its own", 30*time.Second, checked(func(views map[string]mesh.View) error {
		if v := views["c-impostor"]; !v.Ready {
			return fmt.Errorf("impostor: %s", v.Reason)
		}
		return nil
	}))

	c.Net.Heal()
	waitFor(t, "every host routes c to c's host and shows the conflict", 30*time.Second, checked(func(views map[string]mesh.View) error {
		for key, v := range views {
			if key == "c" || key == "c-impostor" {
				continue
			}
			i := slices.IndexFunc(v.Members, func(m mesh.Member) bool { return m.ID == cID })
			if i < 0 || v.Members[i].Block != cBlock || v.Members[i].HostIP != cIP || v.Members[i].State != mesh.Alive {
				return fmt.Errorf("%s does not route %s to c at %s: %+v", key, cBlock, cIP, v.Members)
			}
		}
		for key, v := range views {
			if len(v.NameConflicts) != 1 || len(v.NameConflicts[0].Nodes) != 2 {
				return fmt.Errorf("%s shows conflicts %+v", key, v.NameConflicts)
			}
			ips := []netip.Addr{v.NameConflicts[0].Nodes[0].HostIP, v.NameConflicts[0].Nodes[1].HostIP}
			if !slices.Contains(ips, cIP) || !slices.Contains(ips, impIP) {
				return fmt.Errorf("%s shows the conflict at %v, want %s and %s", key, ips, cIP, impIP)
			}
		}
		return nil
	}))
	holdFor(t, c, lease/2+2*time.Second, invariant)
}
