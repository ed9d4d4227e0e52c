package node

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

const protoBoot = 3 // RTPROT_BOOT: what `ip route add` gives a route

func newFake(t *testing.T) (*FakeKernel, Link) {
	t.Helper()
	k := NewFakeKernel()
	return k, k.AddLink("em1", pfx("172.16.254.1/24"))
}

func desired(peers ...PeerRoute) Desired {
	return Desired{Iface: "em1", OwnBlock: own, Pool: pfx("10.244.0.0/16"), Masquerade: true, Peers: peers}
}

var (
	unreachablePool = Route{Dst: pfx("10.244.0.0/16"), Unreachable: true, Metric: UnreachableMetric}

	peerB = PeerRoute{"b", pfx("10.244.2.0/23"), addr("172.16.254.2")}
	peerC = PeerRoute{"c", pfx("10.244.4.0/23"), addr("172.16.254.3")}
)

// ours returns the fake table's Grapevine routes.
func ours(k *FakeKernel) []Route {
	var out []Route
	for _, r := range k.Table() {
		if r.Protocol == RouteProtocol {
			out = append(out, r.Route)
		}
	}
	return out
}

func TestReconcileProgramsAndIsIdempotent(t *testing.T) {
	k, link := newFake(t)
	r := NewReconciler(k, nil, nil)
	res, err := r.Reconcile(t.Context(), desired(peerB, peerC))
	if err != nil {
		t.Fatal(err)
	}
	want := []Route{
		unreachablePool,
		blackhole("10.244.0.0/23"),
		{Dst: peerB.Block, Via: peerB.Via, LinkIndex: link.Index},
		{Dst: peerC.Block, Via: peerC.Via, LinkIndex: link.Index},
	}
	if got := ours(k); !slices.Equal(got, want) {
		t.Fatalf("routes = %v, want %v", got, want)
	}
	if res.Added != 4 || res.Replaced != 0 || res.Deleted != 0 {
		t.Errorf("result counts = %+v, want 4 added", res)
	}
	if !res.Programmed("b") || !res.Programmed("c") || len(res.PeerErrors) != 0 {
		t.Errorf("peers = %v, errors %v", res.Peers, res.PeerErrors)
	}
	if !k.Forwarding(IPv4) || k.Masquerade() != pfx("10.244.0.0/16") {
		t.Errorf("forwarding %v, masquerade %v", k.Forwarding(IPv4), k.Masquerade())
	}

	writes := k.Writes()
	res, err = r.Reconcile(t.Context(), desired(peerC, peerB)) // other order, same state
	if err != nil {
		t.Fatal(err)
	}
	if k.Writes() != writes {
		t.Fatalf("a reconcile with nothing to change made %d writes", k.Writes()-writes)
	}
	if res.Added+res.Replaced+res.Deleted != 0 || !res.Programmed("b") {
		t.Fatalf("no-op pass reported %+v", res)
	}
}

func TestReconcileLeavesForeignRoutes(t *testing.T) {
	k, link := newFake(t)
	foreign := []FakeRoute{
		{Route{Dst: pfx("10.244.6.0/23"), Via: addr("172.16.254.7"), LinkIndex: link.Index}, protoBoot}, // inside our pool
		{Route{Dst: pfx("192.168.0.0/16"), Via: addr("172.16.254.254"), LinkIndex: link.Index}, protoBoot},
		{Route{Dst: pfx("10.244.8.0/23"), Blackhole: true}, 186}, // someone's blackhole
	}
	for _, f := range foreign {
		k.PutRoute(f.Route, f.Protocol)
	}
	r := NewReconciler(k, nil, nil)
	steps := []Desired{desired(peerB, peerC), desired(peerB), desired(), {Iface: "em1"}, desired(peerC)}
	for i, d := range steps {
		if _, err := r.Reconcile(t.Context(), d); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		for _, f := range foreign {
			if !slices.Contains(k.Table(), f) {
				t.Fatalf("step %d: foreign route %v is gone; table %v", i, f, k.Table())
			}
		}
	}
}

func TestReconcileDoesNotOverwriteForeignRouteForPeerBlock(t *testing.T) {
	k, link := newFake(t)
	static := FakeRoute{Route{Dst: peerB.Block, Via: addr("172.16.254.99"), LinkIndex: link.Index}, protoBoot}
	k.PutRoute(static.Route, static.Protocol)
	res, err := NewReconciler(k, nil, nil).Reconcile(t.Context(), desired(peerB, peerC))
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(res.PeerErrors["b"], ErrRouteExists) || !res.Programmed("c") {
		t.Fatalf("peers = %v", res.Peers)
	}
	if !slices.Contains(k.Table(), static) {
		t.Fatalf("static route overwritten: %v", k.Table())
	}
}

