package node

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

var (
	em1 = Link{Name: "em1", Index: 2, Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("172.16.254.1/24")}}
	own = netip.MustParsePrefix("10.244.0.0/23")
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func unicast(dst, via string) Route {
	return Route{Dst: pfx(dst), Via: addr(via), LinkIndex: em1.Index}
}

func blackhole(dst string) Route { return Route{Dst: pfx(dst), Blackhole: true} }

func unreachable(dst string) Route {
	return Route{Dst: pfx(dst), Unreachable: true, Metric: UnreachableMetric}
}

func TestDesiredRoutes(t *testing.T) {
	tests := []struct {
		name       string
		own        netip.Prefix
		pool       netip.Prefix
		link       Link
		peers      []PeerRoute
		want       []Route
		wantErrs   map[string]error
		wantErrSub string
	}{
		{
			name: "no block, no peers",
			link: em1,
		},
		{
			name: "own block gets a blackhole",
			own:  own,
			link: em1,
			want: []Route{blackhole("10.244.0.0/23")},
		},
		{
			name: "peers on the connected network",
			own:  own,
			link: em1,
			peers: []PeerRoute{
				{"b", pfx("10.244.2.0/23"), addr("172.16.254.2")},
				{"c", pfx("10.244.4.0/23"), addr("172.16.254.3")},
			},
			want: []Route{blackhole("10.244.0.0/23"), unicast("10.244.2.0/23", "172.16.254.2"), unicast("10.244.4.0/23", "172.16.254.3")},
		},
		{
			name: "next hop not directly connected is a per-peer error",
			own:  own,
			link: em1,
			peers: []PeerRoute{
				{"b", pfx("10.244.2.0/23"), addr("172.16.254.2")},
				{"far", pfx("10.244.4.0/23"), addr("192.168.7.3")},
			},
			want:     []Route{blackhole("10.244.0.0/23"), unicast("10.244.2.0/23", "172.16.254.2")},
			wantErrs: map[string]error{"far": ErrNotConnected},
		},
		{
			name: "peer block overlapping our own is never routed",
			own:  own,
			link: em1,
			peers: []PeerRoute{
				{"same", pfx("10.244.0.0/23"), addr("172.16.254.2")},
				{"inside", pfx("10.244.1.0/24"), addr("172.16.254.3")},
				{"around", pfx("10.244.0.0/16"), addr("172.16.254.4")},
			},
			want:     []Route{blackhole("10.244.0.0/23")},
			wantErrs: map[string]error{"same": ErrOverlapsOwn, "inside": ErrOverlapsOwn, "around": ErrOverlapsOwn},
		},
		{
			name: "two peers with one block: neither is routed",
			link: em1,
			peers: []PeerRoute{
				{"b", pfx("10.244.2.0/23"), addr("172.16.254.2")},
				{"c", pfx("10.244.4.0/23"), addr("172.16.254.3")},
				{"clone", pfx("10.244.2.0/23"), addr("172.16.254.9")},
				{"nested", pfx("10.244.5.0/24"), addr("172.16.254.8")},
			},
			wantErrs: map[string]error{"b": ErrOverlapsPeer, "clone": ErrOverlapsPeer, "c": ErrOverlapsPeer, "nested": ErrOverlapsPeer},
		},
		{
			name: "invalid peers",
			link: em1,
			peers: []PeerRoute{
				{"noblock", netip.Prefix{}, addr("172.16.254.2")},
				{"novia", pfx("10.244.2.0/23"), netip.Addr{}},
				{"unmasked", pfx("10.244.5.0/23"), addr("172.16.254.3")},
				{"v6via", pfx("10.244.8.0/23"), addr("fd00::1")},
				{"self", pfx("10.244.10.0/23"), addr("172.16.254.1")},
			},
			wantErrs: map[string]error{
				"noblock": ErrInvalidPeer, "novia": ErrInvalidPeer, "unmasked": ErrInvalidPeer,
				"v6via": errFamilyMismatch, "self": ErrInvalidPeer,
			},
		},
		{
			name:     "link down",
			own:      own,
			link:     Link{Name: "em1", Index: 2, Addrs: em1.Addrs},
			peers:    []PeerRoute{{"b", pfx("10.244.2.0/23"), addr("172.16.254.2")}},
			want:     []Route{blackhole("10.244.0.0/23")},
			wantErrs: map[string]error{"b": ErrLinkNotUsable},
		},
		{
			name:     "link missing",
			link:     Link{Name: "em1"},
			peers:    []PeerRoute{{"b", pfx("10.244.2.0/23"), addr("172.16.254.2")}},
			wantErrs: map[string]error{"b": ErrLinkNotUsable},
		},
		{
			name: "pool gets an unreachable route below the blackhole and the peers",
			own:  own,
			pool: pfx("10.244.0.0/16"),
			link: em1,
			peers: []PeerRoute{
				{"b", pfx("10.244.2.0/23"), addr("172.16.254.2")},
			},
			want: []Route{unreachable("10.244.0.0/16"), blackhole("10.244.0.0/23"), unicast("10.244.2.0/23", "172.16.254.2")},
		},
		{
			name: "pool without a block or peers: the unreachable route alone",
			pool: pfx("10.244.0.0/16"),
			link: em1,
			want: []Route{unreachable("10.244.0.0/16")},
		},
		{
			name: "block as large as the pool: blackhole and unreachable take separate slots",
			own:  pfx("10.244.0.0/16"),
			pool: pfx("10.244.0.0/16"),
			link: em1,
			want: []Route{unreachable("10.244.0.0/16"), blackhole("10.244.0.0/16")},
		},
		{
			name:     "link missing: the unreachable route stays",
			pool:     pfx("10.244.0.0/16"),
			link:     Link{Name: "em1"},
			peers:    []PeerRoute{{"b", pfx("10.244.2.0/23"), addr("172.16.254.2")}},
			want:     []Route{unreachable("10.244.0.0/16")},
			wantErrs: map[string]error{"b": ErrLinkNotUsable},
		},
		{
			name: "second address on the link makes a second network connected",
			link: Link{Name: "em1", Index: 2, Up: true, Addrs: []netip.Prefix{pfx("172.16.254.1/24"), pfx("192.168.7.1/24")}},
			peers: []PeerRoute{
				{"far", pfx("10.244.4.0/23"), addr("192.168.7.3")},
			},
			want: []Route{unicast("10.244.4.0/23", "192.168.7.3")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, errs := DesiredRoutes(Desired{Iface: "em1", OwnBlock: tt.own, Pool: tt.pool, Peers: tt.peers}, tt.link, Link{})
			if !slices.Equal(got, tt.want) {
				t.Errorf("routes = %v, want %v", got, tt.want)
			}
			if len(errs) != len(tt.wantErrs) {
				t.Errorf("peer errors = %v, want %v", errs, tt.wantErrs)
			}
			for peer, want := range tt.wantErrs {
				if !errors.Is(errs[peer], want) {
					t.Errorf("peer %s: error %v, want %v", peer, errs[peer], want)
				}
			}
		})
	}
}

