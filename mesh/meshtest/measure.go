package meshtest

import (
	"context"
	"fmt"
	"time"

	"github.com/grapevine-net/grapevine/internal/poll"
)

// Convergence is what MeasureConvergence observed.
type Convergence struct {
	Nodes int
	// Converged is the time from starting the first node until every node
	// held a unique block and listed every other node alive with its block.
	Converged time.Duration
	// SteadyBytesPerNode is the gossip traffic (bytes per second) each node
	// sent on average during the steady window after convergence.
	SteadyBytesPerNode float64
}

// MeasureConvergence starts n nodes at once on c (all joining the first
// two; the first founds the ledger, as the agent that creates the ledger's
// record in a new Kubernetes cluster does), waits until they converge, then measures steady-state
// gossip over steady. It checks that no block is shared on every poll and
// fails on the first violation. The nodes keep running; close c afterwards.
func MeasureConvergence(ctx context.Context, c *Cluster, n int, steady time.Duration) (Convergence, error) {
	res := Convergence{Nodes: n}
	join := []string{
		fmt.Sprintf("%s:%d", HostAddr(0), GossipPort),
		fmt.Sprintf("%s:%d", HostAddr(1), GossipPort),
	}
	start := time.Now()
	for i := range n {
		if _, err := c.Start(Spec{Name: fmt.Sprintf("node-%04d", i), Join: join, Found: i == 0}); err != nil {
			return res, err
		}
	}
	var dup error
	err := poll.Until(ctx, fmt.Sprintf("%d nodes to converge", n), 20*time.Millisecond, func() error {
		views := c.Views()
		if dup = SharedBlock(views); dup != nil {
			return nil
		}
		return Converged(views)
	})
	if dup != nil {
		return res, dup
	}
	if err != nil {
		return res, err
	}
	res.Converged = time.Since(start)

	before := c.BytesSent()
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(steady):
	}
	res.SteadyBytesPerNode = float64(c.BytesSent()-before) / time.Since(t0).Seconds() / float64(n)
	return res, nil
}

// RaftRPCsSent is how many raft RPCs the node's ledger has sent so far, by
// kind, read from its grapevine_ledger_raft_rpcs_sent_total (counted at
// the ledger's transport).
func (n *Node) RaftRPCsSent() (map[string]float64, error) {
	families, err := n.Metrics.Gather()
	if err != nil {
		return nil, fmt.Errorf("metrics of %s: %w", n.Name, err)
	}
	out := make(map[string]float64)
	for _, f := range families {
		if f.GetName() != "grapevine_ledger_raft_rpcs_sent_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "kind" {
					out[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	return out, nil
}
