// Package roottest holds the one rule for tests that need root (network
// namespaces, raw sockets, labs): without root they skip and say why, except
// under CI=true, where they fail, since a skip there would hide that they
// never ran. It is for tests only and touches nothing.
package roottest

import (
	"os"
	"testing"
)

// Require skips tb when not run as root, or fails it when CI=true; why says
// what needs root.
func Require(tb testing.TB, why string) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatalf("%s needs root, and CI=true: run the tests as root", why)
	}
	tb.Skipf("%s needs root", why)
}