func TestDiff(t *testing.T) {
	b := unicast("10.244.2.0/23", "172.16.254.2")
	c := unicast("10.244.4.0/23", "172.16.254.3")
	bh := blackhole("10.244.0.0/23")
	bMoved := unicast("10.244.2.0/23", "172.16.254.9")
	bOtherLink := b
	bOtherLink.LinkIndex = 7
	bMetric := b
	bMetric.Metric = 100
	bhAsUnicast := unicast("10.244.0.0/23", "172.16.254.2")
	pool := unreachable("10.244.0.0/16")
	poolMetric0 := pool
	poolMetric0.Metric = 0
	poolBlackhole := blackhole("10.244.0.0/16")
	poolBlackhole.Metric = UnreachableMetric

	tests := []struct {
		name           string
		desired        []Route
		actual         []Route
		wantAdd, wantD []Route
	}{
		{name: "empty"},
		{name: "identical", desired: []Route{bh, b, c}, actual: []Route{c, bh, b}},
		{name: "all new", desired: []Route{c, b, bh}, wantAdd: []Route{bh, b, c}},
		{name: "all stale", actual: []Route{c, b, bh}, wantD: []Route{bh, b, c}},
		{name: "changed next hop is replaced, not deleted", desired: []Route{b}, actual: []Route{bMoved}, wantAdd: []Route{b}},
		{name: "changed link index is replaced", desired: []Route{b}, actual: []Route{bOtherLink}, wantAdd: []Route{b}},
		{name: "other metric is a separate slot", desired: []Route{b}, actual: []Route{b, bMetric}, wantD: []Route{bMetric}},
		{name: "stale route removed, others kept", desired: []Route{b}, actual: []Route{b, c}, wantD: []Route{c}},
		{name: "duplicates in desired", desired: []Route{b, c, b, c}, actual: []Route{b}, wantAdd: []Route{c}},
		{name: "duplicates in actual", desired: []Route{b}, actual: []Route{c, c, b, b}, wantD: []Route{c}},
		{name: "blackhole replaced by unicast", desired: []Route{bhAsUnicast}, actual: []Route{bh}, wantAdd: []Route{bhAsUnicast}},
		{name: "unicast replaced by blackhole", desired: []Route{bh}, actual: []Route{bhAsUnicast}, wantAdd: []Route{bh}},
		{name: "unreachable pool added beside the block routes", desired: []Route{pool, bh, b}, actual: []Route{bh, b}, wantAdd: []Route{pool}},
		{name: "unreachable pool kept", desired: []Route{pool, bh, b}, actual: []Route{b, pool, bh}},
		{name: "unreachable pool removed", desired: []Route{bh, b}, actual: []Route{pool, bh, b}, wantD: []Route{pool}},
		{name: "unreachable pool with metric 0 is a leftover", desired: []Route{pool}, actual: []Route{poolMetric0}, wantAdd: []Route{pool}, wantD: []Route{poolMetric0}},
		{name: "blackhole in the unreachable slot is replaced", desired: []Route{pool}, actual: []Route{poolBlackhole}, wantAdd: []Route{pool}},
		{name: "conflicting desired routes: lowest wins in any order", desired: []Route{bMoved, b}, wantAdd: []Route{b}},
		{name: "conflicting desired routes, reversed", desired: []Route{b, bMoved}, wantAdd: []Route{b}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			add, del := Diff(tt.desired, tt.actual)
			if !slices.Equal(add, tt.wantAdd) || !slices.Equal(del, tt.wantD) {
				t.Fatalf("Diff = add %v, del %v; want add %v, del %v", add, del, tt.wantAdd, tt.wantD)
			}
			// Order independence: reversing both inputs gives the same result.
			add2, del2 := Diff(reversed(tt.desired), reversed(tt.actual))
			if !slices.Equal(add, add2) || !slices.Equal(del, del2) {
				t.Fatalf("Diff depends on input order: %v/%v vs %v/%v", add, del, add2, del2)
			}
			// Applying the diff converges: nothing left to do.
			after := apply(tt.actual, add, del)
			if a, d := Diff(tt.desired, after); len(a) != 0 || len(d) != 0 {
				t.Fatalf("after applying, Diff = add %v, del %v; want nothing", a, d)
			}
		})
	}
}

