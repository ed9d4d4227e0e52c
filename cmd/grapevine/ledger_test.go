package main

import (
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/grapevine-net/grapevine/mesh"
)

// TestLedgerRecoverRefuses: bad input is refused with the flag's name, and a
// state directory without a ledger is not mistaken for one.
func TestLedgerRecoverRefuses(t *testing.T) {
	app := &cli.App{Name: "grapevine", Commands: []*cli.Command{ledgerCommand()}}
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--state-dir", dir, "--host-ip", "not-an-ip"}, "--host-ip"},
		{[]string{"--state-dir", dir, "--host-ip", "192.0.2.1", "--ledger-port", "0"}, "--ledger-port"},
		{[]string{"--state-dir", dir, "--host-ip", "192.0.2.1"}, "recover the ledger in " + dir},
	} {
		err := app.Run(append([]string{"grapevine", "ledger", "recover"}, tc.args...))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ledger recover %v: %v, want an error naming %q", tc.args, err, tc.want)
		}
	}
}

// TestLedgerReset: the ledger state and block.json are moved aside, the
// node ID stays, and the command says where they went.
func TestLedgerReset(t *testing.T) {
	dir := t.TempDir()
	for path, data := range map[string]string{"node-id": "0123456789abcdef0123456789abcdef\n", "block.json": "{}", "raft/snapshots/x": "s"} {
		p := filepath.Join(dir, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var out strings.Builder
	app := &cli.App{Name: "grapevine", Writer: &out, Commands: []*cli.Command{ledgerCommand()}}
	if err := app.Run([]string{"grapevine", "ledger", "reset", "--state-dir", dir}); err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{"raft", "block.json"} {
		if _, err := os.Stat(filepath.Join(dir, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after the reset: %v", gone, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "node-id")); err != nil {
		t.Errorf("node-id: %v", err)
	}
	moved, _ := filepath.Glob(filepath.Join(dir, "raft.reset-*", "snapshots", "x"))
	if len(moved) != 1 || !strings.Contains(out.String(), filepath.Dir(filepath.Dir(moved[0]))) {
		t.Errorf("moved %v; printed %q", moved, out.String())
	}
}

// TestMeshConfigFounding: which way an agent founds a ledger follows from
// its flags, and only one way at a time.
func TestMeshConfigFounding(t *testing.T) {
	for _, tc := range []struct {
		name      string
		o         agentOptions
		found     bool
		expect    int
		validates bool
	}{
		{"no --join: alone, at once", agentOptions{}, true, 0, true},
		{"--join: never", agentOptions{Join: []string{"192.0.2.1"}}, false, 0, true},
		{"--join --bootstrap-expect 3", agentOptions{Join: []string{"192.0.2.1"}, BootstrapExpect: 3}, false, 3, true},
		{"--bootstrap-expect 1 alone", agentOptions{BootstrapExpect: 1}, false, 1, true},
		{"--join-kubernetes: through the record", agentOptions{JoinKubernetes: true}, false, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.NodeName, tc.o.HostIP, tc.o.Voters, tc.o.StateDir = "n1", netip.MustParseAddr("192.0.2.9"), 3, t.TempDir()
			cfg := tc.o.meshConfig(slog.New(slog.DiscardHandler))
			if cfg.Found != tc.found || cfg.BootstrapExpect != tc.expect {
				t.Errorf("Found %v, BootstrapExpect %d; want %v, %d", cfg.Found, cfg.BootstrapExpect, tc.found, tc.expect)
			}
			if _, err := mesh.New(cfg); (err == nil) != tc.validates {
				t.Errorf("mesh.New: %v", err)
			}
		})
	}
}
