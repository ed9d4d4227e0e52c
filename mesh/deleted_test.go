package mesh_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/ledger"
	"github.com/grapevine-net/grapevine/mesh/meshtest"
)

// recordIncarnation stands for a Node object: its UID while it exists, ""
// once deleted. Verify answers as the API server would at that moment.
type recordIncarnation struct {
	mu          sync.Mutex
	uid         string
	unreachable bool
	verified    []string
}

func (r *recordIncarnation) set(uid string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.uid = uid
}

func (r *recordIncarnation) Current() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.uid
}

func (r *recordIncarnation) Verify(_ context.Context, saved string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.verified = append(r.verified, saved)
	switch {
	case r.unreachable:
		return errors.New("API server unreachable")
	case r.uid == "":
		return errors.New("no Node object")
	case r.uid != saved:
		return fmt.Errorf("Node has UID %s, the block was saved under %s", r.uid, saved)
	}
	return nil
}

func savedFile(t *testing.T, n *meshtest.Node) map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(n.StateDir, mesh.BlockFileName))
	if err != nil {
		t.Fatal(err)
	}
	var f map[string]any
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestReleaseDeletedNode: a dead node whose record was deleted loses its
// block through the one path every move takes: refused while the node is
// alive, then until its lease has ended by the leader's clock, never
// sooner; the block then goes to a newcomer; the deleted node, back with
// its state directory but cut off from the ledger, does not use its old
// block, as its lease has ended (and its record no longer holds the
// incarnation saved with it).
func TestReleaseDeletedNode(t *testing.T) {
	const lease = 4 * time.Second
	// Two blocks: a and c hold them; d can only get c's.
	c := newCluster(t, meshtest.Options{Pool: netip.MustParsePrefix("10.244.0.0/22"), Lease: lease, Voters: 1, Logger: testLogger(t)})
	a := start(t, c, meshtest.Spec{Name: "a", Incarnation: &recordIncarnation{uid: "uid-a"}})
	cRecord := &recordIncarnation{uid: "uid-c1"}
	cn := start(t, c, meshtest.Spec{Name: "c", Join: seed(a), Incarnation: cRecord})
	waitConverged(t, c, 20*time.Second)
	cBlock, cDir, cAddr := cn.Mesh.View().Block, cn.StateDir, cn.Addr.Addr()
	waitFor(t, "c saves its block with its incarnation", 10*time.Second, func() error {
		if f := savedFile(t, cn); f["incarnation"] != "uid-c1" || f["block"] != cBlock.String() {
			return fmt.Errorf("block.json = %v", f)
		}
		return nil
	})

	// Alive: refused here, whatever the record says.
	if _, err := a.Mesh.ReleaseDeletedNode(t.Context(), "c"); !errors.Is(err, ledger.ErrNodeAlive) {
		t.Fatalf("release of live c: %v, want ErrNodeAlive", err)
	}
	if _, err := a.Mesh.ReleaseDeletedNode(t.Context(), "a"); !errors.Is(err, ledger.ErrNodeAlive) {
		t.Fatalf("release of the node itself: %v, want ErrNodeAlive", err)
	}
	if !a.Mesh.HasBlock("c") {
		t.Fatal("a refused release still freed c's block")
	}

	if err := c.Kill("c"); err != nil {
		t.Fatal(err)
	}
	// c's last renewal was sent after the time block.json records for it:
	// its lease runs at least lease past that.
	renewed, err := time.Parse(time.RFC3339Nano, savedFile(t, cn)["renewed"].(string))
	if err != nil {
		t.Fatal(err)
	}
	cRecord.set("") // kubectl delete node c
	waitFor(t, "a sees c fail", 20*time.Second, func() error { return sees(a, "c", mesh.Dead) })
	var got netip.Prefix
	waitFor(t, "a releases c's block", 20*time.Second, func() error {
		var err error
		got, err = a.Mesh.ReleaseDeletedNode(t.Context(), "c")
		switch {
		case err == nil && time.Now().Before(renewed.Add(lease)):
			t.Fatalf("c's block released %s before c's lease ended", renewed.Add(lease).Sub(time.Now()))
		case errors.Is(err, ledger.ErrLeaseActive):
			if wait, ok := ledger.LeaseWait(err); !ok || wait <= 0 || wait > lease+ledger.LeaseMargin(lease) {
				t.Fatalf("lease refusal with wait %s, %v: want (0, %s]", wait, ok, lease+ledger.LeaseMargin(lease))
			}
		case err != nil && !errors.Is(err, ledger.ErrNodeAlive):
			// The ledger gets gossip's view a moment later: until then
			// its leader refuses as c is alive to it.
			t.Fatal(err)
		}
		return err
	})
	// The leader's reclaim of a dead owner waits for the same lease and
	// may come first: then the release finds nothing left.
	if got.IsValid() && got != cBlock {
		t.Fatalf("ReleaseDeletedNode(c) released %s, want %s", got, cBlock)
	}
	t.Logf("c's block %s freed %s after its last renewal (by the release: %v)", cBlock, time.Since(renewed).Round(time.Millisecond), got.IsValid())
	if a.Mesh.HasBlock("c") {
		t.Fatal("c still holds a block after the release")
	}
	if n, want := counter(t, a.Metrics, "grapevine_mesh_releases_total", "record_deleted"), map[bool]float64{true: 1, false: 0}[got.IsValid()]; n != want {
		t.Errorf("releases_total{trigger=record_deleted} = %v, want %v", n, want)
	}
	// The operator's command now says there is nothing to release, at once.
	if err := a.Mesh.Release(t.Context(), "c"); !errors.Is(err, ledger.ErrUnknownNode) {
		t.Errorf("operator release after the deletion: %v, want ErrUnknownNode", err)
	}
	// Again (every agent asks): nothing left, no error. Never a member: the same.
	for _, name := range []string{"c", "never-a-member"} {
		if got, err := a.Mesh.ReleaseDeletedNode(t.Context(), name); err != nil || got.IsValid() {
			t.Errorf("ReleaseDeletedNode(%s) = %s, %v; want nothing and no error", name, got, err)
		}
	}

	d := start(t, c, meshtest.Spec{Name: "d", Join: seed(a)})
	waitFor(t, "d takes the released block", 20*time.Second, func() error {
		if v := d.Mesh.View(); !v.Ready || v.Block != cBlock {
			return fmt.Errorf("d: block %s ready=%v (%s)", v.Block, v.Ready, v.Reason)
		}
		return nil
	})

	// c's host returns with its state, cut off from everyone: its lease
	// has ended, so it does not use its old block. A recreated Node (new
	// UID) is no better than none.
	c.Net.Partition([]netip.Addr{cAddr}, []netip.Addr{a.Addr.Addr(), d.Addr.Addr()})
	for _, uid := range []string{"", "uid-c2"} {
		cRecord.set(uid)
		cn = start(t, c, meshtest.Spec{Name: "c", Addr: cAddr, StateDir: cDir, Join: seed(a), Incarnation: cRecord})
		waitFor(t, "c to apply the restart rule", 10*time.Second, func() error {
			if v := cn.Mesh.View(); v.Restart != mesh.RestartRefused {
				return fmt.Errorf("restart rule %s", v.Restart)
			}
			return nil
		})
		holdFor(t, c, 2*time.Second, func(views map[string]mesh.View) error {
			if v := views["c"]; v.Ready {
				return fmt.Errorf("record %q: isolated c hands out addresses from %s", uid, v.Block)
			}
			if v := views["d"]; v.Block != cBlock || !v.Ready {
				return fmt.Errorf("d lost %s: %s ready=%v", cBlock, v.Block, v.Ready)
			}
			return nil
		})
		if n := counter(t, cn.Metrics, "grapevine_mesh_claims_total", "restored"); n != 0 {
			t.Errorf("record %q: c restored its block under the restart rule", uid)
		}
		if err := c.Kill("c"); err != nil {
			t.Fatal(err)
		}
	}
}