func reversed(rs []Route) []Route {
	out := slices.Clone(rs)
	slices.Reverse(out)
	return out
}

// apply plays a diff against a table the way the kernel does: a route
// takes its slot (destination and metric), a delete frees it.
func apply(table, add, del []Route) []Route {
	slots := make(map[routeKey]Route)
	for _, r := range table {
		slots[r.key()] = r
	}
	for _, r := range del {
		delete(slots, r.key())
	}
	for _, r := range add {
		slots[r.key()] = r
	}
	var out []Route
	for _, r := range slots {
		out = append(out, r)
	}
	return out
}

func peerRoutes(n int) []PeerRoute {
	peers := make([]PeerRoute, n)
	for i := range peers {
		block := netip.AddrFrom4([4]byte{10, byte(i >> 7), byte(i << 1), 0})
		host := i + 2 // past the network address and this host's 172.16.0.1
		via := netip.AddrFrom4([4]byte{172, 16, byte(host >> 8), byte(host)})
		peers[i] = PeerRoute{Peer: fmt.Sprintf("node-%04d", i), Block: netip.PrefixFrom(block, 23), Via: via}
	}
	return peers
}

func BenchmarkDiff(b *testing.B) {
	link := Link{Name: "em1", Index: 2, Up: true, Addrs: []netip.Prefix{pfx("172.16.0.1/16")}}
	d := Desired{Iface: "em1", OwnBlock: pfx("10.255.254.0/23"), Peers: peerRoutes(2000)}
	desired, errs := DesiredRoutes(d, link, Link{})
	if len(errs) != 0 || len(desired) != 2001 {
		b.Fatalf("setup: %d routes, errors %v", len(desired), errs)
	}
	actual := reversed(desired)
	b.ReportAllocs()
	for b.Loop() {
		routes, _ := DesiredRoutes(d, link, Link{})
		add, del := Diff(routes, actual)
		if len(add)+len(del) != 0 {
			b.Fatalf("diff not empty: %d adds, %d deletes", len(add), len(del))
		}
	}
}

