package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// lossWindow is how long the lossy links run before the crashes.
const lossWindow = 60 * time.Second

// TestLossyLinks: every host drops a fifth of what it sends on its LAN link
// (35 % of round trips lost). For lossWindow gossip suspects members now
// and then, but no host withdraws a peer's route: every agent's count of
// route deletions stays where it was, and every host routes every peer
// throughout. Then two of the four hosts crash at once, links still lossy:
// the two survivors withdraw both blocks and keep each other's route.
func TestLossyLinks(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 4})
	ctx := timeout(t, 5*time.Minute)
	hosts := l.Hosts()
	statuses, err := lab.WaitMesh(ctx, hosts)
	if err != nil {
		t.Fatal(err)
	}
	deletes := func() map[string]float64 {
		t.Helper()
		out := map[string]float64{}
		for _, h := range hosts {
			_, metrics, err := h.Get(ctx, "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			out[h.Name] = lab.Counters(metrics, "grapevine_node_route_operations_total")["delete"]
		}
		return out
	}
	before := deletes()
	for _, h := range hosts {
		if err := h.LoseOneIn(5); err != nil {
			t.Fatal(err)
		}
	}
	err = poll.Hold(ctx, "with 20 % loss on the links", lossWindow, 200*time.Millisecond, func() error {
		return expectMeshRoutes(statuses, hosts)
	})
	if err != nil {
		t.Fatalf("%v%s", err, suspicions(hosts))
	}
	if after := deletes(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("with 20 %% loss on the links routes were deleted: before %v, after %v%s", before, after, suspicions(hosts))
	}
	t.Logf("%v of 20 %% loss, no route withdrawn;%s", lossWindow, suspicions(hosts))

	// Two hosts crash at once (kill -9, link cut), the links still lossy.
	h1, h2, h3, h4 := l.Host(1), l.Host(2), l.Host(3), l.Host(4)
	for _, h := range []*lab.Host{h3, h4} {
		if err := h.KillAgent(); err != nil {
			t.Fatal(err)
		}
		if err := h.CutLink(ctx); err != nil {
			t.Fatal(err)
		}
	}
	crashed := time.Now()
	survivors := []*lab.Host{h1, h2}
	gone := []netip.Prefix{statuses[h3.Name].Block, statuses[h4.Name].Block}
	detectCtx, cancel := context.WithTimeout(ctx, failureDetectionBound)
	defer cancel()
	err = poll.Until(detectCtx, "both survivors to withdraw both crashed hosts' blocks and keep each other's", 100*time.Millisecond, func() error {
		return expectMeshRoutes(statuses, survivors)
	})
	if err != nil {
		t.Fatalf("two crashes with lossy links: %v%s", err, suspicions(hosts))
	}
	t.Logf("two crashes with 20 %% loss: both survivors withdrew %v within %v", gone, time.Since(crashed).Round(100*time.Millisecond))
}

// suspicions counts, from each agent's log, memberlist's suspicions and
// dead verdicts and the data path's down verdicts, to show what the loss did.
func suspicions(hosts []*lab.Host) string {
	var out strings.Builder
	for _, h := range hosts {
		log, err := os.ReadFile(h.LogPath())
		if err != nil {
			fmt.Fprintf(&out, " %s: %v;", h.Name, err)
			continue
		}
		s := string(log)
		fmt.Fprintf(&out, " %s suspected %d, declared dead %d, saw the data path down %d times;", h.Name,
			strings.Count(s, "msg=\"Suspect "), strings.Count(s, "msg=\"Marking "), strings.Count(s, "stopped answering on the data path"))
	}
	return out.String()
}
