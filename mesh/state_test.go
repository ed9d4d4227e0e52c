package mesh

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/internal/hostclock"
	"github.com/grapevine-net/grapevine/mesh/ledger"
)

func TestRestorable(t *testing.T) {
	id, other := ledger.NodeID{1}, ledger.NodeID{2}
	block := netip.MustParsePrefix("10.244.8.0/23")
	now := hostclock.Instant{Boot: "boot-1", Since: 50 * time.Hour}
	assigned := func(owner ledger.NodeID) ledger.State {
		return ledger.State{Blocks: map[netip.Prefix]ledger.Owner{block: {ID: owner}}}
	}
	// saved: a lease that ends in left (negative: ended that long ago).
	saved := func(left time.Duration, who ledger.NodeID) *savedBlock {
		return &savedBlock{Node: "n", ID: who, Block: block, Lease: now.Add(left)}
	}
	otherBoot := saved(time.Hour, id)
	otherBoot.Lease.Boot = "boot-0"
	for _, tc := range []struct {
		name  string
		saved *savedBlock
		st    ledger.State
		want  bool
	}{
		{"lease holds, still ours", saved(time.Hour, id), assigned(id), true},
		{"lease holds a millisecond more", saved(time.Millisecond, id), assigned(id), true},
		{"lease holds; the replica (a snapshot) lacks the claim", saved(time.Hour, id), ledger.State{}, true},
		{"lease just ended", saved(0, id), assigned(id), false},
		{"lease ended an hour ago", saved(-time.Hour, id), assigned(id), false},
		{"granted before this host last booted", otherBoot, assigned(id), false},
		{"assigned to another node", saved(time.Hour, id), assigned(other), false},
		{"saved by another node ID (a copied file)", saved(time.Hour, other), assigned(other), false},
		{"no lease (an older agent's file)", &savedBlock{ID: id, Block: block}, assigned(id), false},
		{"nothing saved", nil, assigned(id), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := restorable(tc.saved, id, now, tc.st); (err == nil) != tc.want {
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
	want := savedBlock{Node: "n", ID: ledger.NodeID{7}, Block: netip.MustParsePrefix("10.244.2.0/23"), Lease: hostclock.Instant{Boot: "b", Since: time.Hour},
		Renewed: time.UnixMilli(1_800_000_000_123).UTC(), EndsAt: time.UnixMilli(1_800_086_400_123).UTC(), Incarnation: "4f6c7a52-0d1e-4b8a-9c3e-2a1b0c9d8e7f"}
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
	if err != nil || got.Block != netip.MustParsePrefix("10.244.4.0/23") || !got.ID.IsZero() || !got.Lease.IsZero() {
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
