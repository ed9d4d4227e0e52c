package main

import (
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
