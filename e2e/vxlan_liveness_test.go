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

// TestCrossSubnetLiveness runs the data-path liveness scenarios on the VXLAN
// path, one after the other in one routed lab: h1 and h2 share a LAN, h3
// sits behind the router, so h3 is a VXLAN peer of both and h2 a direct peer
// of h1. Each subtest starts from a whole mesh and leaves one behind, except
// the last.
func TestCrossSubnetLiveness(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 2, Routed: true, Hosts2: 1})
	h1, h3 := l.Host(1), l.Host(3)
	ctx := timeout(t, 6*time.Minute)
	p1, p3 := addPods(t, ctx, h1, 1)[0], addPods(t, ctx, h3, 1)[0]
	for _, sub := range []struct {
		name string
		run  func(*testing.T, *lab.Lab, *lab.Pod, *lab.Pod)
	}{
		{"frozen agent", crossSubnetFrozen},
		{"leave, host gone, and crash", crossSubnetWithdraw},
		// Last: after a cut the mesh heals only on memberlist's reconnect
		// round (every 30 s); restarted agents rejoin at once.
		{"link cut", crossSubnetLinkCut},
	} {
		if !t.Run(sub.name, func(t *testing.T) { sub.run(t, l, p1, p3) }) {
			return // the lab is in no known state for the next one
		}
	}
}

// crossSubnetFrozen: h3's agent is stopped (SIGSTOP) for 30 s while its
// host stays healthy. h1 and h2 declare it dead but keep its route,
// neighbour and FDB entry on the data path, which they probe at h3's host
// address across the router, not at its VTEP address through the tunnel.
// p1 and p3 ping each other across the router all along and lose at most
// one probe interval's worth.
func crossSubnetFrozen(t *testing.T, l *lab.Lab, p1, p3 *lab.Pod) {
	ctx := timeout(t, 3*time.Minute)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	statuses, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	vtep3 := statuses[h3.Name].Block.Addr()
	if _, err := p1.Ping(ctx, p3.IP); err != nil {
		t.Fatalf("before the freeze: %v", err)
	}
	onRouter := capture(t, l.Router, "em2") // h3's side of the router
	f := freezeAgent(t, ctx, h3, []*lab.Host{h1, h2}, p1, p3, "h3 dead, its VXLAN route kept on the data path", func(m lab.Member) bool {
		return m.Path == "vxlan" && m.DataPath == "up"
	})
	// Still there at the end of the freeze: route, neighbour and FDB entry.
	if err := expectCrossSubnetPaths(ctx, statuses, l.Hosts()); err != nil {
		t.Errorf("during the freeze: %v", err)
	}
	// The peers probe h3's host address in the clear, and its kernel
	// answers; nothing is sent to its VTEP address through the tunnel.
	probes := map[string]int{}
	seen, err := onRouter.Matching(netip.PrefixFrom(h3.IP, 32))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range seen {
		if p.Protocol == 1 && p.At.After(f.frozenAt) {
			probes[fmt.Sprintf("%s > %s", p.Src, p.Dst)]++
		}
	}
	for _, h := range []*lab.Host{h1, h2} {
		there, back := fmt.Sprintf("%s > %s", h.IP, h3.IP), fmt.Sprintf("%s > %s", h3.IP, h.IP)
		if probes[there] == 0 || probes[back] == 0 {
			t.Errorf("router saw no echo requests and replies in the clear between %s and h3's host address while its agent was frozen: %v", h.Name, probes)
		}
	}
	if c := onRouter.Total(netip.PrefixFrom(vtep3, 32)); c.Inner != 0 {
		t.Errorf("the router saw %d VXLAN packets to or from h3's VTEP address %s: the data path is probed through the tunnel", c.Inner, vtep3)
	}
	t.Logf("frozen agent: echo packets between the peers and h3's host address %s on the router: %v", h3.IP, probes)

	f.thaw(t, ctx, l.Hosts(), "p1", "frozen h3's p3 over VXLAN")
}

