package e2e

import (
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// TestPodHostRepaired: a pod's host side damaged by hand (its /32 route and
// PERMANENT neighbour entry deleted, proxy_arp turned off on its veth) is
// put back by the agent, and the pod is reachable from another host's pod
// again. (The masquerade rule's repair is node's TestWatchSeesMasqueradeChanges.)
func TestPodHostRepaired(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 2})
	ctx := timeout(t, 2*time.Minute)
	h1, h2 := l.Host(1), l.Host(2)
	if _, err := lab.WaitMesh(ctx, l.Hosts()); err != nil {
		t.Fatal(err)
	}
	a := addPods(t, ctx, h1, 1)[0]
	b := addPods(t, ctx, h2, 1)[0]
	name, err := a.HostVeth()
	if err != nil {
		t.Fatal(err)
	}

	// The setting first: the kernel announces no change of it, so it is
	// put back by the pass the route's deletion starts.
	for _, cmd := range [][]string{
		{"sysctl", "-w", "net.ipv4.conf." + name + ".proxy_arp=0"},
		{"ip", "neigh", "del", a.IP.String(), "dev", name},
		{"ip", "route", "del", a.IP.String() + "/32"},
	} {
		if out, err := h1.Run(ctx, cmd[0], cmd[1:]...); err != nil {
			t.Fatalf("%v: %v\n%s", cmd, err, out)
		}
	}
	err = poll.Until(ctx, "the pod's host side put back", 100*time.Millisecond, func() error {
		routes, err := readRoutes(h1)
		if err != nil {
			return err
		}
		return checkPodShape(a, routes)
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Ping(ctx, a.IP); err != nil {
		t.Errorf("pod on h2 -> repaired pod on h1: %v", err)
	}
}
