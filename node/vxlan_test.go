package node

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// peerFar is on a network em1 is not on: the VXLAN path in cross-subnet mode.
var peerFar = PeerRoute{"far", pfx("10.244.6.0/23"), addr("172.16.253.7")}

func encapDesired(mode Encapsulation, peers ...PeerRoute) Desired {
	d := desired(peers...)
	d.Encapsulation = mode
	d.HostIP = addr("172.16.254.1")
	return d
}

func TestChoosePath(t *testing.T) {
	tests := []struct {
		name   string
		mode   Encapsulation
		host   string
		link   Link
		want   Path
		whyHas string
	}{
		{"same network, cross-subnet", EncapsulationCrossSubnet, "172.16.254.9", em1, PathDirect, "is on em1's network 172.16.254.0/24"},
		{"other network, cross-subnet", EncapsulationCrossSubnet, "172.16.253.9", em1, PathVXLAN, "is not on em1's networks"},
		{"same network, always", EncapsulationAlways, "172.16.254.9", em1, PathVXLAN, "encapsulation is always"},
		{"other network, never", EncapsulationNever, "172.16.253.9", em1, PathDirect, "encapsulation is never"},
		{"same network, never", EncapsulationNever, "172.16.254.9", em1, PathDirect, "is on em1's network"},
		{"second address of the link", EncapsulationCrossSubnet, "192.168.5.5",
			Link{Name: "em1", Index: 2, Up: true, Addrs: []netip.Prefix{pfx("172.16.254.1/24"), pfx("192.168.5.1/24")}}, PathDirect, "192.168.5.0/24"},
		{"link without addresses", EncapsulationCrossSubnet, "172.16.254.9", Link{Name: "em1"}, PathVXLAN, "not on em1's networks"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ChoosePath(tt.mode, addr(tt.host), tt.link)
			if got.Path != tt.want || !strings.Contains(got.Why, tt.whyHas) {
				t.Fatalf("ChoosePath = %+v, want %s with reason containing %q", got, tt.want, tt.whyHas)
			}
		})
	}
}

func TestParseEncapsulation(t *testing.T) {
	for _, s := range []string{"cross-subnet", "never", "always"} {
		e, err := ParseEncapsulation(s)
		if err != nil || e.String() != s {
			t.Errorf("ParseEncapsulation(%q) = %v, %v", s, e, err)
		}
	}
	if _, err := ParseEncapsulation("CrossSubnet"); err == nil {
		t.Error("ParseEncapsulation accepted CrossSubnet")
	}
}

func TestVTEPDerivation(t *testing.T) {
	if got := VTEPMAC(addr("172.16.253.7")).String(); got != "0e:74:ac:10:fd:07" {
		t.Errorf("VTEPMAC = %s", got)
	}
	if m := VTEPMAC(addr("10.0.0.1")); m[0]&1 != 0 || m[0]&2 == 0 {
		t.Errorf("VTEPMAC %s is not a locally administered unicast address", m)
	}
	if got := VTEPAddr(pfx("10.244.6.0/23")); got != addr("10.244.6.0") {
		t.Errorf("VTEPAddr = %s", got)
	}
}

