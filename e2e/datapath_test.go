package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// freezeFor is how long TestFrozenAgent keeps an agent stopped: far past
// memberlist's verdict (dead after about 6 s), as in a long GC pause, a stuck
// disk write or a debugger.
const freezeFor = 30 * time.Second

// pingInterval is the pods' ping rate in the data-path scenarios.
const pingInterval = 100 * time.Millisecond

// probeInterval is the agent's default data-path probe interval; a frozen
// agent's pods may lose at most one interval's worth of pings.
const probeInterval = time.Second

// TestFrozenAgent: the agent of a healthy host is stopped (SIGSTOP) for 30 s.
// Its peers' memberlist declares it dead, but its host keeps answering on
// the data path, so the peers keep its route, and pods pinging across hosts
// in both directions lose at most one probe interval's worth of pings
// (the goal, and the usual outcome, is none). After SIGCONT it is alive
// again everywhere.
func TestFrozenAgent(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 3})
	ctx := timeout(t, 3*time.Minute)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	before, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	block := before[h3.Name].Block
	a := addPods(t, ctx, h1, 1)[0]
	c := addPods(t, ctx, h3, 1)[0]
	if _, err := a.Ping(ctx, c.IP); err != nil {
		t.Fatalf("before the freeze: %v", err)
	}
	f := freezeAgent(t, ctx, h3, []*lab.Host{h1, h2}, a, c, "h3 dead, route kept on the data path", func(lab.Member) bool { return true })
	r, err := readRoutes(h1)
	if err != nil {
		t.Fatal(err)
	}
	if r.peers[block] != h3.IP {
		t.Errorf("h1 lost the route %s via %s during the freeze: %v", block, h3.IP, r.peers)
	}
	f.thaw(t, ctx, l.Hosts(), "h1 pod", "frozen h3's pod")
}

// freezeScenario is a frozen agent in progress: two pods ping each other in
// both directions while the agent of one pod's host is stopped.
type freezeScenario struct {
	host                 *lab.Host
	toFrozen, fromFrozen *lab.PingStream
	// frozenAt is when the agent was stopped; deadAfter how long its
	// peers took to call it dead.
	frozenAt  time.Time
	deadAfter time.Duration
}

