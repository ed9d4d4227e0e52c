package node

import (
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
		"VXLAN on an IPv6 host": func() Desired { d := desired6(); d.Encapsulation = EncapsulationCrossSubnet; return d }(),
		"second, IPv6 pool":     func() Desired { d := desired6(); d.Pool6 = pfx("fd00:10:245::/48"); return d }(),
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