func TestDesiredRoutesWithVXLAN(t *testing.T) {
	tunnel := Link{Name: TunnelName, Index: 9, Up: true}
	vxlanRoute := Route{Dst: peerFar.Block, Via: addr("10.244.6.0"), LinkIndex: 9, OnLink: true}
	tests := []struct {
		name     string
		mode     Encapsulation
		tunnel   Link
		peers    []PeerRoute
		want     []Route
		wantErrs map[string]error
	}{
		{
			name:   "cross-subnet: near peer direct, far peer over VXLAN",
			mode:   EncapsulationCrossSubnet,
			tunnel: tunnel,
			peers:  []PeerRoute{peerB, peerFar},
			want:   []Route{unreachablePool, blackhole("10.244.0.0/23"), unicast("10.244.2.0/23", "172.16.254.2"), vxlanRoute},
		},
		{
			name:   "always: every peer over VXLAN",
			mode:   EncapsulationAlways,
			tunnel: tunnel,
			peers:  []PeerRoute{peerB, peerFar},
			want: []Route{unreachablePool, blackhole("10.244.0.0/23"),
				{Dst: peerB.Block, Via: addr("10.244.2.0"), LinkIndex: 9, OnLink: true}, vxlanRoute},
		},
		{
			name:     "never: far peer is not connected",
			mode:     EncapsulationNever,
			tunnel:   tunnel,
			peers:    []PeerRoute{peerB, peerFar},
			want:     []Route{unreachablePool, blackhole("10.244.0.0/23"), unicast("10.244.2.0/23", "172.16.254.2")},
			wantErrs: map[string]error{"far": ErrNotConnected},
		},
		{
			name:     "no device: far peer waits for it",
			mode:     EncapsulationCrossSubnet,
			peers:    []PeerRoute{peerB, peerFar},
			want:     []Route{unreachablePool, blackhole("10.244.0.0/23"), unicast("10.244.2.0/23", "172.16.254.2")},
			wantErrs: map[string]error{"far": ErrTunnelNotUsable},
		},
		{
			name:     "VXLAN peer overlapping a direct one: neither is routed",
			mode:     EncapsulationCrossSubnet,
			tunnel:   tunnel,
			peers:    []PeerRoute{{"near", pfx("10.244.6.0/23"), addr("172.16.254.5")}, peerFar},
			want:     []Route{unreachablePool, blackhole("10.244.0.0/23")},
			wantErrs: map[string]error{"near": ErrOverlapsPeer, "far": ErrOverlapsPeer},
		},
		{
			name:   "VXLAN peers with host addresses no tunnel can use",
			mode:   EncapsulationCrossSubnet,
			tunnel: tunnel,
			peers: []PeerRoute{
				{"loopback", pfx("10.244.6.0/23"), addr("127.0.0.1")},
				{"multicast", pfx("10.244.8.0/23"), addr("239.1.1.1")},
				{"broadcast", pfx("10.244.10.0/23"), addr("255.255.255.255")},
				{"in the pool", pfx("10.244.12.0/23"), addr("10.244.200.1")},
			},
			want: []Route{unreachablePool, blackhole("10.244.0.0/23")},
			wantErrs: map[string]error{"loopback": ErrInvalidPeer, "multicast": ErrInvalidPeer,
				"broadcast": ErrInvalidPeer, "in the pool": ErrInvalidPeer},
		},
		{
			name:     "VXLAN peer claiming our own address",
			mode:     EncapsulationAlways,
			tunnel:   tunnel,
			peers:    []PeerRoute{{"self", pfx("10.244.6.0/23"), addr("172.16.254.1")}},
			want:     []Route{unreachablePool, blackhole("10.244.0.0/23")},
			wantErrs: map[string]error{"self": ErrInvalidPeer},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := encapDesired(tt.mode, tt.peers...)
			got, errs := DesiredRoutes(d, em1, tt.tunnel)
			slices.SortFunc(got, compareRoutes)
			if !slices.Equal(got, tt.want) {
				t.Errorf("routes = %v\nwant %v", got, tt.want)
			}
			if len(errs) != len(tt.wantErrs) {
				t.Errorf("errors = %v, want %v", errs, tt.wantErrs)
			}
			for peer, want := range tt.wantErrs {
				if !errors.Is(errs[peer], want) {
					t.Errorf("error of %s = %v, want %v", peer, errs[peer], want)
				}
			}
		})
	}
}

