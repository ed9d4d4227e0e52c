package ledger

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// TestRecoverRefusedWhileVotersAnswer: recover on a stopped voter is
// refused, with nothing changed, while the other voters answer on their
// ledger port, and names them.
func TestRecoverRefusedWhileVotersAnswer(t *testing.T) {
	c, nodes := startCluster(t, nil, "n1", "n2", "n3")
	for _, n := range nodes {
		c.claim(n, netip.Prefix{})
	}
	before := c.converged()
	n3 := nodes[2]
	c.kill(n3)
	_, err := RecoverStores(n3.stores, n3.id, n3.addr, RefuseAnswering(context.Background(), probeDial(c, n3)))
	if !errors.Is(err, ErrVoterAnswers) {
		t.Fatalf("recover beside two live voters: %v, want ErrVoterAnswers", err)
	}
	for _, n := range nodes[:2] {
		if !strings.Contains(err.Error(), n.name+" ("+n.addr.String()+") answers on "+n.addr.String()) {
			t.Errorf("%q does not name voter %s and where it answered", err, n.name)
		}
	}
	// Nothing changed: n3 rejoins its ledger as it was.
	c.start(n3, false)
	if st := c.converged(); !equalState(st, before) {
		t.Fatalf("ledger after a refused recovery %v (%s), want %v (%s)", st.Blocks, st.ClusterID, before.Blocks, before.ClusterID)
	}
	if v := voterSet(c.leader()); !v[n3.name] {
		t.Fatalf("voters after a refused recovery %v, want %s among them", v, n3.name)
	}
}

// TestRecoverOnPartitionedVoterNeverMerges is trace 4: a voter merely cut
// off from the two others is recovered (its probes cannot reach them), and
// both sides assign blocks. The recovered ledger has a new cluster ID, so
// after the heal the two ledgers stay apart: neither replica takes the
// other's entries, and each side still assigns blocks of its own.
func TestRecoverOnPartitionedVoterNeverMerges(t *testing.T) {
	c, nodes := startCluster(t, func(cfg *Config) { cfg.Pool = pfx("10.244.0.0/20") }, "n1", "n2", "n3")
	for _, n := range nodes {
		c.claim(n, netip.Prefix{})
	}
	before := c.converged()
	n3 := nodes[2]
	c.net.Block(n3.hostIP, nodes[0].hostIP)
	c.net.Block(n3.hostIP, nodes[1].hostIP)
	c.kill(n3)
	rec, err := RecoverStores(n3.stores, n3.id, n3.addr, RefuseAnswering(context.Background(), probeDial(c, n3)))
	if err != nil {
		t.Fatalf("recover a voter whose peers cannot be reached: %v", err)
	}
	if len(rec.Voters()) != 2 {
		t.Fatalf("recovery drops voters %v, want n1 and n2", rec.Voters())
	}
	c.start(n3, false)
	waitFor(t, waitLong, "the recovered node to lead", func() bool { return n3.l.Info().Role == "leader" })

	// Each side takes a newcomer.
	oldSide, newSide := c.add("old-side"), c.add("new-side")
	c.net.Block(oldSide.hostIP, n3.hostIP)
	c.net.Block(newSide.hostIP, nodes[0].hostIP)
	c.net.Block(newSide.hostIP, nodes[1].hostIP)
	c.net.Block(oldSide.hostIP, newSide.hostIP)
	c.start(oldSide, false)
	c.start(newSide, false)
	c.join(oldSide, nodes[0], nodes[1])
	c.join(newSide, n3)
	c.claim(oldSide, netip.Prefix{})
	c.claim(newSide, netip.Prefix{})
	oldLedger := agreed(t, nodes[0], nodes[1], oldSide)
	newLedger, _ := n3.l.State()
	if oldLedger.ClusterID != before.ClusterID || newLedger.ClusterID != rec.NewClusterID {
		t.Fatalf("ledgers %s and %s, want %s and %s", oldLedger.ClusterID, newLedger.ClusterID, before.ClusterID, rec.NewClusterID)
	}

	c.net.Heal()
	// The old ledger still lists n3 as a voter: its leader dials n3 again,
	// as raft's heartbeats do, and would make n3 its follower. n3 refuses
	// those connections; once it has refused several, it must still lead
	// its own ledger with its own entries.
	foreign := func() float64 {
		return counterValue(t, n3.reg, "grapevine_ledger_rpc_rejected_total", map[string]string{"reason": "foreign-cluster"})
	}
	waitFor(t, waitLong, "n3 to refuse the old leader's raft connections", func() bool {
		if st, _ := n3.l.State(); st.ClusterID != rec.NewClusterID || st.Blocks[mustBlockOf(t, newLedger, newSide.id)].ID != newSide.id {
			t.Fatalf("the recovered replica merged into the old ledger: %s %v", st.ClusterID, st.Blocks)
		}
		if info := n3.l.Info(); info.Role != "leader" {
			t.Fatalf("the recovered node is %s and follows %q, a leader of the old ledger", info.Role, info.Leader)
		}
		return foreign() >= 3
	}, func() string { return fmt.Sprint(foreign(), " refused") })
	// Each side goes on assigning blocks of its own.
	late := c.add("late")
	c.net.Block(late.hostIP, n3.hostIP)
	c.start(late, false)
	c.join(late, nodes[0], nodes[1])
	c.claim(late, netip.Prefix{})
	if st, _ := n3.l.State(); st.ClusterID != rec.NewClusterID || !equalState(st, newLedger) {
		t.Fatalf("the recovered replica changed after the heal: %s %v, want %v", st.ClusterID, st.Blocks, newLedger.Blocks)
	}
	c.claim(newSide, netip.Prefix{})
	for _, n := range []*tnode{nodes[0], nodes[1], oldSide, late} {
		if st, _ := n.l.State(); st.ClusterID != before.ClusterID {
			t.Fatalf("%s of the old ledger has cluster %s", n.name, st.ClusterID)
		}
	}
}

