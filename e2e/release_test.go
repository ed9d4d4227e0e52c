package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// TestRelease: `grapevine release` refuses a live node, and a dead one until
// its lease has ended (saying how long is left); then it frees the node's
// block on every host at once, and the node coming back does not take the
// released block back from disk: its saved lease has ended, so it asks the
// ledger, which gives it another block.
func TestRelease(t *testing.T) {
	t.Parallel()
	const lease = 20 * time.Second
	l := env.Lab(t, labtest.Options{Hosts: 3, AgentArgs: []string{"--lease", lease.String()}})
	ctx := timeout(t, 3*time.Minute)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	before, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	oldBlock := before[h3.Name].Block
	// A release is a ledger entry: it needs a majority of the voters after
	// h3 dies, so wait until the ledger has all three.
	voters(t, ctx, l.Hosts(), 3)

	if out, err := h1.Release(ctx, h3.Name); err == nil {
		t.Fatalf("release of a live node succeeded: %s", out)
	}

	if err := h3.KillAgent(); err != nil {
		t.Fatal(err)
	}
	if err := h3.CutLink(ctx); err != nil {
		t.Fatal(err)
	}
	deadCtx := timeout(t, failureDetectionBound)
	if _, err := h1.WaitStatus(deadCtx, "h3 dead", func(s lab.Status) bool {
		m, ok := s.Member(h3.Name)
		return ok && m.State == "dead"
	}); err != nil {
		t.Fatal(err)
	}
	if out, err := h1.Release(ctx, h3.Name); err == nil || !strings.Contains(string(out)+err.Error(), "once its lease") {
		t.Fatalf("release of a dead node within its lease: %v: %s", err, out)
	}
	// The leader's reclaim of the dead h3 waits for the same lease and may
	// free the block first: then nothing is left to release.
	err = poll.Until(ctx, "the release of a dead node", time.Second, func() error {
		out, err := h1.Release(ctx, h3.Name)
		if err == nil || strings.Contains(string(out)+err.Error(), "no block assigned to that node") {
			return nil
		}
		return fmt.Errorf("%w: %s", err, out)
	})
	if err != nil {
		t.Fatal(err)
	}
	released := time.Now()
	for _, h := range []*lab.Host{h1, h2} {
		_, err := h.WaitStatus(ctx, fmt.Sprintf("%s's block released", h3.Name), func(s lab.Status) bool {
			m, ok := s.Member(h3.Name)
			return !ok || !m.Block.IsValid()
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("release: %s (%s) freed on every live host within %v", oldBlock, h3.Name, time.Since(released).Round(time.Millisecond))

	if err := h3.RestoreLink(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h3.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	after, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	if err := uniqueBlocks(after); err != nil {
		t.Fatal(err)
	}
	log, err := os.ReadFile(h3.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "lost its block") && !strings.Contains(string(log), "needs the ledger's confirmation") {
		t.Errorf("h3 did not notice that its saved block was released:\n%s", h3.LogTail(30))
	}
	t.Logf("release: h3 came back and claimed %s (was %s)", after[h3.Name].Block, oldBlock)
}
