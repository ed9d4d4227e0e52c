package ledger

import (
	"os"
	"path/filepath"
	"testing"
)

func TestLoadOrCreateNodeID(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	id, err := LoadOrCreateNodeID(dir)
	if err != nil || id.IsZero() {
		t.Fatalf("create: %v %v", id, err)
	}
	again, err := LoadOrCreateNodeID(dir)
	if err != nil || again != id {
		t.Fatalf("reload gave %v (%v), want %v", again, err, id)
	}
	other, err := LoadOrCreateNodeID(t.TempDir())
	if err != nil || other == id {
		t.Fatalf("a second state dir got %v (%v)", other, err)
	}
	parsed, err := ParseNodeID(id.String())
	if err != nil || parsed != id {
		t.Fatalf("parse %q: %v %v", id.String(), parsed, err)
	}
	for _, bad := range []string{"", "xyz", "00", id.String() + "00", "0000000000000000000000000000000g"} {
		if _, err := ParseNodeID(bad); err == nil {
			t.Errorf("parsed %q", bad)
		}
	}
	// A corrupt file is an error, never silently replaced.
	if err := os.WriteFile(filepath.Join(dir, nodeIDFile), []byte("not an id\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateNodeID(dir); err == nil {
		t.Fatal("corrupt node-id accepted")
	}
}
