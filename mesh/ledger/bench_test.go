package ledger

import (
	"context"
	"fmt"
	"testing"
)

// BenchmarkStateApplyClaim: one claim applied to a state of 1,000 owners
// in a pool of 4,096 blocks (what every replica does per entry).
func BenchmarkStateApplyClaim(b *testing.B) {
	s := State{}
	s.Apply(1, Found{ClusterID: cluster1, Pool: pfx("10.0.0.0/8"), BlockBits: 20})
	for i := range 1000 {
		s.Apply(uint64(i+2), Claim{ID: NodeID{byte(i >> 8), byte(i), 1}, Name: fmt.Sprint("n", i), HostIP: ipA})
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		id := NodeID{byte(i >> 16), byte(i >> 8), byte(i), 2}
		r := s.Apply(uint64(i+2000), Claim{ID: id, Name: "x", HostIP: ipA})
		s.Apply(uint64(i+2001), Release{Block: r.Block, OwnerID: id})
	}
}

// BenchmarkClaimCommitted: a claim from a non-voter, forwarded to the
// leader and committed, in a 4-node ledger over the test network with TLS.
func BenchmarkClaimCommitted(b *testing.B) {
	c, nodes := startCluster(b, nil, "n1", "n2", "n3", "n4")
	lead := c.leader()
	var from *tnode
	for _, n := range nodes {
		if !voterSet(lead)[n.name] {
			from = n
		}
	}
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		// a new claimant each time: a new entry every iteration
		req := rpcRequest{Op: "claim", Claim: &Claim{ID: NodeID{byte(i >> 8), byte(i), 3}, Name: fmt.Sprint("b", i), HostIP: ipA}}
		resp, err := from.l.toLeader(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		rel := rpcRequest{Op: "release", Release: &releaseRequest{Name: fmt.Sprint("b", i)}}
		if _, err := from.l.toLeader(ctx, rel); err != nil {
			b.Fatal(err, resp.Block)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(2*b.N), "µs/commit")
}
