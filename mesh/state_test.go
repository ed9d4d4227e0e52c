package mesh

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/mesh/ledger"
)

func TestRestorable(t *testing.T) {
	id, other := ledger.NodeID{1}, ledger.NodeID{2}
	block := netip.MustParsePrefix("10.244.8.0/23")
	now := time.Unix(1_800_000_000, 0)
	const reclaimAfter = time.Hour
	assigned := func(owner ledger.NodeID) ledger.State {
		return ledger.State{Blocks: map[netip.Prefix]ledger.Owner{block: {ID: owner}}}
	}
	saved := func(age time.Duration, who ledger.NodeID) *savedBlock {
		return &savedBlock{Node: "n", ID: who, Block: block, LastConfirmed: now.Add(-age)}
	}
	for _, tc := range []struct {
		name  string
		saved *savedBlock
		st    ledger.State
		want  bool
	}{
		{"confirmed a minute ago, still ours", saved(time.Minute, id), assigned(id), true},
		{"just under half of ReclaimAfter", saved(reclaimAfter/2-time.Second, id), assigned(id), true},
		{"half of ReclaimAfter", saved(reclaimAfter/2, id), assigned(id), false},
		{"assigned to another node", saved(time.Minute, id), assigned(other), false},
		{"released in the local copy", saved(time.Minute, id), ledger.State{}, false},
		{"saved by another node ID (a copied file)", saved(time.Minute, other), assigned(other), false},
		{"clock went backwards", saved(-time.Minute, id), assigned(id), false},
		{"never confirmed", &savedBlock{ID: id, Block: block}, assigned(id), false},
		{"nothing saved", nil, assigned(id), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := restorable(tc.saved, id, now, reclaimAfter, tc.st); (err == nil) != tc.want {
				t.Fatalf("restorable = %v, want the rule to hold: %v", err, tc.want)
			}
		})
	}
}

func TestBlockFile(t *testing.T) {
	dir := t.TempDir()
	if s, err := loadBlock(dir); s != nil || err != nil {
		t.Fatalf("no file: %v, %v", s, err)
	}
	want := savedBlock{Node: "n", ID: ledger.NodeID{7}, Block: netip.MustParsePrefix("10.244.2.0/23"), LastConfirmed: time.UnixMilli(1_800_000_000_123).UTC(), Incarnation: "4f6c7a52-0d1e-4b8a-9c3e-2a1b0c9d8e7f"}
	if err := saveBlock(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := loadBlock(dir)
	if err != nil || *got != want {
		t.Fatalf("round trip: %+v, %v; want %+v", got, err, want)
	}
	// A file of the vote protocol's era has no ID: a hint only.
	old := `{"node":"n","block":"10.244.4.0/23","since":"2026-01-01T00:00:00Z","gen":3}`
	if err := os.WriteFile(filepath.Join(dir, BlockFileName), []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err = loadBlock(dir)
	if err != nil || got.Block != netip.MustParsePrefix("10.244.4.0/23") || !got.ID.IsZero() || !got.LastConfirmed.IsZero() {
		t.Fatalf("old file: %+v, %v", got, err)
	}
	for name, body := range map[string]string{"garbage": "{", "no block": `{"node":"n"}`, "bad id": `{"block":"10.244.4.0/23","id":"xyz"}`} {
		if err := os.WriteFile(filepath.Join(dir, BlockFileName), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := loadBlock(dir); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
