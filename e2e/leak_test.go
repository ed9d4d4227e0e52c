package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// unreachableWait bounds how long an ICMP error about a packet to an
// unrouted block may take: it comes from the sending host itself.
const unreachableWait = 2 * time.Second

// TestNoLeakToUnroutedBlock: a packet for a block of the pool that no host
// routes (here: one nobody holds) fails at once on the sending host with
// ICMP "host unreachable" from the pod's own host (a host-local sender gets
// "no route to host"), and the outside host, where the default route
// leads, sees nothing addressed to the pool.
func TestNoLeakToUnroutedBlock(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 2})
	ctx := timeout(t, 2*time.Minute)
	h1 := l.Host(1)
	statuses, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	if err := poll.Until(ctx, "the mesh's routes", 100*time.Millisecond, func() error { return expectMeshRoutes(statuses, l.Hosts()) }); err != nil {
		t.Fatal(err)
	}
	pod := addPods(t, ctx, h1, 1)[0]
	free := freeAddr(t, statuses)

	capture, err := l.Outside.Capture("em1")
	if err != nil {
		t.Fatal(err)
	}
	defer capture.Close()
	// The capture works: the outside host sees the pod's masqueraded ping.
	if _, err := pod.Ping(ctx, l.OutsideIP()); err != nil {
		t.Fatalf("pod -> outside: %v", err)
	}

	expectUnreachable(t, ctx, pod.Namespace, free, h1.IP)
	expectUnreachable(t, ctx, h1.Namespace, free, netip.Addr{})
	expectNothingToPool(t, capture)
}

// freeAddr returns an address of the pool in a block no host of statuses
// holds.
func freeAddr(t *testing.T, statuses map[string]lab.Status) netip.Addr {
	t.Helper()
	for a := podPool.Addr(); podPool.Contains(a); {
		held := false
		for _, s := range statuses {
			held = held || s.Block.Contains(a)
		}
		if !held {
			return a.Next()
		}
		b := a.As4()
		b[2] += 2 // the next /23
		a = netip.AddrFrom4(b)
	}
	t.Fatal("every block of the pool is held")
	return netip.Addr{}
}

// expectUnreachable sends one echo request from ns to dst and wants it to
// fail at once: an ICMP "host unreachable" from host (a pod's own host), or,
// for a sender on the host itself (host zero), an error from the send.
func expectUnreachable(t *testing.T, ctx context.Context, ns lab.Namespace, dst, host netip.Addr) {
	t.Helper()
	got, err := ns.EchoOnce(ctx, dst, unreachableWait)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case host.IsValid() && got.Unreachable && got.From == host && got.Code == 1:
		t.Logf("no leak: echo from %s to %s: ICMP host unreachable from %s after %v", ns.Name, dst, got.From, got.After.Round(time.Microsecond))
	case !host.IsValid() && got.SendErr != nil:
		t.Logf("no leak: echo from %s to %s: %v after %v", ns.Name, dst, got.SendErr, got.After.Round(time.Microsecond))
	default:
		t.Errorf("echo from %s to unrouted %s: %+v; want it refused at once by %v", ns.Name, dst, got, host)
	}
}

// expectNothingToPool fails the test for every packet the capture saw from
// or to the pool.
func expectNothingToPool(t *testing.T, c *lab.Capture) {
	t.Helper()
	leaked, err := c.Matching(podPool)
	if err != nil {
		t.Fatalf("capture: %v", err)
	}
	if len(leaked) > 0 {
		t.Errorf("the outside host saw %d packets of the pool %s, e.g. %s", len(leaked), podPool, fmt.Sprint(leaked[:min(5, len(leaked))]))
	}
	t.Logf("no leak: outside capture saw %d packets, none of the pool", c.Count())
}
