package e2e

import (
	"net/http"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// TestColdStart: 10 hosts start at once from empty state. Every host ends
// up with its own block and a route to every other host's block.
func TestColdStart(t *testing.T) {
	t.Parallel()
	const hosts = 10
	l := env.Lab(t, labtest.Options{Hosts: hosts, NoAgents: true})
	ctx := timeout(t, 3*time.Minute)

	start := time.Now()
	if err := l.StartAgents(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Host(1).WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	firstReady := time.Since(start)
	statuses, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	converged := time.Since(start)
	if err := uniqueBlocks(statuses); err != nil {
		t.Fatal(err)
	}
	err = poll.Until(ctx, "every host's kernel routes", 100*time.Millisecond, func() error {
		return expectMeshRoutes(statuses, l.Hosts())
	})
	if err != nil {
		t.Fatal(err)
	}
	kernel := time.Since(start)
	for _, h := range l.Hosts() {
		if code, body, err := h.Get(ctx, "/readyz"); err != nil || code != http.StatusOK {
			t.Errorf("%s /readyz: %d %q (%v), want 200", h.Name, code, body, err)
		}
	}
	for _, h := range l.Hosts() {
		t.Logf("cold start: %s holds %s", h.Name, statuses[h.Name].Block)
	}
	t.Logf("cold start: %d hosts: h1 ready after %v, all ready with a full mesh in status after %v, all %d kernel routes in place after %v",
		hosts, firstReady.Round(time.Millisecond), converged.Round(time.Millisecond), hosts*(hosts-1), kernel.Round(time.Millisecond))
}
