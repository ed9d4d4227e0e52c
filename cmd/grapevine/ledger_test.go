package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
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
