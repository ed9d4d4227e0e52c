package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// failureDetectionBound is how long peers may take to withdraw the route of
// a host that died without a word. The agent's gossip timers detect a dead
// member in a few seconds; the bound is generous for a loaded CI machine.
const failureDetectionBound = 45 * time.Second

// TestCrash: kill -9 one agent and cut its host's link. Every peer withdraws
// the route to its block within the failure-detection bound. Restored, the
// host gets the same block back, the routes return and its old pods answer.
func TestCrash(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 3})
	ctx := timeout(t, 3*time.Minute)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	before, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	block := before[h3.Name].Block
	victimPod := addPods(t, ctx, h3, 1)[0]
	client := addPods(t, ctx, h1, 1)[0]
	serveEcho(t, victimPod.Namespace)
	if _, err := client.Ping(ctx, victimPod.IP); err != nil {
		t.Fatalf("before the crash: %v", err)
	}

	if err := h3.KillAgent(); err != nil {
		t.Fatal(err)
	}
	if err := h3.CutLink(ctx); err != nil {
		t.Fatal(err)
	}
	crashed := time.Now()
	withdrawn := map[string]time.Duration{}
	survivors := []*lab.Host{h1, h2}
	detectCtx := timeout(t, failureDetectionBound)
	err = poll.Until(detectCtx, fmt.Sprintf("every peer to withdraw %s", block), 100*time.Millisecond, func() error {
		for _, h := range survivors {
			if _, done := withdrawn[h.Name]; done {
				continue
			}
			r, err := readRoutes(h)
			if err != nil {
				return err
			}
			if _, ok := r.peers[block]; !ok {
				withdrawn[h.Name] = time.Since(crashed)
			}
		}
		if len(withdrawn) < len(survivors) {
			return fmt.Errorf("withdrawn so far: %v", withdrawn)
		}
		return nil
	})
	if err != nil {
		for _, h := range survivors {
			out, serr := h.StatusText(ctx, "json")
			t.Logf("%s status: %s %v", h.Name, out, serr)
		}
		t.Fatal(err)
	}
	var slowest time.Duration
	for _, d := range withdrawn {
		slowest = max(slowest, d)
	}
	t.Logf("crash: all peers withdrew %s within %v of kill -9 and link cut (%v)", block, slowest.Round(time.Millisecond), withdrawn)
	for _, h := range survivors {
		s, err := h.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Gossip may still count h3 in: its route went because its host
		// and its agent were both silent, and the status says so.
		if m, ok := s.Member(h3.Name); ok && (m.Route == "programmed" || m.State == "alive" && !strings.Contains(m.RouteReason, "nor its agent")) {
			t.Errorf("%s reports %s as %s with route %q (%q)", h.Name, h3.Name, m.State, m.Route, m.RouteReason)
		}
		if !s.Ready {
			t.Errorf("%s lost readiness after one of three hosts died: %s", h.Name, s.Reason)
		}
	}

	if err := h3.RestoreLink(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h3.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	restored := time.Now()
	s3, err := h3.WaitReady(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s3.Block != block {
		t.Errorf("h3 came back with block %s, want its old %s", s3.Block, block)
	}
	after, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range after {
		if s.Block != before[name].Block {
			t.Errorf("%s holds %s after the crash, %s before", name, s.Block, before[name].Block)
		}
	}
	err = poll.Until(ctx, "the routes to return", 100*time.Millisecond, func() error {
		return expectMeshRoutes(after, l.Hosts())
	})
	if err != nil {
		t.Fatal(err)
	}
	meshBack := time.Since(restored)
	rtt, err := client.Ping(ctx, victimPod.IP)
	if err != nil {
		t.Fatalf("old pod on h3 after restore: %v", err)
	}
	c, err := client.DialEcho(ctx, netip.AddrPortFrom(victimPod.IP, echoPort))
	if err != nil {
		t.Fatalf("old pod on h3 after restore: %v", err)
	}
	defer c.Close()
	if err := c.RoundTrip("still there?"); err != nil {
		t.Fatal(err)
	}
	t.Logf("crash: restored h3 got %s back and every route returned within %v of restart; old pod %s answers (ping %v)",
		s3.Block, meshBack.Round(time.Millisecond), victimPod.IP, rtt)
}
