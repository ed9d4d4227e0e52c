package lab

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRemoveIfEmpty(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "registry")
	if err := removeIfEmpty(dir); err != nil {
		t.Fatalf("missing directory: %v", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "x.json"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := removeIfEmpty(dir); err != nil {
		t.Fatalf("directory with a record: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "x.json")); err != nil {
		t.Fatalf("the record went with it: %v", err)
	}
	os.Remove(filepath.Join(dir, "x.json"))
	if err := removeIfEmpty(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("empty directory left behind (%v)", err)
	}
}
