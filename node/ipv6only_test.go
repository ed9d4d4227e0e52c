package node

import (
	"errors"
	"maps"
	"net/netip"
	"slices"
	"testing"
)

// desired6 is an IPv6-only node's Desired state: its pool, block, peers
// and host address are all IPv6.
func desired6(peers ...PeerRoute) Desired {
	return Desired{Iface: "em1", OwnBlock: pfx("fd00:10:244:1::/64"), Pool: pfx("fd00:10:244::/48"), Masquerade: true,
		HostIP: addr("fd00:172:16::1"), Peers: peers}
}

// newFake6 is a fake kernel whose em1 has only IPv6 addresses.
func newFake6(t *testing.T) (*FakeKernel, Link) {
	t.Helper()
	k := NewFakeKernel()
	return k, k.AddLink("em1", pfx("fd00:172:16::1/64"))
}

// TestReconcileIPv6Only: an IPv6-only node routes its peers' IPv6 blocks
// `via <peer host IPv6> dev em1` with the kernel's IPv6 metric (so a second
// pass finds them as written and changes nothing), blackholes its own
// block, puts the unreachable route on its IPv6 pool, turns on IPv6
// forwarding alone, masquerades the pool in the IPv6 table, and withdraws
// a peer's route with the peer.
func TestReconcileIPv6Only(t *testing.T) {
	k, link := newFake6(t)
	r := NewReconciler(k, nil, nil)
	b := PeerRoute{"b", pfx("fd00:10:244:2::/64"), addr("fd00:172:16::2")}
	c := PeerRoute{"c", pfx("fd00:10:244:3::/64"), addr("fd00:172:16::3")}
	far := PeerRoute{"far", pfx("fd00:10:244:4::/64"), addr("fd00:99::4")}
	res, err := r.Reconcile(t.Context(), desired6(b, c, far))
	if err != nil {
		t.Fatal(err)
	}
	want := []Route{
		{Dst: pfx("fd00:10:244::/48"), Unreachable: true, Metric: UnreachableMetric},
		{Dst: pfx("fd00:10:244:1::/64"), Blackhole: true, Metric: IPv6DefaultMetric},
		{Dst: b.Block, Via: b.Via, LinkIndex: link.Index, Metric: IPv6DefaultMetric},
		{Dst: c.Block, Via: c.Via, LinkIndex: link.Index, Metric: IPv6DefaultMetric},
	}
	slices.SortFunc(want, compareRoutes)
	got := ours(k)
	slices.SortFunc(got, compareRoutes)
	if !slices.Equal(got, want) {
		t.Fatalf("routes = %v, want %v", got, want)
	}
	if !res.Programmed("b") || !res.Programmed("c") || res.Programmed("far") || res.PeerErrors["far"] == nil {
		t.Fatalf("peers %v, errors %v: want b and c programmed, far not connected", res.Peers, res.PeerErrors)
	}
	if res.Paths["b"].Path != PathDirect {
		t.Errorf("b's path %+v, want direct", res.Paths["b"])
	}
	if !k.Forwarding(IPv6) || k.Forwarding(IPv4) {
		t.Errorf("forwarding IPv4 %v IPv6 %v, want IPv6 alone", k.Forwarding(IPv4), k.Forwarding(IPv6))
	}
	if k.Masquerade6() != pfx("fd00:10:244::/48") || k.Masquerade().IsValid() {
		t.Errorf("masquerading %v and %v, want the IPv6 pool alone", k.Masquerade(), k.Masquerade6())
	}

	writes := k.Writes()
	if res, err = r.Reconcile(t.Context(), desired6(c, b, far)); err != nil {
		t.Fatal(err)
	}
	if k.Writes() != writes || res.Added+res.Replaced+res.Deleted != 0 {
		t.Fatalf("a pass with nothing to change made %d writes (%+v)", k.Writes()-writes, res)
	}

	if res, err = r.Reconcile(t.Context(), desired6(c)); err != nil {
		t.Fatal(err)
	}
	if res.Deleted != 1 || slices.ContainsFunc(ours(k), func(rt Route) bool { return rt.Dst == b.Block }) {
		t.Fatalf("b's route not withdrawn: %v (%+v)", ours(k), res)
	}
}

func TestReconcileRejectsIPv6OnlyMixups(t *testing.T) {
	for name, d := range map[string]Desired{
		"VXLAN from an IPv6 host address with an IPv4 pool": func() Desired {
			d := desired()
			d.HostIP, d.Encapsulation = addr("fd00:172:16::1"), EncapsulationCrossSubnet
			return d
		}(),
		"second, IPv6 pool": func() Desired { d := desired6(); d.Pool6 = pfx("fd00:10:245::/48"); return d }(),
	} {
		t.Run(name, func(t *testing.T) {
			k, _ := newFake6(t)
			if _, err := NewReconciler(k, nil, nil).Reconcile(t.Context(), d); err == nil {
				t.Fatal("accepted")
			}
			if k.Writes() != 0 {
				t.Fatalf("%d writes for rejected input", k.Writes())
			}
		})
	}
}

func TestMasqueradedPoolsIPv6Only(t *testing.T) {
	pool := pfx("fd00:10:244::/48")
	for name, tc := range map[string]struct {
		d    Desired
		want map[Family]netip.Prefix
	}{
		"masquerade":     {Desired{Pool: pool, Masquerade: true}, map[Family]netip.Prefix{IPv6: pool}},
		"masquerade off": {Desired{Pool: pool}, map[Family]netip.Prefix{}},
	} {
		if got := MasqueradedPools(tc.d); !maps.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", name, got, tc.want)
		}
	}
}

