package node

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// dualStack gives d an IPv6 pool and block, and each peer the IPv6 block
// at its IPv4 block's index with the IPv6 host address given (zero: none).
func dualStack(d Desired, peers6 ...PeerRoute) Desired {
	d.Pool6, d.OwnBlock6 = pfx("fd00:10:244::/48"), pfx("fd00:10:244::/64")
	d.Peers6 = peers6
	return d
}

var (
	// peerB6 is b's IPv6 block via its IPv6 host address on em1's IPv6
	// network; peerB6Bare the same without an IPv6 host address.
	peerB6     = PeerRoute{"b", pfx("fd00:10:244:1::/64"), addr("fd00:172:16:254::2")}
	peerB6Bare = PeerRoute{"b", pfx("fd00:10:244:1::/64"), netip.Addr{}}
	peerFar6   = PeerRoute{"far", pfx("fd00:10:244:3::/64"), netip.Addr{}}
)

// TestChoosePath6: an IPv6 block goes direct where both hosts share an IPv6
// network, over VXLAN on the IPv4 underlay otherwise (or always with
// --encapsulation=always), and nowhere with --encapsulation=never or when
// the IPv4 peer cannot be a VXLAN peer.
func TestChoosePath6(t *testing.T) {
	link := em1
	link.Addrs = append(slices.Clone(em1.Addrs), pfx("fd00:172:16:254::1/64"))
	tunnel := Link{Name: TunnelName, Index: 9, Up: true}
	vxlanRoute := func(p PeerRoute) Route {
		return Route{Dst: p.Block, Via: VTEPAddr(p.Block), LinkIndex: tunnel.Index, OnLink: true, Metric: IPv6DefaultMetric}
	}
	inPool := PeerRoute{"b", pfx("10.244.2.0/23"), addr("10.244.9.9")}
	tests := []struct {
		name      string
		mode      Encapsulation
		p6, p4    PeerRoute
		tunnel    Link
		wantPath  Path
		wantRoute Route
		wantWhy   string
	}{
		{"shared IPv6 network", EncapsulationCrossSubnet, peerB6, peerB, tunnel, PathDirect,
			Route{Dst: peerB6.Block, Via: peerB6.Via, LinkIndex: link.Index, Metric: IPv6DefaultMetric}, "fd00:172:16:254::2 is on em1's network"},
		{"no IPv6 underlay, same IPv4 subnet", EncapsulationCrossSubnet, peerB6Bare, peerB, tunnel, PathVXLAN,
			vxlanRoute(peerB6Bare), ErrNoIPv6Underlay.Error() + "; over VXLAN to 172.16.254.2"},
		{"no IPv6 underlay, another IPv4 subnet", EncapsulationCrossSubnet, peerFar6, peerFar, tunnel, PathVXLAN,
			vxlanRoute(peerFar6), ErrNoIPv6Underlay.Error() + "; over VXLAN to 172.16.253.7"},
		{"IPv6 on another network", EncapsulationCrossSubnet, PeerRoute{"b", peerB6.Block, addr("2001:db8::2")}, peerB, tunnel, PathVXLAN,
			vxlanRoute(peerB6), "next hop is not on a network directly connected"},
		{"always", EncapsulationAlways, peerB6, peerB, tunnel, PathVXLAN, vxlanRoute(peerB6), "encapsulation is always; over VXLAN"},
		{"never", EncapsulationNever, peerB6Bare, peerB, tunnel, PathNone, Route{}, ErrNoIPv6Underlay.Error() + "; --encapsulation=never"},
		{"no device yet", EncapsulationCrossSubnet, peerB6Bare, peerB, Link{}, PathNone, Route{}, "this host or the peer has no IPv6 address to route via; not over VXLAN either: VXLAN device is not usable"},
		{"IPv4 host address inside the pool", EncapsulationCrossSubnet, peerB6Bare, inPool, tunnel, PathNone, Route{}, "this host or the peer has no IPv6 address to route via; not over VXLAN either: invalid peer route"},
		{"no IPv4 peer", EncapsulationCrossSubnet, peerB6Bare, PeerRoute{}, tunnel, PathNone, Route{}, "this host or the peer has no IPv6 address to route via; no IPv4 route"},
	}
	for _, tt := range tests {
		d := dualStack(encapDesired(tt.mode, tt.p4), tt.p6)
		r, path := choosePath6(tt.p6, tt.p4, d, link, tt.tunnel, nil)
		if path.Path != tt.wantPath || r != tt.wantRoute || !strings.HasPrefix(path.Why, tt.wantWhy) {
			t.Errorf("%s: %v %+v, want %v %s: %s...", tt.name, r, path, tt.wantRoute, tt.wantPath, tt.wantWhy)
		}
	}
}

