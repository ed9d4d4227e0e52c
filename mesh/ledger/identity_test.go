package ledger

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

func TestIdentityConflictsRefusedByLeader(t *testing.T) {
	c, nodes := startCluster(t, nil, "n1", "n2", "n3")
	orig := nodes[2]
	block := c.claim(orig, netip.Prefix{})
	c.converged()

	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()

	// A second host named like a live node, with its own ID.
	twin := c.add("n3")
	c.start(twin, false)
	if err := definite(t, func() error { return twin.l.RequestJoin(ctx, ClusterID{}, []netip.AddrPort{nodes[0].addr}) }); !errors.Is(err, ErrIdentity) {
		t.Fatalf("join of a second live %q: %v, want ErrIdentity", orig.name, err)
	}
	// Not a member, it cannot claim through the log; a claim RPC sent to a
	// member (forwarded to the leader) is refused too.
	claimVia := func(n *tnode) error {
		_, err := n.l.call(ctx, nodes[0].addr, rpcRequest{Op: "claim", Claim: &Claim{ID: n.id, Name: n.name, HostIP: n.hostIP}})
		return err
	}
	if err := definite(t, func() error { return claimVia(twin) }); !errors.Is(err, ErrIdentity) {
		t.Fatalf("claim by a second live %q: %v, want ErrIdentity", orig.name, err)
	}

	// A copied state dir: the same ID at another host IP while the
	// original is alive.
	clone := c.add("n3-clone")
	clone.id = orig.id
	c.start(clone, false)
	if err := definite(t, func() error { return clone.l.RequestJoin(ctx, ClusterID{}, []netip.AddrPort{nodes[0].addr}) }); !errors.Is(err, ErrIdentity) {
		t.Fatalf("join by a clone of %s at another address: %v, want ErrIdentity", orig.name, err)
	}
	if err := definite(t, func() error { return claimVia(clone) }); !errors.Is(err, ErrIdentity) {
		t.Fatalf("claim by a clone of %s at another host IP: %v, want ErrIdentity", orig.name, err)
	}
	lead := c.leader()
	if got := counterValue(t, lead.reg, "grapevine_ledger_rpc_rejected_total", map[string]string{"reason": "identity"}); got < 1 {
		t.Fatalf("identity refusals counted on the leader: %v", got)
	}
	st := c.converged(nodes...)
	if o := st.Blocks[block]; o.ID != orig.id || o.HostIP != orig.hostIP || o.Name != orig.name {
		t.Fatalf("the original lost its record: %+v", o)
	}
	if len(st.Blocks) != 1 {
		t.Fatalf("impostors got blocks: %v", st.Blocks)
	}

	// Once the original is dead, the same name on a new ID is accepted
	// (a reinstalled host); the old block stays reserved for reclaim.
	c.kill(orig)
	c.kill(clone)
	var b netip.Prefix
	var err error
	c.join(twin, nodes[0])
	waitFor(t, waitLong, "the twin's claim accepted once the original is dead", func() bool {
		var g Grant
		g, err = twin.l.Claim(ctx, netip.Prefix{}, twin.hostIP)
		b = g.Block
		return err == nil
	}, func() string { return err.Error() })
	if b == block {
		t.Fatal("the twin got the dead original's block before reclaim")
	}
}

// definite retries f while it fails for want of a leader (an election on
// a loaded machine) and returns its first definite answer.
func definite(t testing.TB, f func() error) error {
	t.Helper()
	var err error
	waitFor(t, waitLong, "a definite answer from the leader", func() bool {
		err = f()
		return !errors.Is(err, ErrNoLeader)
	}, func() string { return fmt.Sprint(err) })
	return err
}