func TestReconcileFollowsChanges(t *testing.T) {
	k, link := newFake(t)
	r := NewReconciler(k, nil, nil)
	ctx := t.Context()
	if _, err := r.Reconcile(ctx, desired(peerB, peerC)); err != nil {
		t.Fatal(err)
	}

	// Peer c leaves, b moves to another host address.
	bMoved := PeerRoute{"b", peerB.Block, addr("172.16.254.20")}
	res, err := r.Reconcile(ctx, desired(bMoved))
	if err != nil {
		t.Fatal(err)
	}
	want := []Route{unreachablePool, blackhole("10.244.0.0/23"), {Dst: peerB.Block, Via: bMoved.Via, LinkIndex: link.Index}}
	if got := ours(k); !slices.Equal(got, want) {
		t.Fatalf("routes = %v, want %v", got, want)
	}
	if res.Replaced != 1 || res.Deleted != 1 || res.Added != 0 {
		t.Fatalf("counts = %+v, want 1 replaced, 1 deleted", res)
	}

	// Someone deletes our route and changes the other: both come back.
	k.RemoveRoute(want[2])
	k.PutRoute(Route{Dst: own, Via: addr("172.16.254.5"), LinkIndex: link.Index}, RouteProtocol)
	if _, err := r.Reconcile(ctx, desired(bMoved)); err != nil {
		t.Fatal(err)
	}
	if got := ours(k); !slices.Equal(got, want) {
		t.Fatalf("after outside changes, routes = %v, want %v", got, want)
	}

	// No block any more: the blackhole goes too.
	d := desired(bMoved)
	d.OwnBlock = netip.Prefix{}
	if _, err := r.Reconcile(ctx, d); err != nil {
		t.Fatal(err)
	}
	if got, want := ours(k), []Route{want[0], want[2]}; !slices.Equal(got, want) {
		t.Fatalf("without own block, routes = %v, want %v", got, want)
	}

	// No pool: the unreachable route goes.
	d.Pool, d.Masquerade = netip.Prefix{}, false
	if _, err := r.Reconcile(ctx, d); err != nil {
		t.Fatal(err)
	}
	if got := ours(k); !slices.Equal(got, want[2:]) {
		t.Fatalf("without pool, routes = %v, want %v", got, want[2:])
	}
}

func TestReconcileNotConnectedPeer(t *testing.T) {
	k, _ := newFake(t)
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	reg := prometheus.NewRegistry()
	r := NewReconciler(k, log, reg)
	far := PeerRoute{"far", pfx("10.244.6.0/23"), addr("192.168.7.3")}

	for range 3 {
		res, err := r.Reconcile(t.Context(), desired(peerB, far, peerC))
		if err != nil {
			t.Fatalf("a peer that is not connected failed the pass: %v", err)
		}
		if !errors.Is(res.PeerErrors["far"], ErrNotConnected) || !strings.Contains(res.Peers["far"], "192.168.7.3") {
			t.Fatalf("far: %v / %q", res.PeerErrors["far"], res.Peers["far"])
		}
		if !res.Programmed("b") || !res.Programmed("c") {
			t.Fatalf("the other peers were not programmed: %v", res.Peers)
		}
	}
	if n := strings.Count(logs.String(), "peer not routed"); n != 1 {
		t.Errorf("persistent peer error logged %d times, want once:\n%s", n, logs.String())
	}
	if got := testutil.ToFloat64(r.metrics.peerErrors); got != 1 {
		t.Errorf("grapevine_node_peer_route_errors = %v, want 1", got)
	}
	if _, err := r.Reconcile(t.Context(), desired(peerB)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "peer error cleared") || testutil.ToFloat64(r.metrics.peerErrors) != 0 {
		t.Errorf("clearing the error was not logged or counted:\n%s", logs.String())
	}
}

