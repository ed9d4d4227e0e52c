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

// Gossip cut, the ledger port open: the leader counts the owner dead from
// gossip, but the owner keeps renewing its lease through the ledger, so
// its block is never reclaimed and it stays ready, lease after lease.
func TestGossipCutOwnerKeepsRenewing(t *testing.T) {
	const lease = 2 * time.Second
	c := newCluster(t, meshtest.Options{Lease: lease, Voters: 1, Logger: testLogger(t),
		// Autopilot would remove b from the ledger once dead in gossip
		// this long (30 min by default); then b can no longer renew.
		TuneLedger: func(cfg *ledger.Config) {
			meshtest.FastLedger(cfg)
			cfg.DeadNonvoterAfter = time.Hour
		}})
	a := start(t, c, meshtest.Spec{Name: "a"})
	b := start(t, c, meshtest.Spec{Name: "b", Join: seed(a)})
	waitConverged(t, c, 20*time.Second)
	bBlock := b.Mesh.View().Block
	c.Net.PartitionGossip([]netip.Addr{a.Addr.Addr()}, []netip.Addr{b.Addr.Addr()})
	waitFor(t, "a sees b dead in gossip", 20*time.Second, func() error { return sees(a, "b", mesh.Dead) })
	holdFor(t, c, 4*lease, func(views map[string]mesh.View) error {
		if v := views["b"]; !v.Ready || v.Block != bBlock {
			return fmt.Errorf("b: block %s ready=%v (%s), want %s", v.Block, v.Ready, v.Reason, bBlock)
		}
		if !a.Mesh.HasBlock("b") {
			return fmt.Errorf("the leader reclaimed b's block while b renewed its lease")
		}
		return nil
	})
}

// A node killed (no snapshot on the way down) and restarted cut off from
// the ledger uses its saved block at once while the lease saved with it
// holds, whatever its replica (the last snapshot) says.
func TestKilledNodeRestartsOnSavedLease(t *testing.T) {
	c := newCluster(t, meshtest.Options{Lease: time.Hour, Voters: 1, Logger: testLogger(t)})
	a := start(t, c, meshtest.Spec{Name: "a"})
	b := start(t, c, meshtest.Spec{Name: "b", Join: seed(a)})
	waitConverged(t, c, 20*time.Second)
	bBlock, bDir, bAddr := b.Mesh.View().Block, b.StateDir, b.Addr.Addr()
	if err := c.Kill("b"); err != nil {
		t.Fatal(err)
	}
	c.Net.Partition([]netip.Addr{bAddr}, []netip.Addr{a.Addr.Addr()})
	b = start(t, c, meshtest.Spec{Name: "b", Addr: bAddr, StateDir: bDir, Join: seed(a)})
	waitFor(t, "b restores its block under its saved lease", 10*time.Second, func() error {
		if v := b.Mesh.View(); !v.Ready || v.Block != bBlock || v.Restart != mesh.RestartRestored {
			return fmt.Errorf("b: block %s ready=%v restart %s (%s)", v.Block, v.Ready, v.Restart, v.RestartReason)
		}
		return nil
	})
}

// A node whose host clock jumps ahead past its lease (the host was
// suspended) stops handing out addresses until it renews.
func TestSuspendedHostRenewsBeforeHandingOut(t *testing.T) {
	const lease = 3 * time.Second
	c := newCluster(t, meshtest.Options{Lease: lease, Voters: 1, Logger: testLogger(t)})
	a := start(t, c, meshtest.Spec{Name: "a"})
	clock := meshtest.NewClock(0)
	b := start(t, c, meshtest.Spec{Name: "b", Join: seed(a), Clock: clock.Host})
	waitConverged(t, c, 20*time.Second)
	before := b.Mesh.View()
	c.Net.Isolate(b.Addr.Addr())
	clock.Advance(time.Hour)
	if v := b.Mesh.View(); v.Ready {
		t.Fatalf("b ready on %s an hour past its lease", v.Block)
	}
	c.Net.Heal()
	waitFor(t, "b renews", 20*time.Second, func() error {
		if v := b.Mesh.View(); !v.Ready || v.Block != before.Block || !before.Lease.Before(v.Lease) {
			return fmt.Errorf("b: block %s ready=%v lease %+v", v.Block, v.Ready, v.Lease)
		}
		return nil
	})
}