// A dual-stack peer without an IPv6 underlay gets its IPv6 block over the
// VXLAN device, which the IPv4 path alone (b is direct) would not need:
// the device with this host's IPv6 VTEP, the peer's IPv6 VTEP neighbour
// and FDB entry, the onlink route; a second pass writes nothing; once the
// peer has IPv6 on the shared network, it goes direct and the device goes.
func TestReconcileVXLAN6(t *testing.T) {
	k := NewFakeKernel()
	k.AddLink("em1", pfx("172.16.254.1/24"), pfx("fd00:172:16:254::1/64"))
	r := NewReconciler(k, nil, nil)
	d := dualStack(encapDesired(EncapsulationCrossSubnet, peerB), peerB6Bare)
	res, err := r.Reconcile(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	if res.Paths["b"].Path != PathDirect || res.Paths6["b"].Path != PathVXLAN {
		t.Fatalf("paths %v, IPv6 paths %v; want b direct, its IPv6 block over VXLAN", res.Paths, res.Paths6)
	}
	st, neighs, fdb := tunnelOf(t, k)
	if !slices.Equal(st.Addrs, []netip.Prefix{pfx("10.244.0.0/32"), pfx("fd00:10:244::/128")}) {
		t.Errorf("device addresses %v, want the IPv4 and IPv6 VTEPs", st.Addrs)
	}
	mac := VTEPMAC(peerB.Via)
	if !slices.Equal(neighs, []Neighbour{{addr("fd00:10:244:1::"), mac, true}}) || !slices.Equal(fdb, []FDBEntry{{mac, peerB.Via}}) {
		t.Errorf("entries: neighbours %v, fdb %v", neighs, fdb)
	}
	want6 := Route{Dst: peerB6Bare.Block, Via: addr("fd00:10:244:1::"), LinkIndex: st.Index, OnLink: true, Metric: IPv6DefaultMetric}
	if got := ours(k); !slices.Contains(got, want6) {
		t.Errorf("routes %v lack %v", got, want6)
	}
	writes := k.Writes()
	if _, err := r.Reconcile(t.Context(), d); err != nil || k.Writes() != writes {
		t.Errorf("second pass: %v, %d writes", err, k.Writes()-writes)
	}

	d.Peers6 = []PeerRoute{peerB6}
	if res, err = r.Reconcile(t.Context(), d); err != nil || res.Paths6["b"].Path != PathDirect {
		t.Fatalf("with an IPv6 underlay: %v, IPv6 paths %v", err, res.Paths6)
	}
	if _, err := k.Tunnel(); err == nil {
		t.Error("the VXLAN device stays with no peer over it")
	}
}

// TestNetlinkVXLAN6: on a host without an IPv6 underlay, the peers' IPv6
// blocks go over gv.vxlan in the kernel as TestReconcileVXLAN6 says, the
// kernel lists them back as written (a second pass writes no route and
// keeps the device), and a deleted IPv6 VTEP neighbour is put back.
func TestNetlinkVXLAN6(t *testing.T) {
	n := newTestNS(t)
	n.addLink(t, "em1", "172.16.254.1/24")
	k := n.kernel(t)
	r := NewReconciler(k, nil, nil)
	d := dualStack(encapDesired(EncapsulationCrossSubnet, peerB, peerFar), peerB6Bare, peerFar6)
	res, err := r.Reconcile(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	if res.Paths6["b"].Path != PathVXLAN || res.Paths6["far"].Path != PathVXLAN {
		t.Fatalf("IPv6 paths %v, want both over VXLAN", res.Paths6)
	}
	check := func() {
		t.Helper()
		routes := n.command(t, "ip", "-6", "route", "show", "proto", "74")
		for _, want := range []string{
			"fd00:10:244:1::/64 via fd00:10:244:1:: dev gv.vxlan metric 1024 onlink",
			"fd00:10:244:3::/64 via fd00:10:244:3:: dev gv.vxlan metric 1024 onlink",
		} {
			if !hasLine(routes, want) {
				t.Errorf("no route %q in\n%s", want, strings.Join(routes, "\n"))
			}
		}
		neigh := n.command(t, "ip", "-6", "neigh", "show", "dev", TunnelName)
		for _, want := range []string{"fd00:10:244:1:: lladdr 0e:74:ac:10:fe:02 PERMANENT", "fd00:10:244:3:: lladdr 0e:74:ac:10:fd:07 PERMANENT"} {
			if !slices.Contains(neigh, want) {
				t.Errorf("IPv6 neighbours %q lack %q", neigh, want)
			}
		}
		if fdb := n.command(t, "bridge", "fdb", "show", "dev", TunnelName); !hasLine(fdb, "0e:74:ac:10:fe:02 dst 172.16.254.2 self permanent") {
			t.Errorf("fdb: %q", fdb)
		}
		if addrs := n.command(t, "ip", "addr", "show", "dev", TunnelName); !hasLine(addrs, "inet6 fd00:10:244::/128") {
			t.Errorf("no IPv6 VTEP address:\n%s", strings.Join(addrs, "\n"))
		}
	}
	check()
	st, _ := k.Tunnel()
	writes := &countingKernel{Kernel: k}
	if _, err := NewReconciler(writes, nil, nil).Reconcile(t.Context(), d); err != nil || writes.writes.Load() != 0 {
		t.Fatalf("second pass: %d route writes, %v", writes.writes.Load(), err)
	}
	if again, _ := k.Tunnel(); again.Index != st.Index {
		t.Fatal("an unchanged device was recreated")
	}
	n.command(t, "ip", "-6", "neigh", "del", "fd00:10:244:1::", "dev", TunnelName)
	if _, err := r.Reconcile(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	check()
}
