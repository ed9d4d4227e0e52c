package mesh_test

import (
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/meshtest"
)

// TestRestartedNodeLeavesGracefully: a node restarted with its state and
// stopped again is seen as left, not failed, at once instead of after
// failure detection.
func TestRestartedNodeLeavesGracefully(t *testing.T) {
	c := newCluster(t, meshtest.Options{Logger: testLogger(t)})
	a := start(t, c, meshtest.Spec{Name: "a"})
	b := start(t, c, meshtest.Spec{Name: "b", Join: seed(a)})
	waitConverged(t, c, 20*time.Second)
	for round := range 3 {
		if err := c.Stop("b"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "a sees b leave", 10*time.Second, func() error { return sees(a, "b", mesh.Left) })
		b = start(t, c, meshtest.Spec{Name: "b", Addr: b.Addr.Addr(), StateDir: b.StateDir, Join: seed(a)})
		waitConverged(t, c, 20*time.Second)
		t.Logf("round %d: b back", round)
	}
}