// crossSubnetLinkCut: h3's link is cut while its agent runs. h1 and h2
// withdraw h3's route, neighbour and FDB entry (and the VXLAN device with
// it, their only VXLAN peer), and h3 withdraws theirs. Then a pod's packets
// to h3's block fail at once on their own host, and neither the router nor
// the outside host sees anything of the pool: no pod addresses in the clear,
// no VXLAN packets for the withdrawn block.
func crossSubnetLinkCut(t *testing.T, l *lab.Lab, p1, p3 *lab.Pod) {
	ctx := timeout(t, 3*time.Minute)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	statuses, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	b1, b2, b3 := statuses["h1"].Block, statuses["h2"].Block, statuses["h3"].Block
	// What each host must hold once the cut is noticed: h1 and h2 only
	// each other, directly; h3 nothing.
	after := map[*lab.Host]map[netip.Prefix]peerRoute{
		h1: {b2: direct(h2.IP)},
		h2: {b1: direct(h1.IP)},
		h3: {},
	}
	if err := h3.CutLink(ctx); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	gone := map[string]time.Duration{}
	err = poll.Until(timeout(t, failureDetectionBound), "both sides to withdraw each other's routes and VXLAN entries", 100*time.Millisecond, func() error {
		var last error
		for h, want := range after {
			if _, done := gone[h.Name]; done {
				continue
			}
			if err := expectPaths(ctx, h, want, nil); err != nil {
				last = err
				continue
			}
			gone[h.Name] = time.Since(cut)
		}
		return last
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("link cut with the agent alive: withdrawn after %v", gone)
	if !h3.AgentRunning() {
		t.Fatal("h3's agent died")
	}

	// A leak would leave h1 or h2 either encapsulated towards h3's host
	// address, through the router's LAN1 side (its LAN2 side can forward
	// nothing to the cut h3), or in the clear by the default route, to the
	// outside host; h3's own cannot leave at all.
	captures := map[string]*lab.Capture{
		"router's em1": capture(t, l.Router, "em1"),
		"outside host": capture(t, l.Outside, "em1"),
	}
	expectUnreachable(t, ctx, p1.Namespace, p3.IP, h1.IP)
	expectUnreachable(t, ctx, h2.Namespace, p3.IP, netip.Addr{})
	expectUnreachable(t, ctx, p3.Namespace, p1.IP, h3.IP)
	// Each capture reads on its own goroutine, in order: once it has seen
	// p1's (masqueraded) ping to its namespace, sent last, it has seen
	// everything before, and it is shown to work.
	for name, dst := range map[string]netip.Addr{"router's em1": l.RouterIP(lab.LAN1), "outside host": l.OutsideIP()} {
		if _, err := p1.Ping(ctx, dst); err != nil {
			t.Fatalf("p1 -> %s: %v", dst, err)
		}
		err := poll.Until(timeout(t, 30*time.Second), name+" to see p1's ping", 100*time.Millisecond, func() error {
			seen, err := captures[name].Matching(netip.PrefixFrom(dst, 32))
			if err != nil {
				return err
			}
			for _, p := range seen {
				if p.Protocol == 1 && p.Src == h1.IP {
					return nil
				}
			}
			return fmt.Errorf("%d packets to or from %s", len(seen), dst)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for name, c := range captures {
		if n := c.Total(podPool); n.Plain != 0 || n.Inner != 0 {
			t.Errorf("%s saw the pool after the routes were withdrawn: %d packets in the clear, %d inside VXLAN", name, n.Plain, n.Inner)
		}
		if n := c.Total(b3); n.Inner != 0 {
			t.Errorf("%s saw %d VXLAN packets for the withdrawn block %s", name, n.Inner, b3)
		}
		t.Logf("no leak: %s saw %d packets, none of the pool", name, c.Count())
	}
}

// crossSubnetWithdraw: h1 has a direct peer (h2) and a VXLAN peer (h3).
// When both agents leave (SIGTERM) while their hosts stay up, h1 keeps both
// routes, and the VXLAN peer's neighbour and FDB entry, on the data path.
// When their hosts then leave the LAN (link cut) and, back again, when both
// crash (kill -9 and link cut), h1 withdraws the VXLAN peer's route,
// neighbour and FDB entry as it withdraws the direct peer's route, and
// removes the VXLAN device with its last VXLAN peer. Restarted, both come
// back with their blocks and every path returns. p1 on h1 pings p3 on h3
// over VXLAN while h3's agent is stopped: at most restartLossBound lost.
func crossSubnetWithdraw(t *testing.T, l *lab.Lab, p1, p3 *lab.Pod) {
	ctx := timeout(t, 4*time.Minute)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	statuses, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	b2, b3 := statuses["h2"].Block, statuses["h3"].Block

	// withdrawals waits until h1 holds neither block nor VXLAN state and
	// returns when each block's route went.
	withdrawals := func(since time.Time, bound time.Duration) map[string]time.Duration {
		t.Helper()
		gone := map[string]time.Duration{}
		err := poll.Until(timeout(t, bound), "h1 to withdraw h2 and h3", 100*time.Millisecond, func() error {
			routes, err := peerRoutesOf(h1)
			if err != nil {
				return err
			}
			for name, block := range map[string]netip.Prefix{"direct h2": b2, "vxlan h3": b3} {
				if _, ok := routes[block]; !ok && gone[name] == 0 {
					gone[name] = time.Since(since)
				}
			}
			if len(gone) < 2 {
				return fmt.Errorf("withdrawn so far: %v", gone)
			}
			return expectPaths(ctx, h1, map[netip.Prefix]peerRoute{}, nil)
		})
		if err != nil {
			t.Fatal(err)
		}
		return gone
	}

	if err := waitDataPathUp(ctx, []*lab.Host{h1}, "h2", "h3"); err != nil {
		t.Fatal(err)
	}
	pings, err := p1.StartPings(p3.IP, restartPingInterval)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	for _, h := range []*lab.Host{h2, h3} {
		go func() { errs <- h.StopAgent(ctx) }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// Their hosts answer: h1 sees both left and keeps their paths.
	s1, err := h1.WaitStatus(ctx, "h2 and h3 left, their routes kept by the data path", func(s lab.Status) bool {
		for _, name := range []string{"h2", "h3"} {
			m, ok := s.Member(name)
			if !ok || m.State != "left" || m.Route != "programmed" || m.RouteReason != "left; kept by data path" {
				return false
			}
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	// Longer than the probes' misses take: nothing goes.
	want, hostIPs := crossSubnetPaths(statuses, l.Hosts(), h1)
	err = poll.Hold(ctx, "h1 after h2's and h3's agents left, their hosts up", 5*time.Second, 250*time.Millisecond, func() error {
		return expectPaths(ctx, h1, want, hostIPs)
	})
	if err != nil {
		t.Fatal(err)
	}
	r := pings.Stop(time.Second)
	if len(r.Lost) > restartLossBound {
		t.Errorf("p1 -> p3 over VXLAN while h3's agent was stopped: %d of %d pings lost (at most %d allowed), at %v", len(r.Lost), r.Sent, restartLossBound, r.Lost)
	}
	m2, _ := s1.Member("h2")
	m3, _ := s1.Member("h3")
	t.Logf("leave: h1 keeps h2 (%s, %s) and h3 (%s, %s): %q; p1 -> p3 lost %d of %d pings", m2.Path, m2.DataPath, m3.Path, m3.DataPath, m3.RouteReason, len(r.Lost), r.Sent)

	// Then their hosts leave the LAN: withdrawn after the probes' misses.
	cut := time.Now()
	for _, h := range []*lab.Host{h2, h3} {
		if err := h.CutLink(ctx); err != nil {
			t.Fatal(err)
		}
	}
	left := withdrawals(cut, failureDetectionBound)
	t.Logf("leave, then host gone: h1 withdrew %v after the link cut", left)
	s1, err = h1.WaitStatus(ctx, "h2 and h3 withdrawn, and why", func(s lab.Status) bool {
		for _, name := range []string{"h2", "h3"} {
			m, ok := s.Member(name)
			if !ok || m.Route != "withdrawn" || m.RouteReason != "left; withdrawn: host not answering" {
				return false
			}
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []*lab.Host{h2, h3} {
		if err := h.RestoreLink(ctx); err != nil {
			t.Fatal(err)
		}
	}

	if err := l.StartAgents(ctx, h2, h3); err != nil {
		t.Fatal(err)
	}
	if statuses, err = lab.WaitMesh(ctx, l.Hosts()); err != nil {
		t.Fatal(err)
	}
	if err := expectCrossSubnetPaths(ctx, statuses, l.Hosts()); err != nil {
		t.Fatal(err)
	}

	crashed := time.Now()
	for _, h := range []*lab.Host{h2, h3} {
		if err := h.KillAgent(); err != nil {
			t.Fatal(err)
		}
		if err := h.CutLink(ctx); err != nil {
			t.Fatal(err)
		}
	}
	dead := withdrawals(crashed, failureDetectionBound)
	t.Logf("crash: h1 withdrew %v after kill -9 and link cut", dead)

	// Back with their blocks from disk: every path returns.
	for _, h := range []*lab.Host{h2, h3} {
		if err := h.RestoreLink(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.StartAgents(ctx, h2, h3); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	back, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	if err := poll.Until(ctx, "the cross-subnet paths back", 100*time.Millisecond, func() error { return expectCrossSubnetPaths(ctx, back, l.Hosts()) }); err != nil {
		t.Fatal(err)
	}
	for name, s := range back {
		if s.Block != statuses[name].Block {
			t.Errorf("%s came back with %s, had %s", name, s.Block, statuses[name].Block)
		}
	}
	t.Logf("crash: h2 and h3 restarted, every path back within %v", time.Since(restarted).Round(time.Millisecond))
}