func TestVTEPMAC6(t *testing.T) {
	for _, tc := range []struct {
		block string
		want  MAC
	}{
		{"fd00:10:244:1::/64", MAC{0x0e, 0x74, 0x02, 0x44, 0x00, 0x01}},
		{"fd00:10:244:ffff::/64", MAC{0x0e, 0x74, 0x02, 0x44, 0xff, 0xff}},
		{"fd00:10:244::100/120", MAC{0x0e, 0x74, 0x00, 0x00, 0x00, 0x01}},
		{"fd00:10:244::ff00/120", MAC{0x0e, 0x74, 0x00, 0x00, 0x00, 0xff}},
		{"fd00:10:240::/60", MAC{0x0e, 0x74, 0x00, 0x24, 0x00, 0x00}},
	} {
		if got := VTEPMAC6(pfx(tc.block)); got != tc.want || !isVTEPMAC(got[:]) {
			t.Errorf("VTEPMAC6(%s) = %s, want %s", tc.block, got, tc.want)
		}
	}
	// Every block of a pool gets its own MAC, hosts on different subnets
	// with one interface ID included.
	seen := map[MAC]string{}
	for i := range 1 << 12 {
		b := netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 2, 0x44, byte(i >> 8), byte(i)}), 64)
		m := VTEPMAC6(b)
		if other, dup := seen[m]; dup {
			t.Fatalf("%s and %s share VTEP MAC %s", b, other, m)
		}
		seen[m] = b.String()
	}
}

// TestReconcileVXLANOverIPv6: an IPv6-only node reaches a peer off its
// interface's IPv6 networks over VXLAN on the IPv6 underlay: the device's
// local end is the host's IPv6 address, its MTU the uplink's less 70, its
// MAC and the peer's follow from their blocks, the route is
// `<block> via <peer VTEP> dev gv.vxlan onlink metric 1024`, and a second
// pass changes nothing.
func TestReconcileVXLANOverIPv6(t *testing.T) {
	k := NewFakeKernel()
	link := k.AddLink("em1", pfx("fd00:172:16::1/64"))
	r := NewReconciler(k, nil, nil)
	b := PeerRoute{"b", pfx("fd00:10:244:2::/64"), addr("fd00:172:16::2")}
	far := PeerRoute{"far", pfx("fd00:10:244:4::/64"), addr("fd00:99::4")}
	d := desired6(b, far)
	d.Encapsulation = EncapsulationCrossSubnet
	res, err := r.Reconcile(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	if res.Paths["b"].Path != PathDirect || res.Paths["far"].Path != PathVXLAN || !res.Programmed("far") || !res.Programmed("b") {
		t.Fatalf("paths %v, peers %v, errors %v", res.Paths, res.Peers, res.PeerErrors)
	}
	st, neighs, fdb := tunnelOf(t, k)
	want := Tunnel{VNI: 74, Port: 4789, Local: d.HostIP, Underlay: link.Index, MAC: VTEPMAC6(d.OwnBlock)}
	if st.Tunnel != want || !slices.Equal(st.Addrs, []netip.Prefix{pfx("fd00:10:244:1::/128")}) {
		t.Fatalf("device %+v, want %+v with fd00:10:244:1::/128", st, want)
	}
	if tun, ok := DesiredTunnel(d, Link{Name: "em1", Index: link.Index, Up: true, Addrs: link.Addrs, MTU: 1500}); !ok || tun.MTU != 1430 {
		t.Errorf("device over an IPv6 underlay of MTU 1500: %+v, %v; want MTU 1430", tun, ok)
	}
	noBlock := d
	noBlock.OwnBlock = netip.Prefix{}
	if tun, ok := DesiredTunnel(noBlock, link); ok {
		t.Errorf("a device without a block to derive its MAC from: %+v", tun)
	}
	farMAC := VTEPMAC6(far.Block)
	if !slices.Equal(neighs, []Neighbour{{addr("fd00:10:244:4::"), farMAC, true}}) || !slices.Equal(fdb, []FDBEntry{{farMAC, far.Via}}) {
		t.Fatalf("entries: neighbours %v, fdb %v", neighs, fdb)
	}
	wantRoute := Route{Dst: far.Block, Via: addr("fd00:10:244:4::"), LinkIndex: st.Index, OnLink: true, Metric: IPv6DefaultMetric}
	if !slices.Contains(ours(k), wantRoute) {
		t.Fatalf("routes %v lack %v", ours(k), wantRoute)
	}
	writes := k.Writes()
	if _, err := r.Reconcile(t.Context(), d); err != nil || k.Writes() != writes {
		t.Fatalf("second pass: %v, %d writes", err, k.Writes()-writes)
	}
	// With encapsulation never the far peer is not routed, and the
	// device goes.
	d.Encapsulation = EncapsulationNever
	if res, err = r.Reconcile(t.Context(), d); err != nil || res.Programmed("far") || !res.Programmed("b") {
		t.Fatalf("never: %v, peers %v", err, res.Peers)
	}
	if _, err := k.Tunnel(); !errors.Is(err, ErrLinkNotFound) {
		t.Fatalf("device still there: %v", err)
	}
}
