package mesh_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/meshtest"
)

// testLogger shows warnings and errors of the nodes with the test's output.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(untilFailed{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// untilFailed writes to the test's output until the test fails: the
// cluster's teardown logs hundreds of lines after a failure, and a CI log
// cut in the middle must still end with the failure's message.
type untilFailed struct{ t testing.TB }

func (u untilFailed) Write(p []byte) (int, error) {
	if u.t.Failed() {
		return len(p), nil
	}
	return u.t.Output().Write(p)
}

// seed is the join address of a node.
func seed(n *meshtest.Node) []string { return []string{n.Addr.String()} }

func newCluster(t *testing.T, opts meshtest.Options) *meshtest.Cluster {
	t.Helper()
	c := meshtest.NewCluster(t.TempDir(), opts)
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("stop cluster: %v", err)
		}
	})
	return c
}

func waitConverged(t *testing.T, c *meshtest.Cluster, within time.Duration) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	start := time.Now()
	if err := poll.Until(ctx, "the cluster to converge", 10*time.Millisecond, func() error { return meshtest.Converged(c.Views()) }); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

func TestThreeNodesConverge(t *testing.T) {
	c := newCluster(t, meshtest.Options{})
	first, err := c.Start(meshtest.Spec{Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"b", "c"} {
		if _, err := c.Start(meshtest.Spec{Name: name, Join: seed(first)}); err != nil {
			t.Fatal(err)
		}
	}
	d := waitConverged(t, c, 10*time.Second)
	t.Logf("converged in %v", d)
	for name, v := range c.Views() {
		if !mesh.DefaultPool.Contains(v.Block.Addr()) || v.Block.Bits() != mesh.DefaultBlockBits {
			t.Errorf("%s holds %s, not a /23 of the default pool", name, v.Block)
		}
		if n := counter(t, c.Node(name).Metrics, "grapevine_mesh_members", "alive"); n != 2 {
			t.Errorf("%s: members{state=alive} = %v, want 2", name, n)
		}
		if n := counter(t, c.Node(name).Metrics, "grapevine_mesh_claims_total", "succeeded"); n != 1 {
			t.Errorf("%s: claims_total{result=succeeded} = %v, want 1", name, n)
		}
		if v.HostIP != c.Node(name).Addr.Addr() {
			t.Errorf("%s reports host IP %s, want %s", name, v.HostIP, c.Node(name).Addr.Addr())
		}
	}
	// One ledger, founded by a (no seeds), with every node a voter.
	waitFor(t, "three voters under one leader", 20*time.Second, func() error {
		views := c.Views()
		cluster := views["a"].Ledger.ClusterID
		for name, v := range views {
			if v.Ledger.ClusterID != cluster || cluster.IsZero() {
				return fmt.Errorf("%s is in ledger %s, a in %s", name, v.Ledger.ClusterID, cluster)
			}
			if v.Ledger.Leader == "" || len(v.Ledger.Voters) != 3 {
				return fmt.Errorf("%s: leader %q voters %v", name, v.Ledger.Leader, v.Ledger.Voters)
			}
		}
		return nil
	})
}

// TestUniqueBlocksSimultaneousStart starts 64 nodes at the same instant from
// empty state, the first founding the ledger, and samples every View while
// they converge: no block may ever be used by two nodes.
func TestUniqueBlocksSimultaneousStart(t *testing.T) {
	rounds, size := 3, 64
	if testing.Short() {
		rounds = 1
	}
	if raceEnabled {
		rounds, size = 3, 16
	}
	for round := range rounds {
		c := meshtest.NewCluster(t.TempDir(), meshtest.Options{Logger: testLogger(t)})
		// Every node joins the same two seeds; the seeds start with the rest.
		join := []string{
			fmt.Sprintf("%s:%d", meshtest.HostAddr(0), meshtest.GossipPort),
			fmt.Sprintf("%s:%d", meshtest.HostAddr(1), meshtest.GossipPort),
		}
		start := time.Now()
		for i := range size {
			if _, err := c.Start(meshtest.Spec{Name: fmt.Sprintf("node-%03d", i), Join: join, Found: i == 0}); err != nil {
				t.Fatal(err)
			}
		}
		// A generous bound: 64 nodes share the test's cores, and on a loaded
		// 2-core machine a round has taken over 30 s.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		t0 := time.Now()
		err := poll.Until(ctx, fmt.Sprintf("round %d: %d nodes to converge", round, size), 10*time.Millisecond, func() error {
			views := c.Views()
			if err := meshtest.SharedBlock(views); err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			return meshtest.Converged(views)
		})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: %d nodes converged in %v (%v since the first start)", round, size, time.Since(t0).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
