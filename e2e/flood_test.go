package e2e

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// ledgerRefusals reads h's agent's refusals of ledger connections by reason.
func ledgerRefusals(t *testing.T, h *lab.Host) map[string]float64 {
	t.Helper()
	code, body, err := h.Get(t.Context(), "/metrics")
	if err != nil || code != 200 {
		t.Fatalf("metrics of %s: %d %v", h.Name, code, err)
	}
	return lab.Counters(body, "grapevine_ledger_rpc_rejected_total")
}

// TestLedgerPortFlood (issue 19, fault 4): 500 idle connections without
// the key, from ten hosts that run no agent, held open against the seed's
// ledger port, locked joining hosts out until the flood stopped. Now a new
// host gets its block and is routed while the flood is held (the seed
// refuses it before and after), and the seed counts what it refused.
func TestLedgerPortFlood(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 3})
	ctx := timeout(t, 3*time.Minute)
	seed := l.Host(1)
	var flooders []*lab.Host
	for range 10 {
		h, err := l.AddHost(ctx)
		if err != nil {
			t.Fatal(err)
		}
		flooders = append(flooders, h)
	}
	stop := lab.FloodIdle(ctx, flooders, netip.AddrPortFrom(seed.IP, lab.LedgerPort), 500, time.Second)
	defer stop()
	var before map[string]float64
	if err := poll.Until(ctx, "the flood under way", 100*time.Millisecond, func() error {
		before = ledgerRefusals(t, seed)
		if before["handshake-busy"] == 0 || before["handshake-source-limit"] == 0 {
			return fmt.Errorf("the seed refused %v so far", before)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	newcomer, err := l.AddHost(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := newcomer.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	s, err := newcomer.WaitReady(ctx)
	if err != nil {
		t.Fatalf("a new host under the flood: %v", err)
	}
	if !s.Block.IsValid() {
		t.Fatalf("%s ready without a block: %+v", newcomer.Name, s)
	}
	if _, err := seed.WaitStatus(ctx, "a route to "+newcomer.Name, func(st lab.Status) bool {
		m, ok := st.Member(newcomer.Name)
		return ok && m.Route == "programmed"
	}); err != nil {
		t.Fatal(err)
	}
	// Refused before and still refused after: the flood was held throughout.
	if err := poll.Until(ctx, "the flood still refused after the join", 100*time.Millisecond, func() error {
		if after := ledgerRefusals(t, seed); after["handshake-busy"] <= before["handshake-busy"] {
			return fmt.Errorf("refusals %v, before the join %v", after, before)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
