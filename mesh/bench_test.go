package mesh_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

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
