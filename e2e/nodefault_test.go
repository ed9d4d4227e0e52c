package e2e

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
)

// TestNoDefaultRoute: a host without an IPv4 default route (an air-gapped
// edge site) still wires working pods. Proxy ARP would not answer for the
// pods' gateway 169.254.1.1 there, because the host has no route to it; the
// pods know the gateway's MAC from the plugin instead. Pods on that host
// reach pods on another host and their own host, and are reached from both.
func TestNoDefaultRoute(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 2, NoAgents: true})
	ctx := timeout(t, 2*time.Minute)
	h1, h2 := l.Host(1), l.Host(2)
	if _, err := h1.Run(ctx, "ip", "route", "del", "default"); err != nil {
		t.Fatal(err)
	}
	if out, err := h1.Run(ctx, "ip", "-4", "route", "show", "default"); err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Fatalf("h1 still has a default route: %q (%v)", out, err)
	}
	if err := l.StartAgents(ctx, l.Hosts()...); err != nil {
		t.Fatal(err)
	}
	statuses, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	if err := expectPeerRoutes(h1, statuses[h1.Name].Block, meshRoutes(statuses, l.Hosts(), h1)); err != nil {
		t.Error(err)
	}
	a := addPods(t, ctx, h1, 1)[0]
	b := addPods(t, ctx, h2, 1)[0]
	routes, err := readRoutes(h1)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkPodShape(a, routes); err != nil {
		t.Error(err)
	}
	serveEcho(t, a.Namespace)
	serveEcho(t, b.Namespace)

	checkReach(t, ctx, []reach{
		{"pod on h1 -> pod on h2", a.Namespace, b.IP, a.IP},
		{"pod on h2 -> pod on h1", b.Namespace, a.IP, b.IP},
		{"pod on h1 -> h1", a.Namespace, h1.IP, netip.Addr{}},
		{"pod on h1 -> h2", a.Namespace, h2.IP, netip.Addr{}},
		{"h1 -> its pod", h1.Namespace, a.IP, netip.Addr{}},
		{"h2 -> pod on h1", h2.Namespace, a.IP, netip.Addr{}},
	})
}
