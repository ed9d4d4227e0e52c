package e2e

import (
	"net/netip"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
)

// TestReachability: 3 hosts with 2 pods each. Pods reach each other on one
// host and across hosts (ICMP and TCP, unmasqueraded), their own host, and
// the outside, which sees the node's address; a host reaches remote pods.
func TestReachability(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 3})
	ctx := timeout(t, 2*time.Minute)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	pods := map[*lab.Host][]*lab.Pod{}
	for _, h := range l.Hosts() {
		pods[h] = addPods(t, ctx, h, 2)
		for _, p := range pods[h] {
			serveEcho(t, p.Namespace)
		}
	}
	serveEcho(t, l.Outside)

	type probe struct {
		name string
		from lab.Namespace
		to   netip.Addr
		// wantSource is the client address the server must see over TCP;
		// zero for ICMP-only probes.
		wantSource netip.Addr
	}
	a1, a2 := pods[h1][0], pods[h1][1]
	b1, c1 := pods[h2][0], pods[h3][0]
	probes := []probe{
		{"pod->pod same host", a1.Namespace, a2.IP, a1.IP},
		{"pod->pod h1->h2", a1.Namespace, b1.IP, a1.IP},
		{"pod->pod h2->h3", b1.Namespace, c1.IP, b1.IP},
		{"pod->pod h3->h1", c1.Namespace, a2.IP, c1.IP},
		{"pod->own host", b1.Namespace, h2.IP, netip.Addr{}},
		{"host->remote pod h1->h3", h1.Namespace, c1.IP, netip.Addr{}},
		{"host->remote pod h3->h2", h3.Namespace, b1.IP, netip.Addr{}},
		{"pod->outside (masqueraded)", c1.Namespace, l.OutsideIP(), h3.IP},
		{"pod->outside from h1 (masqueraded)", a2.Namespace, l.OutsideIP(), h1.IP},
	}
	for _, p := range probes {
		rtt, err := p.from.Ping(ctx, p.to)
		if err != nil {
			t.Errorf("%s: ICMP %s: %v", p.name, p.to, err)
			continue
		}
		if !p.wantSource.IsValid() {
			t.Logf("reachability: %s (%s): ping %v", p.name, p.to, rtt)
			continue
		}
		start := time.Now()
		c, err := p.from.DialEcho(ctx, netip.AddrPortFrom(p.to, echoPort))
		if err != nil {
			t.Errorf("%s: TCP: %v", p.name, err)
			continue
		}
		err = c.RoundTrip("hello from " + p.from.Name)
		elapsed := time.Since(start)
		c.Close()
		if err != nil {
			t.Errorf("%s: TCP: %v", p.name, err)
			continue
		}
		if c.Source.Addr() != p.wantSource {
			t.Errorf("%s: server saw the client as %s, want %s", p.name, c.Source.Addr(), p.wantSource)
		}
		t.Logf("reachability: %s (%s): ping %v, TCP connect+echo %v, source seen %s", p.name, p.to, rtt, elapsed, c.Source.Addr())
	}
}