// A peer's IPv6 block is routed directly via its IPv6 host address when
// that is on an IPv6 network of the interface, and not at all otherwise
// (no error: the IPv4 route stands alone); IPv6 blocks outside pool6,
// overlapping this node's or another peer's, or of a peer whose IPv4 block
// is in doubt are never routed.
func TestDesiredRoutesIPv6(t *testing.T) {
	link := em1
	link.Addrs = append(slices.Clone(em1.Addrs), pfx("fd00:172:16:254::1/64"), pfx("fe80::1/64"))
	d := Desired{
		Iface: "em1", OwnBlock: own, Pool6: pfx("fd00:10:244::/48"), OwnBlock6: pfx("fd00:10:244::/64"),
		Peers: []PeerRoute{
			{"b", pfx("10.244.2.0/23"), addr("172.16.254.2")},
			{"c", pfx("10.244.4.0/23"), addr("172.16.254.3")},
			{"d", pfx("10.244.6.0/23"), addr("172.16.254.4")},
			{"e", pfx("10.244.0.0/23"), addr("172.16.254.5")}, // overlaps own: in doubt
		},
		Peers6: []PeerRoute{
			{"b", pfx("fd00:10:244:1::/64"), addr("fd00:172:16:254::2")},
			{"c", pfx("fd00:10:244:2::/64"), addr("2001:db8::3")},        // not on a network of em1
			{"d", pfx("fd00:99::/64"), addr("fd00:172:16:254::4")},       // outside pool6
			{"e", pfx("fd00:10:244:7::/64"), addr("fd00:172:16:254::5")}, // IPv4 block in doubt
			{"f", pfx("fd00:10:244::/64"), addr("fd00:172:16:254::6")},   // overlaps own IPv6 block
			{"g", pfx("fd00:10:244:8::/64"), addr("fe80::7")},            // link-local next hop is not a host address
		},
	}
	routes, errs := DesiredRoutes(d, link, Link{})
	var got6 []Route
	for _, r := range routes {
		if r.Dst.Addr().Is6() && r.Unicast() {
			got6 = append(got6, r)
		}
	}
	want6 := []Route{{Dst: pfx("fd00:10:244:1::/64"), Via: addr("fd00:172:16:254::2"), LinkIndex: em1.Index, Metric: IPv6DefaultMetric}}
	if !slices.Equal(got6, want6) {
		t.Errorf("IPv6 routes %v, want %v", got6, want6)
	}
	if len(errs) != 1 || !errors.Is(errs["e"], ErrOverlapsOwn) {
		t.Errorf("peer errors %v, want only e's IPv4 overlap", errs)
	}
	// Two peers with one IPv6 block: neither is routed.
	d.Peers6 = []PeerRoute{
		{"b", pfx("fd00:10:244:1::/64"), addr("fd00:172:16:254::2")},
		{"c", pfx("fd00:10:244:1::/64"), addr("fd00:172:16:254::3")},
	}
	routes, _ = DesiredRoutes(d, link, Link{})
	for _, r := range routes {
		if r.Dst.Addr().Is6() && !r.Blackhole && !r.Unreachable {
			t.Errorf("overlapping IPv6 blocks routed: %v", r)
		}
	}
}

