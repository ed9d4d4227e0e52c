package main

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestReadGossipKeyLikeSSH: the key file is refused, with one sentence,
// when it is no regular file (/dev/zero once ran the agent out of memory),
// longer than a key file can be, readable or writable by group or others,
// or someone else's.
func TestReadGossipKeyLikeSSH(t *testing.T) {
	dir := t.TempDir()
	key := base64.StdEncoding.EncodeToString(make([]byte, 32)) + "\n"
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, ok := range []os.FileMode{0o600, 0o400} {
		if _, err := readGossipKey(write("ok", key, ok)); err != nil {
			t.Errorf("mode %04o refused: %v", ok, err)
		}
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path, want string
	}{
		{"a device", "/dev/zero", "is not a regular file"},
		{"a FIFO, which would block an open", fifo, "is not a regular file"},
		{"a directory", dir, "is not a regular file"},
		{"too long", write("long", strings.Repeat(key, 100), 0o600), "longer than 1024 bytes"},
		{"world-readable", write("o+r", key, 0o644), "mode 0644, so group or others can read or write it"},
		{"group-readable", write("g+r", key, 0o640), "mode 0640"},
		{"world-writable", write("o+w", key, 0o602), "mode 0602"},
	}
	if os.Geteuid() == 0 {
		other := write("other", key, 0o600)
		if err := os.Chown(other, 4321, 4321); err != nil {
			t.Fatal(err)
		}
		tests = append(tests, struct{ name, path, want string }{"someone else's", other, "belongs to uid 4321"})
	}
	for _, tt := range tests {
		_, err := readGossipKey(tt.path)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.path) {
			t.Errorf("%s: %v, want an error naming %s and containing %q", tt.name, err, tt.path, tt.want)
		}
	}
}

// TestPrepareDir: a missing run or state directory is created with the
// agent's mode, whatever the umask; an existing one that others can write
// to, or that is someone else's, is refused with one sentence and left
// as it is.
func TestPrepareDir(t *testing.T) {
	base := t.TempDir()
	created := filepath.Join(base, "new", "state")
	if err := prepareDir("--state-dir", created, 0o700); err != nil {
		t.Fatal(err)
	}
	if info, err := os.Stat(created); err != nil || info.Mode().Perm() != 0o700 || !info.IsDir() {
		t.Fatalf("created %v, %v; want a directory of mode 0700", info.Mode(), err)
	}
	if err := prepareDir("--state-dir", created, 0o700); err != nil {
		t.Fatalf("again: %v", err)
	}

	mkdir := func(name string, mode os.FileMode) string {
		p := filepath.Join(base, name)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if err := prepareDir("--run-dir", mkdir("run", 0o755), 0o755); err != nil {
		t.Errorf("0755 refused: %v", err)
	}
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, dir, want string
		mode            os.FileMode
	}{
		{"world-writable", mkdir("o+w", 0o777), "has mode 0777, so group or others can write to it", 0o777},
		{"group-writable", mkdir("g+w", 0o775), "has mode 0775", 0o775},
		{"sticky like /tmp", mkdir("tmp", 0o777|os.ModeSticky), "has mode 0777", 0o777 | os.ModeSticky},
		{"a file", file, "is not a directory", 0o600},
	}
	if os.Geteuid() == 0 {
		other := mkdir("other", 0o755)
		if err := os.Chown(other, 4321, 4321); err != nil {
			t.Fatal(err)
		}
		tests = append(tests, struct {
			name, dir, want string
			mode            os.FileMode
		}{"someone else's", other, "belongs to uid 4321", 0o755})
	}
	for _, tt := range tests {
		err := prepareDir("--run-dir", tt.dir, 0o755)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "--run-dir "+tt.dir) {
			t.Errorf("%s: %v, want an error starting with the flag and %s, containing %q", tt.name, err, tt.dir, tt.want)
		}
		if info, err := os.Stat(tt.dir); err != nil || info.Mode()&(os.ModePerm|os.ModeSticky) != tt.mode {
			t.Errorf("%s: mode now %v, %v; want it left %v", tt.name, info.Mode(), err, tt.mode)
		}
	}
}

// TestKeygenOut: `keygen --out` writes a key file the agent accepts, and
// never replaces one.
func TestKeygenOut(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gossip.key")
	if out, err, _ := runCLI(t, "keygen", "--out", path); err != nil || out != "" {
		t.Fatalf("keygen --out: %q, %v", out, err)
	}
	first, err := readGossipKey(path)
	if err != nil {
		t.Fatalf("the agent refuses keygen's file: %v", err)
	}
	if _, err, _ := runCLI(t, "keygen", "--out", path); err == nil || !strings.Contains(err.Error(), "the file exists") {
		t.Fatalf("second keygen --out: %v, want a refusal", err)
	}
	if again, err := readGossipKey(path); err != nil || string(again) != string(first) {
		t.Fatalf("the key changed: %v", err)
	}
}