func TestReconcileLinkRecreated(t *testing.T) {
	k, _ := newFake(t)
	r := NewReconciler(k, nil, nil)
	ctx := t.Context()
	if _, err := r.Reconcile(ctx, desired(peerB)); err != nil {
		t.Fatal(err)
	}

	k.DeleteLink("em1")
	res, err := r.Reconcile(ctx, desired(peerB))
	if !errors.Is(err, ErrLinkNotFound) {
		t.Fatalf("missing link: err = %v, want ErrLinkNotFound", err)
	}
	if !errors.Is(res.PeerErrors["b"], ErrLinkNotUsable) {
		t.Fatalf("peer b: %v", res.PeerErrors["b"])
	}
	if got := ours(k); !slices.Equal(got, []Route{unreachablePool, blackhole("10.244.0.0/23")}) {
		t.Fatalf("without link, routes = %v; want the unreachable pool and the blackhole only", got)
	}

	k.AddLink("dummy0", pfx("10.9.9.1/24")) // take the old index
	link := k.AddLink("em1", pfx("172.16.254.1/24"))
	res, err = r.Reconcile(ctx, desired(peerB))
	if err != nil || !res.Programmed("b") {
		t.Fatalf("after re-creation: err %v, peers %v", err, res.Peers)
	}
	want := []Route{unreachablePool, blackhole("10.244.0.0/23"), {Dst: peerB.Block, Via: peerB.Via, LinkIndex: link.Index}}
	if got := ours(k); !slices.Equal(got, want) {
		t.Fatalf("routes = %v, want %v", got, want)
	}
}