// freezeAgent starts pings from a to b and back, stops the agent of b's
// host, waits until every peer calls it dead but keeps its route on the
// data path alone (and kept says the member looks as the scenario needs),
// then lets the freeze run out to freezeFor. Without that verdict the
// scenario did not happen, and the test fails.
func freezeAgent(t *testing.T, ctx context.Context, host *lab.Host, peers []*lab.Host, a, b *lab.Pod, what string, kept func(lab.Member) bool) *freezeScenario {
	t.Helper()
	f := &freezeScenario{host: host}
	var err error
	if f.toFrozen, err = a.StartPings(b.IP, pingInterval); err != nil {
		t.Fatal(err)
	}
	if f.fromFrozen, err = b.StartPings(a.IP, pingInterval); err != nil {
		t.Fatal(err)
	}
	if err := host.FreezeAgent(); err != nil {
		t.Fatal(err)
	}
	f.frozenAt = time.Now()
	t.Cleanup(func() { host.ThawAgent() })
	for _, h := range peers {
		_, err := h.WaitStatus(timeout(t, failureDetectionBound), what, func(s lab.Status) bool {
			m, ok := s.Member(host.Name)
			return ok && m.State == "dead" && m.Route == "programmed" && slices.Equal(m.KeptBy, []string{"data path"}) && kept(m)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	f.deadAfter = time.Since(f.frozenAt)
	if err := poll.Sleep(ctx, freezeFor-f.deadAfter); err != nil {
		t.Fatal(err)
	}
	return f
}

// thaw resumes the agent, waits until the mesh of hosts is whole again and
// the pings ran a little longer, and fails the test if either direction
// (named from and to) lost more than one probe interval's worth of pings.
func (f *freezeScenario) thaw(t *testing.T, ctx context.Context, hosts []*lab.Host, from, to string) {
	t.Helper()
	if err := f.host.ThawAgent(); err != nil {
		t.Fatal(err)
	}
	thawed := time.Now()
	if _, err := lab.WaitMesh(ctx, hosts); err != nil {
		t.Fatal(err)
	}
	alive := time.Since(thawed)
	if err := poll.Sleep(ctx, 2*time.Second); err != nil { // pings after the return
		t.Fatal(err)
	}
	there, back := f.toFrozen.Stop(time.Second), f.fromFrozen.Stop(time.Second)
	allowed := int(probeInterval / pingInterval)
	for _, x := range []struct {
		what string
		r    lab.PingResult
	}{{from + " -> " + to, there}, {to + " -> " + from, back}} {
		t.Logf("frozen agent: %s: %d of %d pings lost over %v frozen %v", x.what, len(x.r.Lost), x.r.Sent, freezeFor, x.r.Lost)
		if len(x.r.Lost) > allowed {
			t.Errorf("%s: %d pings lost, want at most %d (one probe interval)", x.what, len(x.r.Lost), allowed)
		}
	}
	t.Logf("frozen agent: peers called %s dead %v into the freeze and kept its route; alive everywhere %v after SIGCONT",
		f.host.Name, f.deadAfter.Round(time.Millisecond), alive.Round(time.Millisecond))
}

// TestLinkCut: h3's link is cut while its agent runs. Both sides lose gossip
// and the data path: h1 and h2 withdraw h3's block, and h3 withdraws theirs.
// With the routes withdrawn a pod's packets to the other side fail at once
// on its own host, and the outside host sees nothing of the pool.
func TestLinkCut(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 3})
	ctx := timeout(t, 3*time.Minute)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	before, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	a := addPods(t, ctx, h1, 1)[0]
	c := addPods(t, ctx, h3, 1)[0]
	if _, err := a.Ping(ctx, c.IP); err != nil {
		t.Fatalf("before the cut: %v", err)
	}
	if err := h3.CutLink(ctx); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	gone := map[string]time.Duration{}
	err = poll.Until(timeout(t, failureDetectionBound), "both sides to withdraw each other's routes", 100*time.Millisecond, func() error {
		for _, h := range l.Hosts() {
			if _, done := gone[h.Name]; done {
				continue
			}
			r, err := readRoutes(h)
			if err != nil {
				return err
			}
			if withdrawn(h, r, before, h3) {
				gone[h.Name] = time.Since(cut)
			}
		}
		if len(gone) < 3 {
			return fmt.Errorf("withdrawn so far: %v", gone)
		}
		return nil
	})
	if err != nil {
		for _, h := range l.Hosts() {
			out, _ := h.StatusText(ctx, "json")
			t.Logf("%s status: %s", h.Name, out)
		}
		t.Fatal(err)
	}
	t.Logf("link cut: routes withdrawn after %v (h3 withdrew its peers' after %v)", gone, gone[h3.Name].Round(time.Millisecond))
	if !h3.AgentRunning() {
		t.Fatal("h3's agent died")
	}

	// Until the routes went, the switch could flood frames for h3's MAC
	// out of every port; from now on nothing may leave for the pool.
	capture, err := l.Outside.Capture("em1")
	if err != nil {
		t.Fatal(err)
	}
	defer capture.Close()

	expectUnreachable(t, ctx, a.Namespace, c.IP, h1.IP)
	expectUnreachable(t, ctx, h2.Namespace, c.IP, netip.Addr{})
	expectUnreachable(t, ctx, c.Namespace, a.IP, h3.IP)
	expectNothingToPool(t, capture)
}

// withdrawn reports whether h no longer routes across the cut: h3 routes
// no peer, the others do not route h3's block.
func withdrawn(h *lab.Host, r hostRoutes, before map[string]lab.Status, cutHost *lab.Host) bool {
	if h == cutHost {
		return len(r.peers) == 0
	}
	_, ok := r.peers[before[cutHost.Name].Block]
	return !ok
}
