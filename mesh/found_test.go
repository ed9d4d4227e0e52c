package mesh_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/ledger"
	"github.com/grapevine-net/grapevine/mesh/meshtest"
)

// identicalSpecs are n nodes configured alike, as bare-metal hosts with
// --bootstrap-expect expect: every host lists every host with --join.
func identicalSpecs(n, expect int) []meshtest.Spec {
	var join []string
	for i := range n {
		join = append(join, netip.AddrPortFrom(meshtest.HostAddr(i), meshtest.GossipPort).String())
	}
	specs := make([]meshtest.Spec, n)
	for i := range n {
		specs[i] = meshtest.Spec{Name: fmt.Sprintf("n%d", i+1), Addr: meshtest.HostAddr(i), Join: join, BootstrapExpect: expect}
	}
	return specs
}

// oneLedger checks that every node holds the same ledger and is ready, and
// returns it.
func oneLedger(nodes []*meshtest.Node) (ledger.ClusterID, error) {
	var first ledger.ClusterID
	for i, n := range nodes {
		v := n.Mesh.View()
		switch {
		case v.Ledger.ClusterID.IsZero():
			return first, fmt.Errorf("%s holds no ledger: %s", n.Name, v.Reason)
		case i > 0 && v.Ledger.ClusterID != first:
			return first, fmt.Errorf("%s holds ledger %s, %s holds %s", n.Name, v.Ledger.ClusterID, nodes[0].Name, first)
		case !v.Ready:
			return first, fmt.Errorf("%s is not ready: %s", n.Name, v.Reason)
		}
		first = v.Ledger.ClusterID
	}
	return first, nil
}

// TestBootstrapExpectFormsOneLedger: three agents started at once with the
// same configuration (--bootstrap-expect 3, each joining all three) form
// exactly one ledger, whose first configuration already has the three
// voters: no node ever shows the ledger with fewer.
func TestBootstrapExpectFormsOneLedger(t *testing.T) {
	c := meshtest.NewCluster(t.TempDir(), meshtest.Options{})
	defer c.Close()
	var nodes []*meshtest.Node
	for _, spec := range identicalSpecs(3, 3) {
		nodes = append(nodes, start(t, c, spec))
	}
	// Until every node holds the ledger, any node that knows it must
	// already count three voters (founding alone and promoting later would
	// show one voter first: autopilot waits a second before promoting).
	waitFor(t, "one ledger on all three", 30*time.Second, func() error {
		for _, n := range nodes {
			if info := n.Mesh.View().Ledger; !info.ClusterID.IsZero() && len(info.Voters) != 3 {
				t.Fatalf("%s holds ledger %s with voters %v, want all three from the start", n.Name, info.ClusterID, info.Voters)
			}
		}
		_, err := oneLedger(nodes)
		return err
	})
	waitFor(t, "every node to route the others", 30*time.Second, func() error { return meshtest.Converged(c.Views()) })
}

