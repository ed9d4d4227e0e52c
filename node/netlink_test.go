package node

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/grapevine-net/grapevine/internal/testneeds"
)

// countingKernel counts the route writes that reach the kernel.
type countingKernel struct {
	Kernel
	writes atomic.Int64
}

func (c *countingKernel) AddRoute(r Route) error { c.writes.Add(1); return c.Kernel.AddRoute(r) }
func (c *countingKernel) ReplaceRoute(r Route) error {
	c.writes.Add(1)
	return c.Kernel.ReplaceRoute(r)
}
func (c *countingKernel) DeleteRoute(r Route) error { c.writes.Add(1); return c.Kernel.DeleteRoute(r) }

// ipRoutes returns `ip route` of the namespace, one route a line.
func (n *testNS) ipRoutes(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ip", "-n", n.name, "route", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip route: %v\n%s", err, out)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		lines = append(lines, strings.TrimSpace(l))
	}
	return lines
}

func TestNetlinkReconcile(t *testing.T) {
	n := newTestNS(t)
	em1 := n.addLink(t, "em1", "172.16.254.1/24")
	foreign := []string{
		"10.244.6.0/23 via 172.16.254.7 dev em1",              // proto boot, inside our pool
		"10.244.2.0/24 via 172.16.254.8 dev em1 proto static", // more specific than a peer's block
	}
	n.addForeignRoute(t, gatewayRoute("10.244.6.0/23", "172.16.254.7", em1, unix.RTPROT_BOOT))
	n.addForeignRoute(t, gatewayRoute("10.244.2.0/24", "172.16.254.8", em1, unix.RTPROT_STATIC))

	k := &countingKernel{Kernel: n.kernel(t)}
	r := NewReconciler(k, nil, nil)
	far := PeerRoute{"far", pfx("10.244.8.0/23"), addr("192.168.7.3")}
	res, err := r.Reconcile(t.Context(), desired(peerB, peerC, far))
	if err != nil {
		t.Fatal(err)
	}
	if !res.Programmed("b") || !res.Programmed("c") || !errors.Is(res.PeerErrors["far"], ErrNotConnected) {
		t.Fatalf("peers = %v", res.Peers)
	}
	want := append([]string{
		"10.244.2.0/23 via 172.16.254.2 dev em1 proto 74",
		"10.244.4.0/23 via 172.16.254.3 dev em1 proto 74",
		"blackhole 10.244.0.0/23 proto 74",
		"unreachable 10.244.0.0/16 proto 74 metric 2147483647",
		"172.16.254.0/24 dev em1 proto kernel scope link src 172.16.254.1",
	}, foreign...)
	slices.Sort(want)
	got := n.ipRoutes(t)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("ip route:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	writes := k.writes.Load()
	if res, err = r.Reconcile(t.Context(), desired(peerB, peerC, far)); err != nil {
		t.Fatal(err)
	}
	if k.writes.Load() != writes || res.Added+res.Replaced+res.Deleted != 0 {
		t.Fatalf("second pass wrote %d routes", k.writes.Load()-writes)
	}

	// c leaves, b moves: c's route goes, b's is replaced, the foreign ones stay.
	bMoved := PeerRoute{"b", peerB.Block, addr("172.16.254.20")}
	if _, err := r.Reconcile(t.Context(), desired(bMoved)); err != nil {
		t.Fatal(err)
	}
	want = append([]string{
		"10.244.2.0/23 via 172.16.254.20 dev em1 proto 74",
		"blackhole 10.244.0.0/23 proto 74",
		"unreachable 10.244.0.0/16 proto 74 metric 2147483647",
		"172.16.254.0/24 dev em1 proto kernel scope link src 172.16.254.1",
	}, foreign...)
	slices.Sort(want)
	got = n.ipRoutes(t)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("after c left, ip route:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestNetlinkForeignRouteInPeerSlot(t *testing.T) {
	n := newTestNS(t)
	em1 := n.addLink(t, "em1", "172.16.254.1/24")
	n.addForeignRoute(t, gatewayRoute("10.244.2.0/23", "172.16.254.99", em1, unix.RTPROT_STATIC))
	k := n.kernel(t)
	res, err := NewReconciler(k, nil, nil).Reconcile(t.Context(), desired(peerB))
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(res.PeerErrors["b"], ErrRouteExists) {
		t.Fatalf("peer b: %v, want ErrRouteExists", res.PeerErrors["b"])
	}
	if got := n.ipRoutes(t); !slices.Contains(got, "10.244.2.0/23 via 172.16.254.99 dev em1 proto static") {
		t.Fatalf("static route overwritten:\n%s", strings.Join(got, "\n"))
	}
	// Even asked directly, the kernel deletes only a route of our protocol.
	if err := k.DeleteRoute(Route{Dst: peerB.Block}); err != nil {
		t.Fatal(err)
	}
	if got := n.ipRoutes(t); !slices.Contains(got, "10.244.2.0/23 via 172.16.254.99 dev em1 proto static") {
		t.Fatalf("DeleteRoute removed a static route:\n%s", strings.Join(got, "\n"))
	}
}

func TestNetlinkLinkRecreated(t *testing.T) {
	n := newTestNS(t)
	em1 := n.addLink(t, "em1", "172.16.254.1/24")
	r := NewReconciler(n.kernel(t), nil, nil)
	if _, err := r.Reconcile(t.Context(), desired(peerB)); err != nil {
		t.Fatal(err)
	}
	if err := n.handle.LinkDel(em1); err != nil {
		t.Fatal(err)
	}
	res, err := r.Reconcile(t.Context(), desired(peerB))
	if !errors.Is(err, ErrLinkNotFound) || !errors.Is(res.PeerErrors["b"], ErrLinkNotUsable) {
		t.Fatalf("without em1: err %v, peer b %v", err, res.PeerErrors["b"])
	}
	n.addLink(t, "other0", "10.9.9.1/24") // so em1 does not get its old index back
	newEm1 := n.addLink(t, "em1", "172.16.254.1/24")
	if newEm1.Attrs().Index == em1.Attrs().Index {
		t.Fatalf("em1 kept index %d", em1.Attrs().Index)
	}
	res, err = r.Reconcile(t.Context(), desired(peerB))
	if err != nil || !res.Programmed("b") {
		t.Fatalf("after re-creation: err %v, peers %v", err, res.Peers)
	}
	if got := n.ipRoutes(t); !slices.Contains(got, "10.244.2.0/23 via 172.16.254.2 dev em1 proto 74") {
		t.Fatalf("route not back:\n%s", strings.Join(got, "\n"))
	}
}

func readForwarding(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestNetlinkForwardingOnlyInItsNamespace(t *testing.T) {
	n := newTestNS(t)
	n.addLink(t, "em1", "172.16.254.1/24")
	root := readForwarding(t)
	if _, err := NewReconciler(n.kernel(t), nil, nil).Reconcile(t.Context(), desired()); err != nil {
		t.Fatal(err)
	}
	var inside string
	if err := ns.WithNetNSPath(n.path, func(ns.NetNS) error {
		inside = readForwarding(t)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if inside != "1" {
		t.Errorf("ip_forward in %s = %s, want 1", n.name, inside)
	}
	if now := readForwarding(t); now != root {
		t.Errorf("ip_forward of this test's own namespace changed from %s to %s", root, now)
	}
}

// TestNetlinkForwardingEnabledReported: a pass reports that it turned
// forwarding on when it found it off in its namespace, and not when it
// found it on.
func TestNetlinkForwardingEnabledReported(t *testing.T) {
	n := newTestNS(t)
	n.addLink(t, "em1", "172.16.254.1/24")
	root := readForwarding(t)
	r := NewReconciler(n.kernel(t), nil, nil)
	for _, tc := range []struct {
		set  string // written to ip_forward in the namespace before the pass
		want []Family
	}{
		{"0", []Family{IPv4}},
		{"", nil},
		{"0", []Family{IPv4}},
	} {
		if tc.set != "" {
			if err := ns.WithNetNSPath(n.path, func(ns.NetNS) error {
				return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte(tc.set), 0o644)
			}); err != nil {
				t.Fatal(err)
			}
		}
		res, err := r.Reconcile(t.Context(), desired())
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(res.ForwardingEnabled, tc.want) {
			t.Fatalf("ip_forward set to %q: the pass reports forwarding enabled for %v, want %v", tc.set, res.ForwardingEnabled, tc.want)
		}
	}
	if now := readForwarding(t); now != root {
		t.Errorf("ip_forward of this test's own namespace changed from %s to %s", root, now)
	}
}

// The kernel bound to the calling thread's namespace (the agent's) works
// inside that namespace.
func TestNetlinkKernelOfCurrentNamespace(t *testing.T) {
	n := newTestNS(t)
	n.addLink(t, "em1", "172.16.254.1/24")
	err := ns.WithNetNSPath(n.path, func(ns.NetNS) error {
		k := NewNetlinkKernel()
		defer k.Close()
		res, err := NewReconciler(k, nil, nil).Reconcile(t.Context(), desired(peerB))
		if err == nil && !res.Programmed("b") {
			err = errors.New(res.Peers["b"])
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := n.ipRoutes(t); !slices.Contains(got, "10.244.2.0/23 via 172.16.254.2 dev em1 proto 74") {
		t.Fatalf("route missing:\n%s", strings.Join(got, "\n"))
	}
}

func TestWatchRoutes(t *testing.T) {
	n := newTestNS(t)
	n.addLink(t, "em1", "172.16.254.1/24")
	k := n.kernel(t)
	r := NewReconciler(k, nil, nil)
	if _, err := r.Reconcile(t.Context(), desired(peerB)); err != nil {
		t.Fatal(err)
	}

	ctx := t.Context()
	watchCtx, stop := context.WithCancel(ctx)
	defer stop()
	changes := k.WatchRoutes(watchCtx)
	nr := netlinkRoute(Route{Dst: peerB.Block})
	nr.Protocol = RouteProtocol
	if err := n.handle.RouteDel(nr); err != nil {
		t.Fatal(err)
	}
	waitFor(t, changes, "a notification for the deleted route")
	res, err := r.Reconcile(ctx, desired(peerB))
	if err != nil || res.Added != 1 {
		t.Fatalf("reconcile after the deletion: err %v, %+v", err, res)
	}

	stop()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case _, open := <-changes:
			if !open {
				return
			}
		case <-deadline:
			t.Fatal("the watch channel did not close after its context ended")
		}
	}
}

func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second): // a deadline, not a speed goal
		t.Fatalf("no %s", what)
	}
}

func TestForwardFiltersEvents(t *testing.T) {
	ours := netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}
	linkEvent := func(typ uint16, change uint32) netlink.LinkUpdate {
		u := netlink.LinkUpdate{Header: unix.NlMsghdr{Type: typ}}
		u.Change = change
		return u
	}
	tests := []struct {
		name   string
		routes []netlink.RouteUpdate
		links  []netlink.LinkUpdate
		neighs []netlink.NeighUpdate
		want   int
	}{
		{name: "our route deleted", routes: []netlink.RouteUpdate{{Type: unix.RTM_DELROUTE, Route: ours}}, want: 1},
		{name: "our route added", routes: []netlink.RouteUpdate{{Type: unix.RTM_NEWROUTE, Route: ours}}, want: 1},
		{name: "foreign route", routes: []netlink.RouteUpdate{{Type: unix.RTM_DELROUTE, Route: netlink.Route{Protocol: unix.RTPROT_BOOT, Table: unix.RT_TABLE_MAIN}}}},
		{name: "our protocol in another table", routes: []netlink.RouteUpdate{{Type: unix.RTM_DELROUTE, Route: netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_LOCAL}}}},
		{name: "link up or down", links: []netlink.LinkUpdate{linkEvent(unix.RTM_NEWLINK, unix.IFF_UP)}, want: 1},
		{name: "link deleted", links: []netlink.LinkUpdate{linkEvent(unix.RTM_DELLINK, 0)}, want: 1},
		{name: "other link flag", links: []netlink.LinkUpdate{linkEvent(unix.RTM_NEWLINK, unix.IFF_PROMISC)}},
		{name: "VXLAN neighbour deleted", neighs: []netlink.NeighUpdate{{Type: unix.RTM_DELNEIGH,
			Neigh: netlink.Neigh{HardwareAddr: net.HardwareAddr{0x0e, 0x74, 172, 16, 253, 7}}}}, want: 1},
		{name: "neighbour deleted on a link that is no host veth", neighs: []netlink.NeighUpdate{{Type: unix.RTM_DELNEIGH,
			Neigh: netlink.Neigh{LinkIndex: 2, Family: unix.AF_INET, HardwareAddr: net.HardwareAddr{0x8e, 0xf0, 0x89, 0x10, 0x19, 0x9e}}}}},
		{name: "pod neighbour deleted", neighs: []netlink.NeighUpdate{{Type: unix.RTM_DELNEIGH,
			Neigh: netlink.Neigh{LinkIndex: 7, Family: unix.AF_INET, HardwareAddr: net.HardwareAddr{0x8e, 0xf0, 0x89, 0x10, 0x19, 0x9e}}}}, want: 1},
		{name: "pod neighbour no longer permanent", neighs: []netlink.NeighUpdate{{Type: unix.RTM_NEWNEIGH,
			Neigh: netlink.Neigh{LinkIndex: 7, Family: unix.AF_INET, State: netlink.NUD_REACHABLE}}}, want: 1},
		{name: "pod neighbour put back", neighs: []netlink.NeighUpdate{{Type: unix.RTM_NEWNEIGH,
			Neigh: netlink.Neigh{LinkIndex: 7, Family: unix.AF_INET, State: netlink.NUD_PERMANENT}}}},
		{name: "IPv6 link-local neighbour on a host veth", neighs: []netlink.NeighUpdate{{Type: unix.RTM_NEWNEIGH,
			Neigh: netlink.Neigh{LinkIndex: 7, Family: unix.AF_INET6, IP: net.ParseIP("fe80::8cf0:89ff:fe10:199e"), State: netlink.NUD_STALE}}}},
		{name: "pod IPv6 neighbour deleted", neighs: []netlink.NeighUpdate{{Type: unix.RTM_DELNEIGH,
			Neigh: netlink.Neigh{LinkIndex: 7, Family: unix.AF_INET6, IP: net.ParseIP("fd00:10:244::5")}}}, want: 1},
		{name: "pod IPv6 route deleted", routes: []netlink.RouteUpdate{{Type: unix.RTM_DELROUTE,
			Route: netlink.Route{Protocol: unix.RTPROT_BOOT, Table: unix.RT_TABLE_MAIN, Dst: ipNet(pfx("fd00:10:244::5/128"))}}}, want: 1},
		{name: "pod route deleted", routes: []netlink.RouteUpdate{{Type: unix.RTM_DELROUTE,
			Route: netlink.Route{Protocol: unix.RTPROT_BOOT, Table: unix.RT_TABLE_MAIN, Dst: ipNet(pfx("10.244.0.5/32"))}}}, want: 1},
		{name: "pod route in another table", routes: []netlink.RouteUpdate{{Type: unix.RTM_DELROUTE,
			Route: netlink.Route{Protocol: unix.RTPROT_BOOT, Table: unix.RT_TABLE_LOCAL, Dst: ipNet(pfx("10.244.0.5/32"))}}}},
		{name: "foreign /24", routes: []netlink.RouteUpdate{{Type: unix.RTM_DELROUTE,
			Route: netlink.Route{Protocol: unix.RTPROT_BOOT, Table: unix.RT_TABLE_MAIN, Dst: ipNet(pfx("10.9.0.0/24"))}}}},
	}
	// Link 7 is a host veth, link 2 the uplink.
	linkByIndex := func(i int) (netlink.Link, error) {
		switch i {
		case 7:
			return &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: 7, Name: "gv0123456789abc", Alias: NetworkName + "/abc/eth0"}}, nil
		case 2:
			return &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: 2, Name: "em1"}}, nil
		}
		return nil, netlink.LinkNotFoundError{}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// One channel carries the events and is then closed; the
			// other stays nil, which a select never picks.
			sub := &subscription{linkByIndex: linkByIndex}
			switch {
			case tt.routes != nil:
				sub.routes = make(chan netlink.RouteUpdate, len(tt.routes))
				for _, u := range tt.routes {
					sub.routes <- u
				}
				close(sub.routes)
			case tt.neighs != nil:
				sub.neighs = make(chan netlink.NeighUpdate, len(tt.neighs))
				for _, u := range tt.neighs {
					sub.neighs <- u
				}
				close(sub.neighs)
			default:
				sub.links = make(chan netlink.LinkUpdate, len(tt.links))
				for _, u := range tt.links {
					sub.links <- u
				}
				close(sub.links)
			}
			var notified int
			if broken := forward(t.Context(), sub, func() { notified++ }); !broken {
				t.Fatal("forward did not report the closed subscription")
			}
			if notified != tt.want {
				t.Fatalf("%d notifications, want %d", notified, tt.want)
			}
		})
	}
}

