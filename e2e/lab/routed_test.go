package lab_test

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
)

// TestRoutedHarness proves the routed topology without grapevine: hosts on
// the two LANs reach each other and the outside host through the router,
// which holds only its two connected networks; a moved host answers at its
// new address on the other LAN; Close removes the router and the second
// switch too.
func TestRoutedHarness(t *testing.T) {
	l := env.Lab(t, labtest.Options{Hosts: 1, Routed: true, Hosts2: 1, CNIOnly: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h1, h2 := l.Host(1), l.Host(2)
	if h1.LAN != lab.LAN1 || h2.LAN != lab.LAN2 || h2.IP != netip.MustParseAddr("172.16.253.2") {
		t.Fatalf("hosts: h1 %s on LAN %d, h2 %s on LAN %d", h1.IP, h1.LAN, h2.IP, h2.LAN)
	}
	ping := func(from lab.Namespace, name string, dst netip.Addr) {
		t.Helper()
		if _, err := from.Ping(ctx, dst); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	ping(h1.Namespace, "h1 -> h2 across the router", h2.IP)
	ping(h2.Namespace, "h2 -> h1 across the router", h1.IP)
	ping(h2.Namespace, "h2 -> outside", l.OutsideIP())

	routes, err := l.Router.Routes()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst != nil && !strings.HasPrefix(r.Dst.String(), "172.16.25") {
			t.Errorf("the router knows more than its two LANs: %v", r)
		}
	}

	if err := h2.Move(ctx, lab.LAN1); err != nil {
		t.Fatal(err)
	}
	if h2.IP != netip.MustParseAddr("172.16.254.2") || h2.LAN != lab.LAN1 {
		t.Fatalf("moved h2: %s on LAN %d", h2.IP, h2.LAN)
	}
	ping(h1.Namespace, "h1 -> h2 on the same LAN after the move", h2.IP)
	if err := l.Partition(ctx, h2); err != nil {
		t.Fatalf("partition of a first-LAN host: %v", err)
	}

	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if names, _ := lab.Namespaces(lab.NamePrefix + l.ID + "-"); len(names) != 0 {
		t.Errorf("namespaces left after Close: %v", names)
	}
	if _, err := os.Stat(l.Dir); !os.IsNotExist(err) {
		t.Errorf("lab directory %s left after Close (%v)", l.Dir, err)
	}
}
