// Package testneeds holds the one rule for tests that need what a machine
// may lack (root for network namespaces and raw sockets, commands such as
// iptables-nft): without it they skip and say why, except under CI=true,
// where they fail, since a skip there would hide that they never ran. It is
// for tests only and touches nothing.
package testneeds

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Root skips tb when not run as root, or fails it when CI=true; why says
// what needs root.
func Root(tb testing.TB, why string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		missing(tb, why+" needs root: run the tests as root")
	}
}

// Commands skips tb when one of the named commands is not on PATH, or
// fails it when CI=true; install says how to get them (a Debian package).
func Commands(tb testing.TB, install string, names ...string) {
	tb.Helper()
	var absent []string
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			absent = append(absent, n)
		}
	}
	if len(absent) > 0 {
		missing(tb, strings.Join(absent, ", ")+" not installed ("+install+")")
	}
}

func missing(tb testing.TB, msg string) {
	tb.Helper()
	if os.Getenv("CI") == "true" {
		tb.Fatalf("%s, and CI=true: the test must run", msg)
	}
	tb.Skip(msg)
}