// probeDial reports whether from reaches addr on the harness's network.
func probeDial(c *tcluster, from *tnode) func(context.Context, netip.AddrPort) error {
	host := c.net.Host(from.addr)
	return func(ctx context.Context, addr netip.AddrPort) error {
		conn, err := host.Dial(ctx, addr)
		if err != nil {
			return err
		}
		return conn.Close()
	}
}

func mustBlockOf(t *testing.T, st State, id NodeID) netip.Prefix {
	t.Helper()
	b, _, ok := st.BlockOf(id)
	if !ok {
		t.Fatalf("node %s holds no block", id)
	}
	return b
}

// agreed waits until the replicas of nodes are equal (whoever leads them)
// and returns that state.
func agreed(t *testing.T, nodes ...*tnode) State {
	t.Helper()
	var want State
	waitFor(t, waitLong, "replicas to agree", func() bool {
		want, _ = nodes[0].l.State()
		for _, n := range nodes[1:] {
			if st, _ := n.l.State(); !equalState(st, want) {
				return false
			}
		}
		return true
	})
	return want
}

func TestRefuseAnswering(t *testing.T) {
	a := Server{ID: idA.String(), Name: "a", Addr: netip.MustParseAddrPort("192.0.2.1:7963"), Voter: true}
	b := Server{ID: idB.String(), Addr: netip.MustParseAddrPort("192.0.2.2:7963"), Voter: true}
	gossipA := netip.MustParseAddrPort("192.0.2.1:7962")
	for _, tt := range []struct {
		name     string
		answered map[string][]netip.AddrPort
		want     []string // nil: no refusal
	}{
		{"none answers", nil, nil},
		{"an unknown ID answers", map[string][]netip.AddrPort{idC.String(): {gossipA}}, nil},
		{"a voter's gossip port", map[string][]netip.AddrPort{a.ID: {gossipA}}, []string{"voter a (192.0.2.1:7963) answers on 192.0.2.1:7962"}},
		{"both, one without a name", map[string][]netip.AddrPort{a.ID: {gossipA, a.Addr}, b.ID: {b.Addr}}, []string{
			"voter a (192.0.2.1:7963) answers on 192.0.2.1:7962 and 192.0.2.1:7963",
			"voter node " + idB.String() + " (192.0.2.2:7963) answers on 192.0.2.2:7963",
		}},
	} {
		err := refuseAnswering([]Server{a, b}, tt.answered)
		if tt.want == nil {
			if err != nil {
				t.Errorf("%s: %v, want no refusal", tt.name, err)
			}
			continue
		}
		if !errors.Is(err, ErrVoterAnswers) {
			t.Errorf("%s: %v, want ErrVoterAnswers", tt.name, err)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", tt.name, err, w)
			}
		}
	}
}