// TestBootstrapExpectTwoOfThreeFormNothing: two of three agents expecting
// three found nothing and say what they wait for; the third one, once
// started, completes one ledger of three voters.
func TestBootstrapExpectTwoOfThreeFormNothing(t *testing.T) {
	c := meshtest.NewCluster(t.TempDir(), meshtest.Options{})
	defer c.Close()
	specs := identicalSpecs(3, 3)
	n1, n2 := start(t, c, specs[0]), start(t, c, specs[1])
	for _, n := range []*meshtest.Node{n1, n2} {
		waitFor(t, n.Name+" to wait for a third founder", 30*time.Second,
			reasonContains(n, "waiting for 3 agents with --bootstrap-expect 3 to meet before founding the ledger; 2 so far: "))
	}
	// Long enough to found alone and claim a block many times over.
	err := poll.Hold(context.Background(), "no ledger with two of three founders", 3*time.Second, 20*time.Millisecond, func() error {
		for _, n := range []*meshtest.Node{n1, n2} {
			if v := n.Mesh.View(); !v.Ledger.ClusterID.IsZero() || v.Ready {
				return fmt.Errorf("%s holds ledger %s (ready %v)", n.Name, v.Ledger.ClusterID, v.Ready)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	n3 := start(t, c, specs[2])
	nodes := []*meshtest.Node{n1, n2, n3}
	waitFor(t, "one ledger once the third founder came", 30*time.Second, func() error {
		_, err := oneLedger(nodes)
		return err
	})
	if v := n1.Mesh.View().Ledger.Voters; len(v) != 3 {
		t.Errorf("voters %v, want the three founders", v)
	}
}

// TestBootstrapExpectJoinsExistingLedger: an agent with --bootstrap-expect
// that reaches a ledger (its state dir lost, or a host added later with
// the same configuration) joins it and founds nothing.
func TestBootstrapExpectJoinsExistingLedger(t *testing.T) {
	c := meshtest.NewCluster(t.TempDir(), meshtest.Options{})
	defer c.Close()
	specs := identicalSpecs(4, 3)
	var nodes []*meshtest.Node
	for _, spec := range specs[:3] {
		nodes = append(nodes, start(t, c, spec))
	}
	cluster := ledger.ClusterID{}
	waitFor(t, "one ledger", 30*time.Second, func() (err error) { cluster, err = oneLedger(nodes); return err })
	nodes = append(nodes, start(t, c, specs[3]))
	waitFor(t, "the fourth to join it", 30*time.Second, func() error {
		got, err := oneLedger(nodes)
		if err == nil && got != cluster {
			t.Fatalf("ledger %s after the fourth came, was %s", got, cluster)
		}
		return err
	})
}

// TestForeignLedgerStopsUntilReset: a node whose ledger state belongs to
// another ledger than its peers' (here: one it founded alone, then met the
// cluster) hands out no addresses and says why; after `grapevine ledger
// reset` on its state dir it joins the cluster's ledger.
func TestForeignLedgerStopsUntilReset(t *testing.T) {
	c := meshtest.NewCluster(t.TempDir(), meshtest.Options{})
	defer c.Close()
	a := start(t, c, meshtest.Spec{Name: "a"})
	b := start(t, c, meshtest.Spec{Name: "b", Join: []string{a.Addr.String()}})
	d := start(t, c, meshtest.Spec{Name: "d", Join: []string{a.Addr.String()}})
	cluster := ledger.ClusterID{}
	waitFor(t, "one ledger of three", 30*time.Second, func() (err error) {
		cluster, err = oneLedger([]*meshtest.Node{a, b, d})
		return err
	})
	x := start(t, c, meshtest.Spec{Name: "x"}) // founds its own
	waitFor(t, "x to found its own ledger", 30*time.Second, func() error {
		if v := x.Mesh.View(); !v.Ready {
			return errors.New("x not ready: " + v.Reason)
		}
		return nil
	})
	x.Mesh.AddJoinAddrs(a.Addr.String())
	waitFor(t, "x to stop handing out addresses", 30*time.Second,
		reasonContains(x, "this node's ledger state belongs to ledger "+x.Mesh.View().Ledger.ClusterID.String()+" but its peers hold ledger "+cluster.String()))
	if got := counter(t, x.Metrics, "grapevine_mesh_foreign_ledger", ""); got != 1 {
		t.Errorf("grapevine_mesh_foreign_ledger = %v on x, want 1", got)
	}
	for _, n := range []*meshtest.Node{a, b, d} {
		if v := n.Mesh.View(); !v.Ready {
			t.Errorf("%s, of the cluster's ledger, is not ready: %s", n.Name, v.Reason)
		}
	}

	if err := c.Stop("x"); err != nil {
		t.Fatal(err)
	}
	if err := c.ResetLedger(x.StateDir); err != nil {
		t.Fatal(err)
	}
	x = start(t, c, meshtest.Spec{Name: "x", Addr: x.Addr.Addr(), Join: []string{a.Addr.String()}})
	waitFor(t, "x to join the cluster's ledger after the reset", 30*time.Second, func() error {
		_, err := oneLedger([]*meshtest.Node{a, b, d, x})
		return err
	})
	waitFor(t, "every node to route the others", 30*time.Second, func() error { return meshtest.Converged(c.Views()) })
}

// TestRecordFoundsOnce is trace 3 of issue 18 on the mesh: a cluster
// founded before the ledger's record existed records its ledger when its
// agents restart with a record; a node whose state directory was lost,
// started with the record while its seeds are silent, founds no second
// ledger, says which one it waits for, and joins it once they answer.
func TestRecordFoundsOnce(t *testing.T) {
	c := meshtest.NewCluster(t.TempDir(), meshtest.Options{})
	defer c.Close()
	a := start(t, c, meshtest.Spec{Name: "a"})
	join := []string{a.Addr.String()}
	b := start(t, c, meshtest.Spec{Name: "b", Join: join})
	cluster := ledger.ClusterID{}
	waitFor(t, "one ledger", 30*time.Second, func() (err error) { cluster, err = oneLedger([]*meshtest.Node{a, b}); return err })

	// Restarted with the record (an upgrade): the ledger gets recorded.
	rec := &meshtest.Record{}
	for _, n := range []*meshtest.Node{a, b} {
		if err := c.Stop(n.Name); err != nil {
			t.Fatal(err)
		}
	}
	a = start(t, c, meshtest.Spec{Name: "a", Addr: a.Addr.Addr(), Join: []string{b.Addr.String()}, LedgerRecord: rec})
	b = start(t, c, meshtest.Spec{Name: "b", Addr: b.Addr.Addr(), Join: join, LedgerRecord: rec})
	waitFor(t, "the running ledger to be recorded", 30*time.Second, func() error {
		got, ok, _ := rec.Get()
		if !ok || got.ClusterID != cluster {
			return fmt.Errorf("recorded %+v (%v), want %s", got, ok, cluster)
		}
		_, err := oneLedger([]*meshtest.Node{a, b})
		return err
	})

	// A third node with an empty state dir, cut off from a and b.
	addr := meshtest.HostAddr(9)
	c.Net.Partition([]netip.Addr{addr}, []netip.Addr{a.Addr.Addr(), b.Addr.Addr()})
	d := start(t, c, meshtest.Spec{Name: "d", Addr: addr, Join: join, LedgerRecord: rec})
	waitFor(t, "d to wait for the recorded ledger", 30*time.Second, reasonContains(d, cluster.String()))
	err := poll.Hold(context.Background(), "d, cut off with an empty state dir, holding no ledger", 3*time.Second, 20*time.Millisecond, func() error {
		if v := d.Mesh.View(); !v.Ledger.ClusterID.IsZero() || v.Ready {
			return fmt.Errorf("d holds ledger %s (ready %v)", v.Ledger.ClusterID, v.Ready)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// a and b may still ask as they settle; d must not poll.
	creates := rec.CreatesBy("d")
	c.Net.Heal()
	waitFor(t, "d to join the recorded ledger", 30*time.Second, func() error {
		got, err := oneLedger([]*meshtest.Node{a, b, d})
		if err == nil && got != cluster {
			t.Fatalf("ledger %s, recorded %s", got, cluster)
		}
		return err
	})
	if n := rec.CreatesBy("d"); n != creates {
		t.Errorf("%d more creates by d after it read the record: it polls", n-creates)
	}
}

// recordSpecs are n nodes founding through one ledger record, as agents
// with --join-kubernetes whose API lists every host at start.
func recordSpecs(n int, rec *meshtest.Record) []meshtest.Spec {
	specs := identicalSpecs(n, 0)
	for i := range specs {
		specs[i].LedgerRecord = rec
	}
	return specs
}

// votersFromTheStart fails the test at once if a node holds a ledger whose
// voters are not want: founders listed in the record found it with all of
// them, so no node ever sees it with fewer.
func votersFromTheStart(t *testing.T, nodes []*meshtest.Node, want int) {
	t.Helper()
	for _, n := range nodes {
		if info := n.Mesh.View().Ledger; !info.ClusterID.IsZero() && len(info.Voters) != want {
			t.Fatalf("%s holds ledger %s with voters %v, want %d from the start", n.Name, info.ClusterID, info.Voters, want)
		}
	}
}

// TestRecordFoundsWithItsVoters: three agents with one record started at
// once form exactly one ledger, whose first configuration has the three
// as voters (the record lists them); an agent started once the record
// exists is not listed and joins that ledger as a non-voter.
func TestRecordFoundsWithItsVoters(t *testing.T) {
	c := meshtest.NewCluster(t.TempDir(), meshtest.Options{})
	defer c.Close()
	rec := &meshtest.Record{}
	var nodes []*meshtest.Node
	for _, spec := range recordSpecs(3, rec) {
		nodes = append(nodes, start(t, c, spec))
	}
	cluster := ledger.ClusterID{}
	waitFor(t, "one ledger on all three", 30*time.Second, func() (err error) {
		votersFromTheStart(t, nodes, 3)
		cluster, err = oneLedger(nodes)
		return err
	})
	got, ok, _ := rec.Get()
	if !ok || got.ClusterID != cluster || len(got.Founders) != 3 {
		t.Fatalf("recorded %+v (%v), want ledger %s with three founders", got, ok, cluster)
	}

	late := start(t, c, meshtest.Spec{Name: "late", Addr: meshtest.HostAddr(len(nodes)), Join: []string{nodes[0].Addr.String()}, LedgerRecord: rec})
	waitFor(t, "the late agent to join as a non-voter", 30*time.Second, func() error {
		votersFromTheStart(t, nodes, 3)
		got, err := oneLedger(append(nodes, late))
		if err == nil && got != cluster {
			t.Fatalf("ledger %s after the late agent came, was %s", got, cluster)
		}
		if role := late.Mesh.View().Ledger.Role; err == nil && role != "nonvoter" {
			return fmt.Errorf("late agent's role %q, want nonvoter", role)
		}
		return err
	})
	if after, _, _ := rec.Get(); after.ClusterID != got.ClusterID || len(after.Founders) != 3 {
		t.Errorf("record became %+v after the late agent came, was %+v", after, got)
	}
}

// TestRecordYoungLedgerSurvivesPartition is issue 18's young-cluster
// hazard: five agents found a ledger through one record and are split
// {2} | {3} the moment the ledger forms, the record's creator on the side
// of two. Founded alone, the creator's appended promotions would not have
// reached the others and neither side would elect a leader; founded with
// all five as voters, the side of three elects one and a newcomer there
// gets a block, while no block is ever shared.
func TestRecordYoungLedgerSurvivesPartition(t *testing.T) {
	c := meshtest.NewCluster(t.TempDir(), meshtest.Options{})
	defer c.Close()
	rec := &meshtest.Record{}
	var nodes []*meshtest.Node
	for _, spec := range recordSpecs(5, rec) {
		nodes = append(nodes, start(t, c, spec))
	}
	waitFor(t, "a ledger to form", 30*time.Second, func() error {
		for _, n := range nodes {
			if !n.Mesh.View().Ledger.ClusterID.IsZero() {
				return nil
			}
		}
		return errors.New("no node holds a ledger yet")
	})
	got, _, _ := rec.Get()
	listed := func(n *meshtest.Node) bool {
		return slices.ContainsFunc(got.Founders, func(f ledger.Founder) bool { return f.Addr.Addr() == n.Addr.Addr() })
	}
	// The side of two: the creator and an agent it did not list; the
	// side of three: the other listed founders, a quorum of the first
	// voters, and the rest.
	var two, three []*meshtest.Node
	unlisted := slices.IndexFunc(nodes, func(n *meshtest.Node) bool { return !listed(n) })
	for i, n := range nodes {
		if n.Name == got.Founder || i == unlisted {
			two = append(two, n)
		} else {
			three = append(three, n)
		}
	}
	// The newcomer's address (the next one) is on the side of three.
	newcomerAddr := meshtest.HostAddr(len(nodes))
	addrs := func(ns []*meshtest.Node) (out []netip.Addr) {
		for _, n := range ns {
			out = append(out, n.Addr.Addr())
		}
		return out
	}
	c.Net.Partition(addrs(two), append(addrs(three), newcomerAddr))
	if len(got.Founders) != mesh.DefaultVoters || len(two) != 2 || listed(two[0]) && listed(two[1]) {
		t.Fatalf("the record lists %d founders, want %d: %+v; split %d | %d", len(got.Founders), mesh.DefaultVoters, got, len(two), len(three))
	}

	check := checkedBy(t, c, func(map[string]mesh.View) error { return nil })
	waitFor(t, "a leader on the side of three", 30*time.Second, check(func(views map[string]mesh.View) error {
		for _, n := range three {
			if views[n.Name].Ledger.Role == "leader" {
				return nil
			}
		}
		return fmt.Errorf("no leader among %s, %s, %s", three[0].Name, three[1].Name, three[2].Name)
	}))
	newcomer := start(t, c, meshtest.Spec{Name: "newcomer", Addr: newcomerAddr, Join: []string{three[0].Addr.String()}, LedgerRecord: rec})
	waitFor(t, "the newcomer on the side of three to get a block", 30*time.Second, check(func(views map[string]mesh.View) error {
		if v := views[newcomer.Name]; !v.Ready || !v.Block.IsValid() {
			return fmt.Errorf("newcomer: %s", v.Reason)
		}
		return nil
	}))
}