func TestWatchRoutesSeesLinkFlush(t *testing.T) {
	n := newTestNS(t)
	em1 := n.addLink(t, "em1", "172.16.254.1/24")
	k := n.kernel(t)
	r := NewReconciler(k, nil, nil)
	if _, err := r.Reconcile(t.Context(), desired(peerB)); err != nil {
		t.Fatal(err)
	}
	changes := k.WatchRoutes(t.Context())
	// Down and up again: the kernel drops the route through em1 silently.
	if err := n.handle.LinkSetDown(em1); err != nil {
		t.Fatal(err)
	}
	if err := n.handle.LinkSetUp(em1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, changes, "a notification for the link flap")
	res, err := r.Reconcile(t.Context(), desired(peerB))
	if err != nil || res.Added != 1 || !res.Programmed("b") {
		t.Fatalf("reconcile after the flap: %v, %+v", err, res)
	}
}

// benchmarkSetup is a namespace with em1 on 172.16.0.1/16 and 2,000 peers
// whose next hops are on it.
func benchmarkSetup(b *testing.B) (*NetlinkKernel, Desired) {
	n := newTestNS(b)
	n.addLink(b, "em1", "172.16.0.1/16")
	d := Desired{Iface: "em1", OwnBlock: pfx("10.255.254.0/23"), Pool: pfx("10.0.0.0/8"), Masquerade: true, Peers: peerRoutes(2000)}
	return n.kernel(b), d
}

