package main

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/mesh/ledger"
	"github.com/grapevine-net/grapevine/mesh/meshtest"
)

// TestAgentWithAnotherPoolExits: an agent restarted with another --pool on
// the state of a ledger member exits with one sentence naming both pools,
// instead of joining (and, as a voter, leading and reclaiming the healthy
// members' blocks). Restarted with the ledger's pool, it is back.
func TestAgentWithAnotherPoolExits(t *testing.T) {
	dir := t.TempDir()
	network := meshtest.NewNetwork()
	h1 := startTestHost(t, network, dir, "h1", 1, nil)
	h2 := startTestHost(t, network, dir, "h2", 2, nil, h1.addr.String())
	waitFor(t, "both hosts to route each other", func() error { return routesTo(h1, h2) })
	h2.stop(t)

	other := netip.MustParsePrefix("10.245.0.0/16")
	h2 = startHostWith(t, network, nil, nil, nil, func(o *agentOptions) { o.Pool = other }, dir, "h2", 2, h2.kernel, h1.addr.String())
	var err error
	select {
	case err = <-h2.done:
		h2.cancel = nil
	case <-time.After(30 * time.Second):
		t.Fatal("the agent with another --pool did not exit")
	}
	if !errors.Is(err, ledger.ErrPoolMismatch) {
		t.Fatalf("agent with another --pool returned %v, want ErrPoolMismatch", err)
	}
	msg := err.Error()
	for _, want := range []string{other.String(), "10.244.0.0/16"} {
		if !strings.Contains(msg, want) {
			t.Errorf("%q does not name %s", msg, want)
		}
	}
	if strings.Count(msg, ". ") > 0 || strings.Contains(msg, "\n") {
		t.Errorf("%q is more than one sentence", msg)
	}
	t.Logf("grapevine: %s", msg)

	h2 = startTestHost(t, network, dir, "h2", 2, h2.kernel, h1.addr.String())
	waitFor(t, "h2 back with the ledger's pool", func() error { return routesTo(h1, h2) })
}
