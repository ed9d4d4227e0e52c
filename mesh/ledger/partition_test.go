package ledger

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"
)

// The ledger-level form of the minority-quorum trace: a partition with the
// leader on the minority side. The minority cannot assign anything, the
// majority elects a leader and goes on, and after healing every replica
// agrees with no block held twice.
func TestPartitionMinorityCannotAssign(t *testing.T) {
	const reclaimAfter = 2 * time.Second
	c, nodes := startCluster(t, func(cfg *Config) {
		cfg.Lease = reclaimAfter
		cfg.Pool, cfg.BlockBits = pfx("10.244.0.0/20"), 24
	}, "n1", "n2", "n3", "n4", "n5")
	for _, n := range nodes {
		c.claim(n, netip.Prefix{})
	}
	c.converged()
	old := c.leader()
	// minority: the leader and one non-voter; majority: the other voters
	minority := []*tnode{old}
	for _, n := range nodes {
		if n != old && !voterSet(old)[n.name] {
			minority = append(minority, n)
			break
		}
	}
	inMinority := func(n *tnode) bool { return n == minority[0] || n == minority[1] }
	for _, a := range nodes {
		for _, b := range nodes {
			if inMinority(a) && !inMinority(b) {
				c.net.Block(a.hostIP, b.hostIP)
			}
		}
	}
	// Newcomers join on each side, as in the trace; only the majority's
	// can be accepted and get a block.
	newMin, newMaj := c.add("new-minority"), c.add("new-majority")
	for _, n := range nodes {
		if inMinority(n) {
			c.net.Block(newMaj.hostIP, n.hostIP)
		} else {
			c.net.Block(newMin.hostIP, n.hostIP)
		}
	}
	c.net.Block(newMin.hostIP, newMaj.hostIP)
	c.start(newMin, false)
	c.start(newMaj, false)

	var majority []*tnode
	for _, n := range nodes {
		if !inMinority(n) {
			majority = append(majority, n)
		}
	}
	waitFor(t, waitLong, "a leader on the majority side", func() bool {
		for _, n := range majority {
			if n.l.Info().Role == "leader" {
				return true
			}
		}
		return false
	})
	c.join(newMaj, majority[0])
	majBlock := c.claim(newMaj, netip.Prefix{})

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := newMin.l.RequestJoin(ctx, ClusterID{}, []netip.AddrPort{minority[0].addr, minority[1].addr}); !errors.Is(err, ErrNoLeader) {
		t.Fatalf("join on the minority side: %v, want ErrNoLeader", err)
	}
	for _, n := range minority {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err := n.l.Claim(ctx, netip.Prefix{}, n.hostIP)
		cancel()
		if !errors.Is(err, ErrNoLeader) {
			t.Fatalf("claim on the minority side by %s: %v, want ErrNoLeader", n.name, err)
		}
	}
	c.net.Heal()
	c.join(newMin, majority[0])
	minBlock := c.claim(newMin, netip.Prefix{})
	if minBlock == majBlock {
		t.Fatalf("both newcomers hold %s", minBlock)
	}
	st := c.converged()
	checkInvariants(t, &st)
	if len(st.Blocks) != len(nodes)+2 {
		t.Fatalf("%d blocks held, want %d: %v", len(st.Blocks), len(nodes)+2, st.Blocks)
	}
	// The old minority renews again through the majority's leader.
	for _, n := range minority {
		if b := c.claim(n, netip.Prefix{}); st.Blocks[b].ID != n.id {
			t.Errorf("%s renewed %s, which the ledger assigns to %s", n.name, b, st.Blocks[b].Name)
		}
	}
}

func TestMetricsReportLeaderIndexAndApplies(t *testing.T) {
	c, nodes := startCluster(t, nil, "n1", "n2", "n3")
	c.claim(nodes[1], netip.Prefix{})
	c.converged()
	waitFor(t, waitLong, "the leader gauge on the leader only", func() bool {
		lead := c.leader()
		for _, n := range nodes {
			want := 0.0
			if n == lead {
				want = 1
			}
			if gaugeValue(t, n, "grapevine_ledger_leader") != want {
				return false
			}
		}
		return true
	})
	for _, n := range nodes {
		if got := gaugeValue(t, n, "grapevine_ledger_last_index"); got < 3 {
			t.Errorf("%s: last index %v", n.name, got)
		}
		waitFor(t, waitLong, n.name+" to count the applied entries", func() bool {
			return counterValue(t, n.reg, "grapevine_ledger_applies_total", map[string]string{"op": "found", "result": "ok"}) == 1 &&
				counterValue(t, n.reg, "grapevine_ledger_applies_total", map[string]string{"op": "claim", "result": "ok"}) == 1
		})
	}
}

func gaugeValue(t *testing.T, n *tnode, name string) float64 {
	t.Helper()
	mfs, err := n.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("%s: no gauge %s", n.name, name)
	return 0
}

// A member that comes back at another address (new host IP, same state):
// autopilot points raft at the new address and it replicates again.
func TestMemberAddressChangeFollowed(t *testing.T) {
	c, nodes := startCluster(t, nil, "n1", "n2", "n3", "n4")
	n := nodes[3]
	c.kill(n)
	c.mu.Lock()
	n.addr = netip.AddrPortFrom(netip.MustParseAddr("10.0.1.4"), DefaultPort)
	n.hostIP = n.addr.Addr()
	c.mu.Unlock()
	c.start(n, false)
	block := c.claim(n, netip.Prefix{})
	st := c.converged()
	if o := st.Blocks[block]; o.ID != n.id || o.HostIP != n.hostIP {
		t.Fatalf("ledger has %+v for the moved node", o)
	}
}