// BenchmarkNetlinkProgram2000 programs 2,000 peer routes (and the blackhole)
// into an empty table.
func BenchmarkNetlinkProgram2000(b *testing.B) {
	k, d := benchmarkSetup(b)
	r := NewReconciler(k, nil, nil)
	empty := Desired{Iface: d.Iface, Pool: d.Pool, Masquerade: true}
	for b.Loop() {
		res, err := r.Reconcile(b.Context(), d)
		if err != nil || res.Added != 2001 {
			b.Fatalf("added %d: %v", res.Added, err)
		}
		b.StopTimer()
		if res, err := r.Reconcile(b.Context(), empty); err != nil || res.Deleted != 2001 {
			b.Fatalf("deleted %d: %v", res.Deleted, err)
		}
		b.StartTimer()
	}
}

// BenchmarkNetlinkNoopReconcile2000 is a full pass (forwarding, masquerade,
// link, one route dump, diff) over 2,000 programmed peers.
func BenchmarkNetlinkNoopReconcile2000(b *testing.B) {
	k, d := benchmarkSetup(b)
	r := NewReconciler(k, nil, nil)
	if _, err := r.Reconcile(b.Context(), d); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		res, err := r.Reconcile(b.Context(), d)
		if err != nil || res.Added+res.Replaced+res.Deleted != 0 {
			b.Fatalf("not a no-op: %+v, %v", res, err)
		}
	}
}