func TestDesiredTunnel(t *testing.T) {
	if _, wanted := DesiredTunnel(encapDesired(EncapsulationCrossSubnet, peerB), em1); wanted {
		t.Error("a device is wanted with only direct peers")
	}
	if _, wanted := DesiredTunnel(encapDesired(EncapsulationNever, peerFar), em1); wanted {
		t.Error("a device is wanted with encapsulation never")
	}
	if _, wanted := DesiredTunnel(encapDesired(EncapsulationCrossSubnet, peerFar), Link{Name: "em1"}); wanted {
		t.Error("a device is wanted while the interface is missing")
	}
	tun, wanted := DesiredTunnel(encapDesired(EncapsulationCrossSubnet, peerB, peerFar), em1)
	want := Tunnel{VNI: TunnelVNI, Port: TunnelPort, Local: addr("172.16.254.1"), Underlay: em1.Index,
		MAC: VTEPMAC(addr("172.16.254.1")), Addr: addr("10.244.0.0")}
	if !wanted || tun != want {
		t.Errorf("DesiredTunnel = %+v, %v; want %+v", tun, wanted, want)
	}
	d := encapDesired(EncapsulationCrossSubnet, peerFar)
	d.OwnBlock = netip.Prefix{}
	if tun, _ := DesiredTunnel(d, em1); tun.Addr.IsValid() {
		t.Errorf("a node without a block gets VTEP address %s", tun.Addr)
	}
}

