package mesh_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/mesh/meshtest"
)

// BenchmarkConverge starts clusters from empty state and reports the time
// until all nodes hold unique blocks and know each other, and the steady
// gossip traffic per node afterwards: with the test timers (fast) and with
// memberlist's LAN defaults (lan), which production runs.
func BenchmarkConverge(b *testing.B) {
	for _, timers := range []struct {
		name string
		tune func(*memberlist.Config)
		// steady covers at least one push/pull round of each node.
		steady time.Duration
	}{
		{"fast", meshtest.FastTimers, 5 * time.Second},
		{"lan", func(*memberlist.Config) {}, 35 * time.Second},
	} {
		for _, n := range []int{64, 256} {
			b.Run(fmt.Sprintf("%s/%d", timers.name, n), func(b *testing.B) {
				for b.Loop() {
					c := meshtest.NewCluster(b.TempDir(), meshtest.Options{
						// 512 blocks of /23, room for 256 nodes.
						Pool: netip.MustParsePrefix("10.244.0.0/14"),
						Tune: timers.tune,
					})
					ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
					res, err := meshtest.MeasureConvergence(ctx, c, n, timers.steady)
					cancel()
					if cerr := c.Close(); err == nil {
						err = cerr
					}
					if err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(res.Converged.Seconds(), "s-to-converge")
					b.ReportMetric(res.SteadyBytesPerNode, "B/s/node")
				}
			})
		}
	}
}

// BenchmarkJoinLatency measures, with memberlist's LAN timers, how long a
// node takes from start until every peer routes its block: a brand-new node
// (a vote) and a restarted one (its saved block, no vote).
func BenchmarkJoinLatency(b *testing.B) {
	lan := func(*memberlist.Config) {}
	routedByAll := func(c *meshtest.Cluster, name string) error {
		views := c.Views()
		want := views[name].Block
		if !want.IsValid() {
			return fmt.Errorf("%s holds no block yet", name)
		}
		for peer, v := range views {
			if peer == name {
				continue
			}
			found := false
			for _, m := range v.Members {
				found = found || (m.Name == name && m.Block == want)
			}
			if !found {
				return fmt.Errorf("%s does not route %s yet", peer, name)
			}
		}
		return nil
	}
	var fresh, restart time.Duration
	for b.Loop() {
		c := meshtest.NewCluster(b.TempDir(), meshtest.Options{Tune: lan})
		seed, err := c.Start(meshtest.Spec{Name: "h1"})
		if err != nil {
			b.Fatal(err)
		}
		join := []string{seed.Addr.String()}
		for _, name := range []string{"h2", "h3"} {
			if _, err := c.Start(meshtest.Spec{Name: name, Join: join}); err != nil {
				b.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := poll.Until(ctx, "the cluster to converge", time.Millisecond, func() error { return meshtest.Converged(c.Views()) }); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		h4, err := c.Start(meshtest.Spec{Name: "h4", Join: join})
		if err != nil {
			b.Fatal(err)
		}
		if err := poll.Until(ctx, "every node to route h4", time.Millisecond, func() error { return routedByAll(c, "h4") }); err != nil {
			b.Fatal(err)
		}
		fresh += time.Since(t0)
		if err := c.Stop("h4"); err != nil {
			b.Fatal(err)
		}
		t0 = time.Now()
		if _, err := c.Start(meshtest.Spec{Name: "h4", Addr: h4.Addr.Addr(), StateDir: h4.StateDir, Join: join}); err != nil {
			b.Fatal(err)
		}
		if err := poll.Until(ctx, "every node to route h4", time.Millisecond, func() error { return routedByAll(c, "h4") }); err != nil {
			b.Fatal(err)
		}
		restart += time.Since(t0)
		cancel()
		if err := c.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(fresh.Seconds()/float64(b.N), "s-new-node-routed")
	b.ReportMetric(restart.Seconds()/float64(b.N), "s-restart-routed")
}