// TestNetlinkUnreachablePool: the pool's unreachable route catches only what
// nothing more specific routes. A pod's /32, the own block's blackhole and a
// peer's block all win over it, the default route still carries the rest,
// and an address in a block nobody routes fails with "no route to host".
func TestNetlinkUnreachablePool(t *testing.T) {
	n := newTestNS(t)
	em1 := n.addLink(t, "em1", "172.16.254.1/24")
	n.addForeignRoute(t, netlink.Route{Gw: net.ParseIP("172.16.254.254"), LinkIndex: em1.Attrs().Index})
	pod, err := n.handle.LinkByName("em1-p") // stands in for a pod's veth
	if err != nil {
		t.Fatal(err)
	}
	n.addForeignRoute(t, netlink.Route{Dst: ipNet(pfx("10.244.0.5/32")), LinkIndex: pod.Attrs().Index, Scope: netlink.SCOPE_LINK})

	if _, err := NewReconciler(n.kernel(t), nil, nil).Reconcile(t.Context(), desired(peerB)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		dst     string
		wantErr error  // of the route lookup
		wantVia string // else: the gateway, "" for a directly attached destination
		wantDev int
	}{
		{dst: "10.244.0.5", wantDev: pod.Attrs().Index},                           // a pod of ours
		{dst: "10.244.0.9", wantErr: unix.EINVAL},                                 // own block, no pod: blackhole
		{dst: "10.244.2.9", wantVia: "172.16.254.2", wantDev: em1.Attrs().Index},  // a peer's block
		{dst: "10.244.9.9", wantErr: unix.EHOSTUNREACH},                           // no block route: unreachable
		{dst: "192.0.2.1", wantVia: "172.16.254.254", wantDev: em1.Attrs().Index}, // outside the pool: default route
	}
	for _, tt := range tests {
		routes, err := n.handle.RouteGet(net.ParseIP(tt.dst))
		if tt.wantErr != nil {
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("route get %s: %v (%v), want %v", tt.dst, routes, err, tt.wantErr)
			}
			continue
		}
		if err != nil || len(routes) != 1 {
			t.Errorf("route get %s: %v, %v", tt.dst, routes, err)
			continue
		}
		gw := ""
		if routes[0].Gw != nil {
			gw = routes[0].Gw.String()
		}
		if gw != tt.wantVia || routes[0].LinkIndex != tt.wantDev {
			t.Errorf("route get %s: via %q dev %d, want via %q dev %d", tt.dst, gw, routes[0].LinkIndex, tt.wantVia, tt.wantDev)
		}
	}
}

