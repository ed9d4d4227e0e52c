package e2e

import (
	"context"
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

	a1, a2 := pods[h1][0], pods[h1][1]
	b1, c1 := pods[h2][0], pods[h3][0]
	checkReach(t, ctx, []reach{
		{"pod->pod same host", a1.Namespace, a2.IP, a1.IP},
		{"pod->pod h1->h2", a1.Namespace, b1.IP, a1.IP},
		{"pod->pod h2->h3", b1.Namespace, c1.IP, b1.IP},
		{"pod->pod h3->h1", c1.Namespace, a2.IP, c1.IP},
		{"pod->own host", b1.Namespace, h2.IP, netip.Addr{}},
		{"host->remote pod h1->h3", h1.Namespace, c1.IP, netip.Addr{}},
		{"host->remote pod h3->h2", h3.Namespace, b1.IP, netip.Addr{}},
		{"pod->outside (masqueraded)", c1.Namespace, l.OutsideIP(), h3.IP},
		{"pod->outside from h1 (masqueraded)", a2.Namespace, l.OutsideIP(), h1.IP},
	})
}

// reach is one check that from reaches to: an ICMP echo and, when
// wantSource is set, a TCP echo whose server must see the client as
// wantSource (pod to pod: untranslated; to the outside: masqueraded).
type reach struct {
	name       string
	from       lab.Namespace
	to         netip.Addr
	wantSource netip.Addr
}

// checkReach runs the checks in turn, reports each that fails and logs
// what each measured.
func checkReach(t *testing.T, ctx context.Context, checks []reach) {
	t.Helper()
	for _, c := range checks {
		rtt, err := c.from.Ping(ctx, c.to)
		if err != nil {
			t.Errorf("%s: ICMP %s: %v", c.name, c.to, err)
			continue
		}
		if !c.wantSource.IsValid() {
			t.Logf("%s (%s): ping %v", c.name, c.to, rtt)
			continue
		}
		start := time.Now()
		conn, err := c.from.DialEcho(ctx, netip.AddrPortFrom(c.to, echoPort))
		if err != nil {
			t.Errorf("%s: TCP: %v", c.name, err)
			continue
		}
		err = conn.RoundTrip("hello from " + c.from.Name)
		elapsed := time.Since(start)
		conn.Close()
		switch {
		case err != nil:
			t.Errorf("%s: TCP: %v", c.name, err)
		case conn.Source.Addr() != c.wantSource:
			t.Errorf("%s: the server saw the client as %s, want %s", c.name, conn.Source.Addr(), c.wantSource)
		default:
			t.Logf("%s (%s): ping %v, TCP connect+echo %v, source seen %s", c.name, c.to, rtt, elapsed, conn.Source.Addr())
		}
	}
}