// verifiedTimes waits until r was asked n times. (The reason a node shows
// names the refused restart rule only until its first claim fails.)
func verifiedTimes(r *recordIncarnation, n int) func() error {
	return func() error {
		r.mu.Lock()
		defer r.mu.Unlock()
		if len(r.verified) != n {
			return fmt.Errorf("asked %d times, want %d", len(r.verified), n)
		}
		return nil
	}
}

// TestRestartRuleNeedsIncarnation: with an Incarnation, a restarted node
// cut off from the ledger uses its saved block only while the record holds
// the incarnation saved with it; without one the rule is as before.
func TestRestartRuleNeedsIncarnation(t *testing.T) {
	c := newCluster(t, meshtest.Options{Lease: time.Hour, Voters: 1, Logger: testLogger(t)})
	a := start(t, c, meshtest.Spec{Name: "a"})
	record := &recordIncarnation{uid: "uid-1"}
	b := start(t, c, meshtest.Spec{Name: "b", Join: seed(a), Incarnation: record})
	waitConverged(t, c, 20*time.Second)
	bBlock, bDir, bAddr := b.Mesh.View().Block, b.StateDir, b.Addr.Addr()
	if v := b.Mesh.View(); v.Restart != mesh.RestartNoBlock || v.RestartReason != "" {
		t.Fatalf("b's first start: restart rule %s (%q), want %s", v.Restart, v.RestartReason, mesh.RestartNoBlock)
	}
	waitFor(t, "b saves its incarnation", 10*time.Second, func() error {
		if f := savedFile(t, b); f["incarnation"] != "uid-1" {
			return fmt.Errorf("block.json = %v", f)
		}
		return nil
	})

	// A Node object deleted and re-created while its host runs (kubelet
	// registers it again): the block is confirmed anew under the new UID.
	record.set("uid-2")
	waitFor(t, "b confirms its block under the new incarnation", 10*time.Second, func() error {
		f := savedFile(t, b)
		if v := b.Mesh.View(); f["incarnation"] != "uid-2" || v.Block != bBlock || !v.Ready {
			return fmt.Errorf("block.json = %v, view %s ready=%v", f, v.Block, v.Ready)
		}
		return nil
	})
	if err := c.Kill("b"); err != nil {
		t.Fatal(err)
	}
	c.Net.Partition([]netip.Addr{bAddr}, []netip.Addr{a.Addr.Addr()})

	for _, tc := range []struct {
		name        string
		uid         string
		unreachable bool
		noGate      bool
		restored    bool
	}{
		{name: "same UID", uid: "uid-2", restored: true},
		{name: "other UID", uid: "uid-3"},
		{name: "no Node", uid: ""},
		{name: "API unreachable", uid: "uid-2", unreachable: true},
		{name: "without Kubernetes", noGate: true, restored: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := meshtest.Spec{Name: "b", Addr: bAddr, StateDir: bDir, Join: seed(a)}
			rec := &recordIncarnation{uid: tc.uid, unreachable: tc.unreachable}
			if !tc.noGate {
				spec.Incarnation = rec
			}
			n := start(t, c, spec)
			defer func() {
				if err := c.Kill("b"); err != nil {
					t.Fatal(err)
				}
			}()
			if tc.restored {
				waitFor(t, "b restores its block", 10*time.Second, func() error {
					if v := n.Mesh.View(); !v.Ready || v.Block != bBlock {
						return fmt.Errorf("b: %s ready=%v (%s)", v.Block, v.Ready, v.Reason)
					}
					return nil
				})
				if n := counter(t, n.Metrics, "grapevine_mesh_claims_total", "restored"); n != 1 {
					t.Errorf("claims_total{result=restored} = %v, want 1", n)
				}
				if v := n.Mesh.View(); v.Restart != mesh.RestartRestored || v.RestartReason != "" {
					t.Errorf("restart rule %s (%q), want %s", v.Restart, v.RestartReason, mesh.RestartRestored)
				}
			} else {
				waitFor(t, "b to ask its record", 10*time.Second, verifiedTimes(rec, 1))
				holdFor(t, c, 2*time.Second, func(views map[string]mesh.View) error {
					if v := views["b"]; v.Ready {
						return fmt.Errorf("b ready with %s", v.Block)
					}
					return nil
				})
				if got := counter(t, n.Metrics, "grapevine_mesh_claims_total", "restored"); got != 0 {
					t.Errorf("b restored its block under the restart rule")
				}
				if v := n.Mesh.View(); v.Restart != mesh.RestartRefused || !strings.HasPrefix(v.RestartReason, "this host's incarnation does not hold") {
					t.Errorf("restart rule %s (%q), want %s for the incarnation", v.Restart, v.RestartReason, mesh.RestartRefused)
				}
			}
			if !tc.noGate {
				rec.mu.Lock()
				defer rec.mu.Unlock()
				if len(rec.verified) != 1 || rec.verified[0] != "uid-2" {
					t.Errorf("Verify called with %q, want once with the saved uid-2", rec.verified)
				}
			}
		})
	}
}