// On a dual-stack node the IPv6 pool gets its unreachable route, the own
// IPv6 block its blackhole, like the IPv4 ones, and a peer's IPv6 block its
// route via the peer's IPv6 host address; IPv6 forwarding is turned
// on inside the namespace only; a second pass writes nothing (the kernel
// must list the IPv6 routes back as they were written); without Pool6 the
// routes go again.
func TestNetlinkIPv6PoolRoutes(t *testing.T) {
	n := newTestNS(t)
	n.addLink(t, "em1", "172.16.254.1/24", "fd00:172:16:254::1/64")
	k := &countingKernel{Kernel: n.kernel(t)}
	r := NewReconciler(k, nil, nil)
	d := desired(peerB)
	d.Pool6, d.OwnBlock6 = pfx("fd00:10:244::/48"), pfx("fd00:10:244::/64")
	d.Peers6 = []PeerRoute{{"b", pfx("fd00:10:244:1::/64"), addr("fd00:172:16:254::2")}}
	if _, err := r.Reconcile(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ip", "-n", n.name, "-6", "route", "show", "proto", "74").CombinedOutput()
	if err != nil {
		t.Fatalf("ip -6 route: %v\n%s", err, out)
	}
	for _, want := range []string{"unreachable fd00:10:244::/48 dev lo metric 2147483647", "blackhole fd00:10:244::/64 dev lo metric 1024",
		"fd00:10:244:1::/64 via fd00:172:16:254::2 dev em1 metric 1024"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("ip -6 route shows\n%s\nwant a line %q", out, want)
		}
	}
	before := k.writes.Load()
	if _, err := r.Reconcile(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	if w := k.writes.Load() - before; w != 0 {
		t.Errorf("a second pass with nothing changed wrote %d routes", w)
	}
	if err := ns.WithNetNSPath(n.path, func(ns.NetNS) error {
		b, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/forwarding")
		if strings.TrimSpace(string(b)) != "1" {
			t.Errorf("IPv6 forwarding in %s = %s, want 1", n.name, b)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Reconcile(t.Context(), desired(peerB)); err != nil {
		t.Fatal(err)
	}
	out, _ = exec.Command("ip", "-n", n.name, "-6", "route", "show", "proto", "74").CombinedOutput()
	if strings.TrimSpace(string(out)) != "" {
		t.Errorf("IPv6 routes left once Pool6 is gone:\n%s", out)
	}
}

// BenchmarkForwardSync is one sync of the FORWARD chains on a host where
// Docker set iptables-nft's FORWARD policy to DROP and the agent's accept
// rules are in place: what a pass paid for it every time before it ran on
// the resync tick only (see RecheckForward).
func BenchmarkForwardSync(b *testing.B) {
	testneeds.Commands(b, "apt-get install iptables", "iptables-nft")
	k := newTestNS(b).kernel(b)
	b.Setenv("XTABLES_LOCKFILE", filepath.Join(b.TempDir(), "xtables.lock"))
	// Run from the thread inNetns moved: the child starts in the
	// benchmark's namespace.
	if err := k.inNetns(func() error { return exec.Command("iptables-nft", "-P", "FORWARD", "DROP").Run() }); err != nil {
		b.Fatal(err)
	}
	r := NewReconciler(k, nil, nil)
	pool := pfx("10.0.0.0/8")
	for b.Loop() {
		verdicts, err := r.syncForwardAccept(pool)
		if err != nil || len(verdicts) != 1 || !verdicts[0].Accepting {
			b.Fatalf("forward %v, %v", verdicts, err)
		}
	}
}