// PeerPaths6 gives every IPv6 peer its path: direct where it is routed,
// none with the reason everywhere else.
func TestPeerPaths6(t *testing.T) {
	link := em1
	link.Addrs = append(slices.Clone(em1.Addrs), pfx("fd00:172:16:254::1/64"))
	d := Desired{
		Iface: "em1", OwnBlock: own, Pool6: pfx("fd00:10:244::/48"), OwnBlock6: pfx("fd00:10:244::/64"),
		Peers: []PeerRoute{{"e", pfx("10.244.0.0/23"), addr("172.16.254.5")}}, // overlaps own
	}
	tests := []struct {
		name     string
		pool6    netip.Prefix
		peer     PeerRoute
		wantPath Path
		wantWhy  string
	}{
		{"on the interface's IPv6 network", d.Pool6, PeerRoute{"b", pfx("fd00:10:244:1::/64"), addr("fd00:172:16:254::2")},
			PathDirect, "fd00:172:16:254::2 is on em1's network fd00:172:16:254::/64"},
		{"no IPv6 host address", d.Pool6, PeerRoute{"b", pfx("fd00:10:244:1::/64"), netip.Addr{}},
			PathNone, ErrNoIPv6Underlay.Error()},
		{"on another network", d.Pool6, PeerRoute{"b", pfx("fd00:10:244:1::/64"), addr("2001:db8::3")},
			PathNone, "next hop is not on a network directly connected to the interface: 2001:db8::3 is not in any network of em1"},
		{"outside pool6", d.Pool6, PeerRoute{"b", pfx("fd00:99::/64"), addr("fd00:172:16:254::2")},
			PathNone, "invalid peer route: IPv6 block fd00:99::/64 is outside pool6 fd00:10:244::/48"},
		{"IPv4 block in doubt", d.Pool6, PeerRoute{"e", pfx("fd00:10:244:7::/64"), addr("fd00:172:16:254::5")},
			PathNone, "its IPv4 block, which the IPv6 one follows from, is not routed"},
		{"overlaps own IPv6 block", d.Pool6, PeerRoute{"b", pfx("fd00:10:244::/64"), addr("fd00:172:16:254::2")},
			PathNone, "block overlaps this node's own block"},
		{"no pool6 here", netip.Prefix{}, PeerRoute{"b", pfx("fd00:10:244:1::/64"), addr("fd00:172:16:254::2")},
			PathNone, ErrNoPool6.Error()},
	}
	for _, tt := range tests {
		d := d
		d.Pool6, d.Peers6 = tt.pool6, []PeerRoute{tt.peer}
		if !tt.pool6.IsValid() {
			d.OwnBlock6 = netip.Prefix{}
		}
		_, peerErrs := DesiredRoutes(d, link, Link{})
		got := PeerPaths6(d, link, Link{}, peerErrs)[tt.peer.Peer]
		if got.Path != tt.wantPath || !strings.HasPrefix(got.Why, tt.wantWhy) {
			t.Errorf("%s: %+v, want %s: %s...", tt.name, got, tt.wantPath, tt.wantWhy)
		}
	}
	// Two peers with one IPv6 block: neither has a path.
	d.Peers6 = []PeerRoute{
		{"b", pfx("fd00:10:244:1::/64"), addr("fd00:172:16:254::2")},
		{"c", pfx("fd00:10:244:1::/64"), addr("fd00:172:16:254::3")},
	}
	for peer, p := range PeerPaths6(d, link, Link{}, nil) {
		if p.Path != PathNone || !strings.Contains(p.Why, "overlaps fd00:10:244:1::/64") {
			t.Errorf("%s with an overlapping IPv6 block: %+v", peer, p)
		}
	}
}
