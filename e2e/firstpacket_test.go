//go:build firstpacket_e2e

package e2e

import (
	"net/netip"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/labtest"
)

// This test finds a bug that is not fixed yet: on a loaded machine (two
// busy loops beside make test), a new dual-stack pod's first IPv6 packet
// sometimes goes unanswered, even with 10 s to answer (pod 24 and pod 164
// of 200 in two runs); unloaded it passed every run. Until that is found
// and fixed it runs on its own, `make e2e-first-packet`, not in make test,
// so that main stays green while the bug stays in view (issue 21).

// firstPacketPods is how many pods in a row must each get their first
// packet through (issue 21's tests: no DAD wait, nothing learnt late).
const firstPacketPods = 200

// TestDualStackFirstPacket: 200 dual-stack pods started one after another
// on h1, each sending exactly one echo request over IPv6 and one over IPv4
// to a pod on h2 as soon as its ADD returns, and then deleted. Every one
// of those first packets must be answered: the pod's /128 is not held back
// by duplicate address detection, its gateway is a PERMANENT neighbour,
// and h1 reaches it by route and PERMANENT entry before ADD returns.
func TestDualStackFirstPacket(t *testing.T) {
	t.Parallel()
	const pool6 = "fd00:10:244::/48"
	l := env.Lab(t, labtest.Options{Hosts: 2, NoAgents: true, AgentArgs: []string{"--pool6", pool6}})
	ctx := timeout(t, 4*time.Minute)
	h1, h2 := l.Host(1), l.Host(2)
	startWithIPv6Underlay(t, ctx, l, l.Hosts()...)
	target := addPods(t, ctx, h2, 1)[0]
	// The route to h2's blocks comes from gossip: a first pod waits for it
	// once, so that the pods below test their own wiring, not the mesh.
	probe := addPods(t, ctx, h1, 1)[0]
	checkReach(t, ctx, []reach{
		{"pod on h1 -> pod on h2 over IPv6", probe.Namespace, target.IP6, netip.Addr{}},
		{"pod on h1 -> pod on h2 over IPv4", probe.Namespace, target.IP, netip.Addr{}},
	})
	if err := probe.Delete(ctx); err != nil {
		t.Fatal(err)
	}

	// One request each, and long enough a wait for its answer that a
	// loaded machine's scheduling cannot pass for a lost packet.
	var slowest time.Duration
	for i := range firstPacketPods {
		p, err := h1.AddPod(ctx)
		if err != nil {
			t.Fatalf("pod %d: %v", i, err)
		}
		for _, dst := range []netip.Addr{target.IP6, target.IP} {
			rtt, err := p.Namespace.PingOnce(dst, 10*time.Second)
			if err != nil {
				t.Fatalf("pod %d (%s, %s): its first packet: %v", i, p.IP, p.IP6, err)
			}
			if rtt > time.Second {
				t.Logf("pod %d: the answer to its first packet to %s took %v", i, dst, rtt)
			}
			slowest = max(slowest, rtt)
		}
		if err := p.Delete(ctx); err != nil {
			t.Fatalf("pod %d: %v", i, err)
		}
	}
	t.Logf("%d pods in a row: every first packet answered over IPv6 and IPv4, the slowest in %v", firstPacketPods, slowest)
}