func TestPlanTunnel(t *testing.T) {
	want := Tunnel{VNI: 74, Port: 4789, Local: addr("172.16.254.1"), Underlay: 2, MAC: VTEPMAC(addr("172.16.254.1")), Addr: addr("10.244.0.0")}
	cfg := want
	cfg.Addr = netip.Addr{}
	vtep := pfx("10.244.0.0/32")
	good := TunnelState{Kind: "vxlan", Index: 9, Up: true, Tunnel: cfg, Addrs: []netip.Prefix{vtep}}
	with := func(change func(*TunnelState)) TunnelState {
		s := good
		s.Addrs = slices.Clone(good.Addrs)
		change(&s)
		return s
	}
	recreate := TunnelPlan{Delete: true, Create: true, SetUp: true, AddAddrs: []netip.Prefix{vtep}}
	tests := []struct {
		name    string
		wanted  bool
		have    TunnelState
		exists  bool
		want    TunnelPlan
		wantErr bool
	}{
		{name: "nothing wanted, nothing there"},
		{name: "wanted, absent: create", wanted: true, want: TunnelPlan{Create: true, SetUp: true, AddAddrs: []netip.Prefix{vtep}}},
		{name: "as wanted: nothing", wanted: true, have: good, exists: true},
		{name: "not wanted any more: delete", have: good, exists: true, want: TunnelPlan{Delete: true}},
		{name: "down: up", wanted: true, exists: true, have: with(func(s *TunnelState) { s.Up = false }), want: TunnelPlan{SetUp: true}},
		{name: "address missing", wanted: true, exists: true, have: with(func(s *TunnelState) { s.Addrs = nil }),
			want: TunnelPlan{AddAddrs: []netip.Prefix{vtep}}},
		{name: "old block's address", wanted: true, exists: true, have: with(func(s *TunnelState) { s.Addrs = []netip.Prefix{pfx("10.244.8.0/32")} }),
			want: TunnelPlan{AddAddrs: []netip.Prefix{vtep}, DeleteAddrs: []netip.Prefix{pfx("10.244.8.0/32")}}},
		{name: "other VNI: recreate", wanted: true, exists: true, have: with(func(s *TunnelState) { s.Tunnel.VNI = 1 }), want: recreate},
		{name: "other port: recreate", wanted: true, exists: true, have: with(func(s *TunnelState) { s.Tunnel.Port = 8472 }), want: recreate},
		{name: "host moved: recreate", wanted: true, exists: true, have: with(func(s *TunnelState) { s.Tunnel.Local = addr("172.16.253.1") }), want: recreate},
		{name: "learning on: recreate", wanted: true, exists: true, have: with(func(s *TunnelState) { s.Learning = true }), want: recreate},
		{name: "other MAC: recreate", wanted: true, exists: true, have: with(func(s *TunnelState) { s.Tunnel.MAC = MAC{2} }), want: recreate},
		{name: "someone else's device with our name", wanted: true, exists: true, have: TunnelState{Kind: "dummy"}, wantErr: true},
		{name: "someone else's device, not wanted: left alone", exists: true, have: TunnelState{Kind: "bridge"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := PlanTunnel(want, tt.wanted, tt.have, tt.exists)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if !equalPlans(got, tt.want) {
				t.Errorf("plan = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func equalPlans(a, b TunnelPlan) bool {
	return a.Delete == b.Delete && a.Create == b.Create && a.SetUp == b.SetUp &&
		slices.Equal(a.AddAddrs, b.AddAddrs) && slices.Equal(a.DeleteAddrs, b.DeleteAddrs)
}

func TestDiffTunnelEntries(t *testing.T) {
	far := tunnelPeerOf(peerFar)
	other := TunnelPeer{VTEP: addr("10.244.8.0"), MAC: VTEPMAC(addr("172.16.253.8")), HostIP: addr("172.16.253.8")}
	nOf := func(p TunnelPeer) Neighbour { return Neighbour{IP: p.VTEP, MAC: p.MAC, Permanent: true} }
	fOf := func(p TunnelPeer) FDBEntry { return FDBEntry{MAC: p.MAC, Dst: p.HostIP} }
	tests := []struct {
		name       string
		peers      []TunnelPeer
		neighs     []Neighbour
		fdb        []FDBEntry
		setN, delN []Neighbour
		setF, delF []FDBEntry
	}{
		{name: "empty"},
		{name: "new peers", peers: []TunnelPeer{other, far},
			setN: []Neighbour{nOf(far), nOf(other)}, setF: []FDBEntry{fOf(far), fOf(other)}},
		{name: "in place", peers: []TunnelPeer{far}, neighs: []Neighbour{nOf(far)}, fdb: []FDBEntry{fOf(far)}},
		{name: "peer gone", neighs: []Neighbour{nOf(far)}, fdb: []FDBEntry{fOf(far)},
			delN: []Neighbour{nOf(far)}, delF: []FDBEntry{fOf(far)}},
		{name: "neighbour not permanent (learnt or stale)", peers: []TunnelPeer{far},
			neighs: []Neighbour{{IP: far.VTEP, MAC: far.MAC}}, fdb: []FDBEntry{fOf(far)}, setN: []Neighbour{nOf(far)}},
		{name: "neighbour with another MAC: the peer moved", peers: []TunnelPeer{far},
			neighs: []Neighbour{{IP: far.VTEP, MAC: MAC{0x0e, 0x74, 1, 2, 3, 4}, Permanent: true}}, fdb: []FDBEntry{fOf(far)},
			setN: []Neighbour{nOf(far)}},
		{name: "FDB entry to another host", peers: []TunnelPeer{far}, neighs: []Neighbour{nOf(far)},
			fdb:  []FDBEntry{{MAC: far.MAC, Dst: addr("172.16.254.99")}},
			setF: []FDBEntry{fOf(far)}, delF: []FDBEntry{{MAC: far.MAC, Dst: addr("172.16.254.99")}}},
		{name: "a second destination for one MAC", peers: []TunnelPeer{far}, neighs: []Neighbour{nOf(far)},
			fdb:  []FDBEntry{fOf(far), {MAC: far.MAC, Dst: addr("172.16.254.99")}},
			delF: []FDBEntry{{MAC: far.MAC, Dst: addr("172.16.254.99")}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setN, delN, setF, delF := DiffTunnelEntries(tt.peers, tt.neighs, tt.fdb)
			if !slices.Equal(setN, tt.setN) || !slices.Equal(delN, tt.delN) || !slices.Equal(setF, tt.setF) || !slices.Equal(delF, tt.delF) {
				t.Errorf("got set %v del %v, fdb set %v del %v\nwant set %v del %v, fdb set %v del %v",
					setN, delN, setF, delF, tt.setN, tt.delN, tt.setF, tt.delF)
			}
		})
	}
}

// tunnelOf reads the fake's device and entries, failing the test if absent.
func tunnelOf(t *testing.T, k *FakeKernel) (TunnelState, []Neighbour, []FDBEntry) {
	t.Helper()
	st, err := k.Tunnel()
	if err != nil {
		t.Fatal(err)
	}
	n, f, err := k.TunnelEntries()
	if err != nil {
		t.Fatal(err)
	}
	return st, n, f
}

func TestReconcileVXLAN(t *testing.T) {
	k, link := newFake(t)
	reg := prometheus.NewRegistry()
	r := NewReconciler(k, nil, reg)
	d := encapDesired(EncapsulationCrossSubnet, peerB, peerFar)
	res, err := r.Reconcile(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Programmed("b") || !res.Programmed("far") {
		t.Fatalf("peers = %v", res.Peers)
	}
	if res.Paths["b"].Path != PathDirect || res.Paths["far"].Path != PathVXLAN {
		t.Fatalf("paths = %v", res.Paths)
	}
	st, neighs, fdb := tunnelOf(t, k)
	want := Tunnel{VNI: 74, Port: 4789, Local: addr("172.16.254.1"), Underlay: link.Index, MAC: VTEPMAC(addr("172.16.254.1"))}
	if st.Kind != "vxlan" || !st.Up || st.Tunnel != want || !slices.Equal(st.Addrs, []netip.Prefix{pfx("10.244.0.0/32")}) {
		t.Fatalf("device = %+v", st)
	}
	far := tunnelPeerOf(peerFar)
	if !slices.Equal(neighs, []Neighbour{{far.VTEP, far.MAC, true}}) || !slices.Equal(fdb, []FDBEntry{{far.MAC, far.HostIP}}) {
		t.Fatalf("entries: neighbours %v, fdb %v", neighs, fdb)
	}
	wantRoutes := []Route{
		unreachablePool,
		blackhole("10.244.0.0/23"),
		{Dst: peerB.Block, Via: peerB.Via, LinkIndex: link.Index},
		{Dst: peerFar.Block, Via: far.VTEP, LinkIndex: st.Index, OnLink: true},
	}
	if got := ours(k); !slices.Equal(got, wantRoutes) {
		t.Fatalf("routes = %v, want %v", got, wantRoutes)
	}
	if got := testutil.ToFloat64(r.metrics.peersByPath.WithLabelValues("ipv4", "vxlan")); got != 1 {
		t.Errorf("vxlan peers gauge = %v", got)
	}
	if got := testutil.ToFloat64(r.metrics.peersByPath.WithLabelValues("ipv4", "direct")); got != 1 {
		t.Errorf("direct peers gauge = %v", got)
	}

	writes := k.Writes()
	if _, err := r.Reconcile(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	if k.Writes() != writes {
		t.Fatalf("second pass wrote %d times", k.Writes()-writes)
	}

	// Deleted by hand: recreated with its routes and entries.
	k.DeleteLink(TunnelName)
	if res, err = r.Reconcile(t.Context(), d); err != nil || !res.Programmed("far") {
		t.Fatalf("after the device was deleted: %v, %v", res.Peers, err)
	}
	st2, neighs, _ := tunnelOf(t, k)
	if len(neighs) != 1 || !slices.Contains(ours(k), Route{Dst: peerFar.Block, Via: far.VTEP, LinkIndex: st2.Index, OnLink: true}) {
		t.Fatalf("not restored: neighbours %v routes %v", neighs, ours(k))
	}

	// A stale, learnt entry is replaced; a stray one goes.
	k.PutNeighbour(Neighbour{IP: far.VTEP, MAC: MAC{2, 0, 0, 0, 0, 1}})
	k.PutNeighbour(Neighbour{IP: addr("10.244.99.0"), MAC: MAC{2, 0, 0, 0, 0, 2}})
	if _, err := r.Reconcile(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	if _, neighs, _ = tunnelOf(t, k); !slices.Equal(neighs, []Neighbour{{far.VTEP, far.MAC, true}}) {
		t.Fatalf("neighbours = %v", neighs)
	}

	// The last VXLAN peer goes: the device goes with its routes.
	if _, err := r.Reconcile(t.Context(), encapDesired(EncapsulationCrossSubnet, peerB)); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Tunnel(); !errors.Is(err, ErrLinkNotFound) {
		t.Fatalf("device still there: %v", err)
	}
	if got := ours(k); !slices.Equal(got, wantRoutes[:3]) {
		t.Fatalf("routes = %v", got)
	}
}

func TestReconcileVXLANPeerMoves(t *testing.T) {
	k, _ := newFake(t)
	r := NewReconciler(k, nil, nil)
	if _, err := r.Reconcile(t.Context(), encapDesired(EncapsulationCrossSubnet, peerFar)); err != nil {
		t.Fatal(err)
	}
	// The peer restarts on this host's network: direct, and the device goes.
	moved := PeerRoute{"far", peerFar.Block, addr("172.16.254.7")}
	res, err := r.Reconcile(t.Context(), encapDesired(EncapsulationCrossSubnet, moved))
	if err != nil || !res.Programmed("far") || res.Paths["far"].Path != PathDirect {
		t.Fatalf("after the move: %v %v %v", res.Peers, res.Paths, err)
	}
	if _, err := k.Tunnel(); !errors.Is(err, ErrLinkNotFound) {
		t.Fatalf("device still there: %v", err)
	}
	// And back to another network: encapsulated to its new address.
	back := PeerRoute{"far", peerFar.Block, addr("172.16.253.70")}
	if res, err = r.Reconcile(t.Context(), encapDesired(EncapsulationCrossSubnet, back)); err != nil || !res.Programmed("far") {
		t.Fatalf("after the move back: %v %v", res.Peers, err)
	}
	if _, _, fdb := tunnelOf(t, k); !slices.Equal(fdb, []FDBEntry{{VTEPMAC(back.Via), back.Via}}) {
		t.Fatalf("fdb = %v", fdb)
	}
}

func TestReconcileVXLANOwnHostMoves(t *testing.T) {
	k, _ := newFake(t)
	r := NewReconciler(k, nil, nil)
	if _, err := r.Reconcile(t.Context(), encapDesired(EncapsulationCrossSubnet, peerFar)); err != nil {
		t.Fatal(err)
	}
	before, _, _ := tunnelOf(t, k)
	k.SetLink(Link{Name: "em1", Index: 1, Up: true, Addrs: []netip.Prefix{pfx("172.16.252.1/24")}})
	d := encapDesired(EncapsulationCrossSubnet, peerFar)
	d.HostIP = addr("172.16.252.1")
	if res, err := r.Reconcile(t.Context(), d); err != nil || !res.Programmed("far") {
		t.Fatalf("%v %v", res.Peers, err)
	}
	after, _, _ := tunnelOf(t, k)
	if after.Tunnel.Local != d.HostIP || after.Tunnel.MAC != VTEPMAC(d.HostIP) {
		t.Fatalf("device not recreated for the new address: before %+v after %+v", before, after)
	}
}

func TestReconcileVXLANForeignDevice(t *testing.T) {
	k, _ := newFake(t)
	k.AddLink(TunnelName) // a dummy of someone else's with our name
	r := NewReconciler(k, nil, nil)
	res, err := r.Reconcile(t.Context(), encapDesired(EncapsulationCrossSubnet, peerB, peerFar))
	if err != nil {
		t.Fatal(err)
	}
	if !res.Programmed("b") || !errors.Is(res.PeerErrors["far"], ErrTunnelNotUsable) ||
		!strings.Contains(res.Peers["far"], "not Grapevine's") {
		t.Fatalf("peers = %v", res.Peers)
	}
	if _, err := r.Reconcile(t.Context(), encapDesired(EncapsulationCrossSubnet, peerB)); err != nil {
		t.Fatal(err)
	}
	if st, err := k.Tunnel(); err != nil || st.Kind == "vxlan" {
		t.Fatalf("someone else's device was touched: %+v %v", st, err)
	}
}

func TestReconcileVXLANKeepsStateWhenLinkUnknown(t *testing.T) {
	k, _ := newFake(t)
	r := NewReconciler(k, nil, nil)
	d := encapDesired(EncapsulationCrossSubnet, peerFar)
	if _, err := r.Reconcile(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	routes := ours(k)
	k.InjectError(OpLink, netip.Prefix{}, errors.New("netlink: interrupted"))
	if _, err := r.Reconcile(t.Context(), d); err == nil {
		t.Fatal("no error while the link cannot be read")
	}
	if _, n, _ := tunnelOf(t, k); len(n) != 1 || !slices.Equal(ours(k), routes) {
		t.Fatalf("VXLAN state changed while the link was unknown: %v %v", n, ours(k))
	}
}

func TestReconcileVXLANDeviceFailure(t *testing.T) {
	k, _ := newFake(t)
	k.InjectError(OpTunnel, netip.Prefix{}, errors.New("operation not supported"))
	r := NewReconciler(k, nil, nil)
	res, err := r.Reconcile(t.Context(), encapDesired(EncapsulationCrossSubnet, peerB, peerFar))
	if err != nil {
		t.Fatalf("a device failure failed the pass: %v", err)
	}
	if !res.Programmed("b") || !strings.Contains(res.Peers["far"], "operation not supported") {
		t.Fatalf("peers = %v", res.Peers)
	}
	k.InjectError(OpTunnel, netip.Prefix{}, nil)
	if res, _ = r.Reconcile(t.Context(), encapDesired(EncapsulationCrossSubnet, peerB, peerFar)); !res.Programmed("far") {
		t.Fatalf("after the fault cleared: %v", res.Peers)
	}
}

func TestReconcileRejectsEncapsulationWithoutHostIP(t *testing.T) {
	k, _ := newFake(t)
	d := desired(peerFar)
	d.Encapsulation = EncapsulationCrossSubnet
	if _, err := NewReconciler(k, nil, nil).Reconcile(t.Context(), d); err == nil {
		t.Fatal("encapsulation without a host IP accepted")
	}
	if k.Writes() != 0 {
		t.Fatal("rejected state changed the kernel")
	}
}

// The device's MTU follows the underlay's: a changed one rebuilds it,
// while an unknown one (0) accepts the device's as it is.
func TestPlanTunnelMTU(t *testing.T) {
	want := Tunnel{VNI: 74, Port: 4789, Local: addr("172.16.254.1"), Underlay: 2, MAC: VTEPMAC(addr("172.16.254.1")), MTU: 1450}
	have := TunnelState{Kind: "vxlan", Index: 9, Up: true, Tunnel: want}
	recreate := TunnelPlan{Delete: true, Create: true, SetUp: true}
	for _, tt := range []struct {
		name             string
		wantMTU, haveMTU int
		plan             TunnelPlan
	}{
		{"as wanted", 1450, 1450, TunnelPlan{}},
		{"underlay lowered: recreate", 1350, 1450, recreate},
		{"underlay raised: recreate", 8950, 1450, recreate},
		{"underlay's MTU unknown: left as it is", 0, 1350, TunnelPlan{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w, h := want, have
			w.MTU, h.Tunnel.MTU = tt.wantMTU, tt.haveMTU
			got, err := PlanTunnel(w, true, h, true)
			if err != nil {
				t.Fatal(err)
			}
			if !equalPlans(got, tt.plan) {
				t.Errorf("plan = %+v, want %+v", got, tt.plan)
			}
		})
	}
}

// An uplink whose MTU changes under a running agent: the next pass
// rebuilds gv.vxlan with the new MTU less the overhead, puts the VXLAN
// peer's route and entries back on it, and reports the uplink's MTU.
func TestReconcileVXLANFollowsUplinkMTU(t *testing.T) {
	k, link := newFake(t)
	link.MTU = 1500
	k.SetLink(link)
	r := NewReconciler(k, nil, nil)
	d := encapDesired(EncapsulationCrossSubnet, peerFar)
	for _, mtu := range []int{1500, 1400} {
		link.MTU = mtu
		k.SetLink(link)
		res, err := r.Reconcile(t.Context(), d)
		if err != nil {
			t.Fatal(err)
		}
		st, neighs, fdb := tunnelOf(t, k)
		if st.Tunnel.MTU != mtu-TunnelOverhead || res.UplinkMTU != mtu {
			t.Errorf("uplink MTU %d: device MTU %d, result's uplink MTU %d; want %d, %d", mtu, st.Tunnel.MTU, res.UplinkMTU, mtu-TunnelOverhead, mtu)
		}
		if !res.Programmed("far") || len(neighs) != 1 || len(fdb) != 1 {
			t.Errorf("uplink MTU %d: peer %v, neighbours %v, fdb %v", mtu, res.Peers, neighs, fdb)
		}
	}
}