func TestReconcileKernelErrors(t *testing.T) {
	boom := errors.New("injected")
	ctx := context.Background()

	t.Run("one route fails, the others are programmed", func(t *testing.T) {
		k, _ := newFake(t)
		k.InjectError(OpAdd, peerB.Block, boom)
		reg := prometheus.NewRegistry()
		r := NewReconciler(k, nil, reg)
		res, err := r.Reconcile(ctx, desired(peerB, peerC))
		if err != nil {
			t.Fatalf("a peer's failure failed the pass: %v", err)
		}
		if !errors.Is(res.PeerErrors["b"], boom) || !res.Programmed("c") {
			t.Fatalf("peers = %v", res.Peers)
		}
		if got := testutil.ToFloat64(r.metrics.errors.WithLabelValues("add")); got != 1 {
			t.Errorf("add errors = %v, want 1", got)
		}
		if got := testutil.ToFloat64(r.metrics.ops.WithLabelValues("add")); got != 3 {
			t.Errorf("adds = %v, want 3 (unreachable pool, blackhole and c)", got)
		}
		k.InjectError(OpAdd, peerB.Block, nil)
		if res, err := r.Reconcile(ctx, desired(peerB, peerC)); err != nil || !res.Programmed("b") {
			t.Fatalf("after the fault cleared: %v, %v", err, res.Peers)
		}
	})

	t.Run("listing fails: nothing is written", func(t *testing.T) {
		k, _ := newFake(t)
		k.InjectError(OpRoutes, netip.Prefix{}, boom)
		res, err := NewReconciler(k, nil, nil).Reconcile(ctx, desired(peerB))
		if !errors.Is(err, boom) {
			t.Fatalf("err = %v", err)
		}
		if res.Peers["b"] != PeerPending || len(ours(k)) != 0 {
			t.Fatalf("peers %v, routes %v", res.Peers, ours(k))
		}
	})

	t.Run("link lookup fails: working routes are kept", func(t *testing.T) {
		k, _ := newFake(t)
		r := NewReconciler(k, nil, nil)
		if _, err := r.Reconcile(ctx, desired(peerB)); err != nil {
			t.Fatal(err)
		}
		before := ours(k)
		k.InjectError(OpLink, netip.Prefix{}, boom)
		res, err := r.Reconcile(ctx, desired(peerC))
		if !errors.Is(err, boom) || !errors.Is(res.PeerErrors["c"], boom) || !strings.Contains(res.Peers["c"], "injected") {
			t.Fatalf("err = %v, peers %v", err, res.Peers)
		}
		if got := ours(k); !slices.Equal(got, before) {
			t.Fatalf("routes changed without a link: %v, was %v", got, before)
		}
	})

	t.Run("masquerade fails: routes are still programmed", func(t *testing.T) {
		k, _ := newFake(t)
		k.InjectError(OpMasquerade, netip.Prefix{}, boom)
		res, err := NewReconciler(k, nil, nil).Reconcile(ctx, desired(peerB))
		if !errors.Is(err, boom) || !res.Programmed("b") {
			t.Fatalf("err = %v, peers %v", err, res.Peers)
		}
	})

	t.Run("cancelled context stops the pass", func(t *testing.T) {
		k, _ := newFake(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		res, err := NewReconciler(k, nil, nil).Reconcile(cctx, desired(peerB))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if res.Peers["b"] != PeerPending || len(ours(k)) != 0 {
			t.Fatalf("peers %v, routes %v", res.Peers, ours(k))
		}
	})
}

func TestReconcileMasqueradeOff(t *testing.T) {
	k, _ := newFake(t)
	r := NewReconciler(k, nil, nil)
	if _, err := r.Reconcile(t.Context(), desired()); err != nil {
		t.Fatal(err)
	}
	d := desired()
	d.Masquerade = false
	if _, err := r.Reconcile(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	if k.Masquerade().IsValid() {
		t.Fatalf("masquerade still on for %v", k.Masquerade())
	}
}

func TestMasqueradedPools(t *testing.T) {
	pool, pool6 := pfx("10.244.0.0/16"), pfx("fd00:10:244::/48")
	tests := []struct {
		name string
		d    Desired
		want map[Family]netip.Prefix
	}{
		{"IPv4 only", Desired{Pool: pool, Masquerade: true}, map[Family]netip.Prefix{IPv4: pool}},
		{"dual-stack", Desired{Pool: pool, Pool6: pool6, Masquerade: true}, map[Family]netip.Prefix{IPv4: pool, IPv6: pool6}},
		{"dual-stack, masquerade off", Desired{Pool: pool, Pool6: pool6}, map[Family]netip.Prefix{}},
		{"no pool", Desired{}, map[Family]netip.Prefix{}},
	}
	for _, tt := range tests {
		if got := MasqueradedPools(tt.d); !maps.Equal(got, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

// A dual-stack node masquerades both pools; turning masquerade off, or
// dropping the IPv6 pool, removes the IPv6 table.
func TestReconcileMasquerade6(t *testing.T) {
	k, _ := newFake(t)
	r := NewReconciler(k, nil, nil)
	d := desired()
	d.Pool6, d.OwnBlock6 = pfx("fd00:10:244::/48"), pfx("fd00:10:244::/64")
	if _, err := r.Reconcile(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	if k.Masquerade() != d.Pool || k.Masquerade6() != d.Pool6 {
		t.Fatalf("masquerading %v and %v, want %v and %v", k.Masquerade(), k.Masquerade6(), d.Pool, d.Pool6)
	}
	if _, err := r.Reconcile(t.Context(), desired()); err != nil {
		t.Fatal(err)
	}
	if k.Masquerade6().IsValid() || k.Masquerade() != d.Pool {
		t.Fatalf("without pool6: masquerading %v and %v", k.Masquerade(), k.Masquerade6())
	}
	if _, err := r.Reconcile(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	d.Masquerade = false
	if _, err := r.Reconcile(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	if k.Masquerade().IsValid() || k.Masquerade6().IsValid() {
		t.Fatalf("masquerade off: still masquerading %v and %v", k.Masquerade(), k.Masquerade6())
	}
}

func TestReconcileRejectsBadDesired(t *testing.T) {
	bad := map[string]Desired{
		"no iface":            {OwnBlock: own},
		"unmasked own block":  {Iface: "em1", OwnBlock: pfx("10.244.1.0/23")},
		"masquerade, no pool": {Iface: "em1", Masquerade: true},
		"unmasked pool":       {Iface: "em1", Pool: pfx("10.244.1.0/16")},
		"block outside pool":  {Iface: "em1", OwnBlock: pfx("10.9.0.0/23"), Pool: pfx("10.244.0.0/16")},
	}
	for name, d := range bad {
		t.Run(name, func(t *testing.T) {
			k, _ := newFake(t)
			if _, err := NewReconciler(k, nil, nil).Reconcile(t.Context(), d); err == nil {
				t.Fatal("accepted")
			}
			if k.Writes() != 0 {
				t.Fatalf("%d writes for rejected input", k.Writes())
			}
		})
	}
}

// Many reconcilers on one fake each with a different view must not race
// (run with -race); the last pass for a view leaves the table in that view.
func TestReconcileConcurrent(t *testing.T) {
	k, _ := newFake(t)
	r := NewReconciler(k, nil, prometheus.NewRegistry())
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			peers := []PeerRoute{peerB}
			if i%2 == 0 {
				peers = append(peers, peerC)
			}
			for range 20 {
				if _, err := r.Reconcile(t.Context(), desired(peers...)); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if _, err := r.Reconcile(t.Context(), desired(peerC)); err != nil {
		t.Fatal(err)
	}
	if got := ours(k); len(got) != 3 || got[2].Dst != peerC.Block {
		t.Fatalf("routes = %v", got)
	}
}

func TestReconcileMetrics(t *testing.T) {
	k, _ := newFake(t)
	reg := prometheus.NewRegistry()
	r := NewReconciler(k, nil, reg)
	for range 2 {
		if _, err := r.Reconcile(t.Context(), desired(peerB, peerC)); err != nil {
			t.Fatal(err)
		}
	}
	k.InjectError(OpForwarding, netip.Prefix{}, errors.New("injected"))
	if _, err := r.Reconcile(t.Context(), desired(peerB)); err == nil {
		t.Fatal("injected forwarding error not returned")
	}
	const want = `
# HELP grapevine_node_reconcile_errors_total Reconcile passes that returned an error.
# TYPE grapevine_node_reconcile_errors_total counter
grapevine_node_reconcile_errors_total 1
# HELP grapevine_node_route_operations_total Route writes by operation (add, replace, delete).
# TYPE grapevine_node_route_operations_total counter
grapevine_node_route_operations_total{op="add"} 4
grapevine_node_route_operations_total{op="delete"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"grapevine_node_route_operations_total", "grapevine_node_reconcile_errors_total"); err != nil {
		t.Fatal(err)
	}
	var passes uint64
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "grapevine_node_reconcile_seconds" {
			passes = mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	if passes != 3 {
		t.Fatalf("reconcile histogram counted %d passes, want 3", passes)
	}
}

// A dual-stack Desired adds the IPv6 pool's unreachable route and the own
// IPv6 block's blackhole and turns IPv6 forwarding on; an IPv4-only one
// leaves IPv6 forwarding alone. Bad IPv6 blocks are refused before
// anything changes.
func TestReconcileIPv6PoolAndBlock(t *testing.T) {
	k, _ := newFake(t)
	r := NewReconciler(k, nil, nil)
	if _, err := r.Reconcile(t.Context(), desired()); err != nil {
		t.Fatal(err)
	}
	if k.Forwarding(IPv6) {
		t.Error("an IPv4-only reconcile turned IPv6 forwarding on")
	}
	d := desired()
	d.Pool6, d.OwnBlock6 = pfx("fd00:10:244::/48"), pfx("fd00:10:244:5::/64")
	if _, err := r.Reconcile(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	want := []Route{
		unreachablePool,
		blackhole("10.244.0.0/23"),
		{Dst: pfx("fd00:10:244::/48"), Unreachable: true, Metric: UnreachableMetric},
		{Dst: pfx("fd00:10:244:5::/64"), Blackhole: true, Metric: IPv6DefaultMetric},
	}
	got := ours(k)
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("routes %v lack %v", got, w)
		}
	}
	if !k.Forwarding(IPv6) {
		t.Error("IPv6 forwarding is off on a dual-stack node")
	}
	for _, bad := range []Desired{
		{Iface: "em1", Pool6: pfx("10.0.0.0/8")},
		{Iface: "em1", Pool6: pfx("fd00::1/48")},
		{Iface: "em1", Pool6: pfx("fd00::/48"), OwnBlock6: pfx("fd01::/64")},
		{Iface: "em1", OwnBlock6: pfx("fd00::/64")},
	} {
		bad.Encapsulation = EncapsulationNever
		if _, err := r.Reconcile(t.Context(), bad); err == nil {
			t.Errorf("Reconcile accepted pool6 %s own block6 %s", bad.Pool6, bad.OwnBlock6)
		}
	}
}

// A dual-stack pass reports each IPv6 peer's path, and grapevine_node_peers
// counts the routed IPv6 blocks under family="ipv6".
func TestReconcilePaths6(t *testing.T) {
	k := NewFakeKernel()
	k.AddLink("em1", pfx("172.16.254.1/24"), pfx("fd00:172:16:254::1/64"))
	reg := prometheus.NewRegistry()
	r := NewReconciler(k, nil, reg)
	d := desired(peerB, peerC)
	d.Pool6, d.OwnBlock6 = pfx("fd00:10:244::/48"), pfx("fd00:10:244::/64")
	d.Peers6 = []PeerRoute{
		{"b", pfx("fd00:10:244:1::/64"), addr("fd00:172:16:254::2")},
		{"c", pfx("fd00:10:244:2::/64"), netip.Addr{}},
	}
	res, err := r.Reconcile(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	if p := res.Paths6["b"]; p.Path != PathDirect {
		t.Errorf("b's IPv6 path %+v, want direct", p)
	}
	if p := res.Paths6["c"]; p.Path != PathNone || !strings.HasPrefix(p.Why, ErrNoIPv6Underlay.Error()) {
		t.Errorf("c's IPv6 path %+v, want none: %v", p, ErrNoIPv6Underlay)
	}
	const want = `
# HELP grapevine_node_peers Peers whose route is programmed after the last pass, by address family (ipv4, ipv6) and path (direct, vxlan).
# TYPE grapevine_node_peers gauge
grapevine_node_peers{family="ipv4",path="direct"} 2
grapevine_node_peers{family="ipv4",path="vxlan"} 0
grapevine_node_peers{family="ipv6",path="direct"} 1
grapevine_node_peers{family="ipv6",path="vxlan"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "grapevine_node_peers"); err != nil {
		t.Error(err)
	}
	// A route the kernel refuses is no path.
	k.InjectError(OpAdd, pfx("fd00:10:244:1::/64"), errors.New("injected"))
	k.RemoveRoute(Route{Dst: pfx("fd00:10:244:1::/64"), Metric: IPv6DefaultMetric})
	res, _ = r.Reconcile(t.Context(), d)
	if p := res.Paths6["b"]; p.Path != PathNone || !strings.HasPrefix(p.Why, "route not written") {
		t.Errorf("b's IPv6 path with its route refused: %+v", p)
	}
}

// TestReconcileReportsForwardingEnabled: a pass that finds a family's
// forwarding off and turns it on says so in Result, once: the next pass
// finds it on and reports nothing, until something switches it off again.
func TestReconcileReportsForwardingEnabled(t *testing.T) {
	dual := desired()
	dual.Pool6, dual.OwnBlock6 = pfx("fd00:10:244::/48"), pfx("fd00:10:244:5::/64")
	for _, tc := range []struct {
		name    string
		fake    func(*testing.T) (*FakeKernel, Link)
		desired Desired
		want    []Family
	}{
		{"IPv4 pool", newFake, desired(), []Family{IPv4}},
		{"dual-stack", newFake, dual, []Family{IPv4, IPv6}},
		{"IPv6-only", newFake6, desired6(), []Family{IPv6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, _ := tc.fake(t)
			r := NewReconciler(k, nil, nil)
			pass := func(what string, want []Family) {
				t.Helper()
				res, err := r.Reconcile(t.Context(), tc.desired)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(res.ForwardingEnabled, want) {
					t.Fatalf("%s: forwarding enabled for %v, want %v", what, res.ForwardingEnabled, want)
				}
			}
			pass("first pass", tc.want)
			pass("second pass", nil)
			for _, f := range tc.want {
				k.SwitchOffForwarding(f)
			}
			pass("after something switched forwarding off", tc.want)
			pass("the pass after that", nil)
		})
	}
}

// TestFakeForwarding: the fake's EnsureForwarding writes, and reports
// that it did, only while forwarding is off.
func TestFakeForwarding(t *testing.T) {
	k := NewFakeKernel()
	for _, step := range []struct {
		switchOff   bool
		wantEnabled bool
	}{
		{false, true},  // off at the start
		{false, false}, // on since
		{true, true},   // switched off under us
		{false, false},
	} {
		if step.switchOff {
			k.SwitchOffForwarding(IPv4)
		}
		writes := k.Writes()
		enabled, err := k.EnsureForwarding(IPv4)
		if err != nil || enabled != step.wantEnabled || !k.Forwarding(IPv4) || k.Forwarding(IPv6) {
			t.Fatalf("EnsureForwarding(IPv4) = %v, %v, IPv4 on %v, IPv6 on %v; want %v, IPv4 alone on", enabled, err, k.Forwarding(IPv4), k.Forwarding(IPv6), step.wantEnabled)
		}
		wantWrites := 0
		if step.wantEnabled {
			wantWrites = 1
		}
		if wrote := k.Writes() - writes; wrote != wantWrites {
			t.Fatalf("EnsureForwarding(IPv4) made %d writes, want %d", wrote, wantWrites)
		}
	}
}
