package mesh_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/ledger"
	"github.com/grapevine-net/grapevine/mesh/meshtest"
)

// TestPing: a member's agent answers a direct gossip ping while it can be
// reached, and not once it is cut off; a node ID that is no member gets an
// error, not a ping.
func TestPing(t *testing.T) {
	c := meshtest.NewCluster(t.TempDir(), meshtest.Options{})
	defer c.Close()
	a := start(t, c, meshtest.Spec{Name: "a"})
	b := start(t, c, meshtest.Spec{Name: "b", Join: []string{a.Addr.String()}})
	var id ledger.NodeID
	waitFor(t, "a to see b", 30*time.Second, func() error {
		for _, m := range a.Mesh.View().Members {
			if m.Name == "b" && m.State == mesh.Alive {
				id = m.ID
				return nil
			}
		}
		return fmt.Errorf("a does not see b alive")
	})
	if _, err := a.Mesh.Ping(id); err != nil {
		t.Fatalf("ping b, reachable: %v", err)
	}
	c.Net.Partition([]netip.Addr{a.Addr.Addr()}, []netip.Addr{b.Addr.Addr()})
	if rtt, err := a.Mesh.Ping(id); err == nil {
		t.Fatalf("ping b across a partition answered in %v", rtt)
	}
	if _, err := a.Mesh.Ping(ledger.NewNodeID()); err == nil {
		t.Fatal("ping of a node ID that is no member did not fail")
	}
}
