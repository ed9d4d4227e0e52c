package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// TestFrozenAgentLeaseEnds: an agent hung (SIGSTOP) with node.json and the
// conflist left in place stops its host handing out addresses once its
// lease ends: a pod started through the runtime's path (the conflist) gets
// CNI error 11 naming the lease. Its block goes to another host only after
// that, never while the hung host could still hand out addresses from it.
func TestFrozenAgentLeaseEnds(t *testing.T) {
	t.Parallel()
	const lease = 6 * time.Second
	// Two blocks in the pool: a third host can only get h2's.
	l := env.Lab(t, labtest.Options{Hosts: 3, NoAgents: true,
		AgentArgs: []string{"--lease", lease.String(), "--pool", "10.244.0.0/22", "--block-size", "23"}})
	ctx := timeout(t, 3*time.Minute)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	if err := l.StartAgents(ctx, h1, h2); err != nil {
		t.Fatal(err)
	}
	before, err := lab.WaitMesh(ctx, []*lab.Host{h1, h2})
	if err != nil {
		t.Fatal(err)
	}
	h2Block := before[h2.Name].Block
	if p, err := h2.AddPod(ctx); err != nil {
		t.Fatalf("pod on h2 while its agent runs: %v", err)
	} else if !h2Block.Contains(p.IP) {
		t.Fatalf("pod on h2 got %s, outside h2's block %s", p.IP, h2Block)
	}

	if err := h2.FreezeAgent(); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	defer h2.ThawAgent()
	// Until the lease ends, h2 may still start pods; then it must refuse.
	var refused error
	err = poll.Until(ctx, "h2 refusing ADD once its lease ended", 200*time.Millisecond, func() error {
		p, err := h2.AddPod(ctx)
		if err != nil {
			refused = err
			return nil
		}
		if since := time.Since(frozen); since > lease+2*time.Second {
			t.Fatalf("h2 handed out %s %s after its agent froze, past its %s lease", p.IP, since.Round(time.Millisecond), lease)
		}
		return fmt.Errorf("h2 handed out %s", p.IP)
	})
	if err != nil {
		t.Fatal(err)
	}
	var cniErr *types.Error
	if !errors.As(refused, &cniErr) || cniErr.Code != types.ErrTryAgainLater || !strings.Contains(cniErr.Msg, "has not renewed its lease") {
		t.Fatalf("ADD on h2 once its lease ended: %v, want CNI error 11 naming the lease", refused)
	}
	leaseEnded := time.Now()
	t.Logf("h2's ADD refused %s after its agent froze: %s", leaseEnded.Sub(frozen).Round(time.Millisecond), cniErr.Msg)

	// h3 joins: the only free block is h2's, which it gets only once the
	// leader has reclaimed it, after h2's lease ended.
	if err := l.StartAgents(ctx, h3); err != nil {
		t.Fatal(err)
	}
	st, err := h3.WaitReady(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Block != h2Block {
		t.Fatalf("h3 got %s, want h2's reclaimed block %s", st.Block, h2Block)
	}
	p3, err := h3.AddPod(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// h2, still hung, hands out nothing from the block h3 now uses.
	if _, err := h2.AddPod(ctx); err == nil {
		t.Fatal("hung h2 handed out an address after its block moved to h3")
	}
	t.Logf("h3 holds %s and started %s; h2 hung since %s", st.Block, p3.IP, time.Since(frozen).Round(time.Millisecond))
}

// TestKilledAgentRestartsOnSavedLease: kill -9 and a restart at once: the
// agent uses the saved block under its saved lease without waiting for the
// ledger (here, with the ledger's only other voter cut off).
func TestKilledAgentRestartsOnSavedLease(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 2})
	ctx := timeout(t, 2*time.Minute)
	h2 := l.Host(2)
	before, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	if err := h2.KillAgent(); err != nil {
		t.Fatal(err)
	}
	if err := h2.CutLink(ctx); err != nil {
		t.Fatal(err)
	}
	defer h2.RestoreLink(context.WithoutCancel(ctx))
	if err := h2.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := h2.WaitReady(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Block != before[h2.Name].Block {
		t.Fatalf("h2 restarted on %s, want its saved %s", st.Block, before[h2.Name].Block)
	}
	p, err := h2.AddPod(ctx)
	if err != nil {
		t.Fatalf("pod on h2 restarted cut off, within its lease: %v", err)
	}
	if !st.Block.Contains(p.IP) {
		t.Fatalf("pod %s outside %s", p.IP, st.Block)
	}
}
