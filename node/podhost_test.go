package node

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/internal/hostveth"
)

var (
	podPool = pfx("10.244.0.0/16")
	macA    = MAC{0x02, 0, 0, 0, 0, 0x0a}
	macB    = MAC{0x02, 0, 0, 0, 0, 0x0b}
	resA    = Reservation{Addr: addr("10.244.0.5"), ContainerID: "aaa", IfName: "eth0"}
	resB    = Reservation{Addr: addr("10.244.0.6"), ContainerID: "bbb", IfName: "eth0"}
	vethA   = HostVeth{Name: "gva", Index: 10, Alias: "grapevine/aaa/eth0", PodMAC: macA}
	vethB   = HostVeth{Name: "gvb", Index: 11, Alias: "grapevine/bbb/eth0", PodMAC: macB}
)

func podSpec(rs ...Reservation) PodSpec {
	return PodSpec{Network: NetworkName, Pool: podPool, Reservations: rs}
}

func TestDesiredPodHosts(t *testing.T) {
	tests := []struct {
		name     string
		spec     PodSpec
		veths    []HostVeth
		want     []PodHost
		problems []error
	}{
		{name: "reservations pair with the veths carrying their alias",
			spec: podSpec(resB, resA), veths: []HostVeth{vethA, vethB},
			want: []PodHost{{resA.Addr, vethA}, {resB.Addr, vethB}}},
		{name: "a reservation without a veth has no host side (ADD or DEL under way)",
			spec: podSpec(resA, resB), veths: []HostVeth{vethA},
			want: []PodHost{{resA.Addr, vethA}}},
		{name: "a veth without a reservation is not one of ours to route",
			spec: podSpec(resA), veths: []HostVeth{vethA, vethB},
			want: []PodHost{{resA.Addr, vethA}}},
		{name: "a veth of another network is not the attachment's",
			spec:  podSpec(resA),
			veths: []HostVeth{{Name: "gvx", Index: 12, Alias: "other/aaa/eth0"}}},
		{name: "another interface of the same container is another attachment",
			spec:  podSpec(resA),
			veths: []HostVeth{{Name: "gvx", Index: 12, Alias: "grapevine/aaa/net1"}}},
		{name: "an address outside the pool is never routed",
			spec:     podSpec(Reservation{Addr: addr("192.168.1.1"), ContainerID: "aaa", IfName: "eth0"}),
			veths:    []HostVeth{vethA},
			problems: []error{ErrOutsidePool}},
		{name: "a dual-stack pod's IPv6 address in pool6 is kept like its IPv4 one",
			spec: PodSpec{Network: NetworkName, Pool: podPool, Pool6: pfx("fd00:10:244::/48"),
				Reservations: []Reservation{resA, {Addr: addr("fd00:10:244::5"), ContainerID: "aaa", IfName: "eth0"}}},
			veths: []HostVeth{vethA},
			want:  []PodHost{{resA.Addr, vethA}, {addr("fd00:10:244::5"), vethA}}},
		{name: "an IPv6 address without pool6 is never routed",
			spec:     podSpec(Reservation{Addr: addr("fd00:10:244::5"), ContainerID: "aaa", IfName: "eth0"}),
			veths:    []HostVeth{vethA},
			problems: []error{ErrOutsidePool}},
		{name: "an IPv6 address outside pool6 is never routed",
			spec: PodSpec{Network: NetworkName, Pool: podPool, Pool6: pfx("fd00:10:244::/48"),
				Reservations: []Reservation{{Addr: addr("fd00:99::5"), ContainerID: "aaa", IfName: "eth0"}}},
			veths:    []HostVeth{vethA},
			problems: []error{ErrOutsidePool}},
		{name: "an IPv6-only node's pod in its IPv6 pool is kept",
			spec: PodSpec{Network: NetworkName, Pool: pfx("fd00:10:244::/48"),
				Reservations: []Reservation{{Addr: addr("fd00:10:244::5"), ContainerID: "aaa", IfName: "eth0"}}},
			veths: []HostVeth{vethA},
			want:  []PodHost{{addr("fd00:10:244::5"), vethA}}},
		{name: "an IPv6-only node never routes an IPv4 address",
			spec: PodSpec{Network: NetworkName, Pool: pfx("fd00:10:244::/48"),
				Reservations: []Reservation{resA}},
			veths:    []HostVeth{vethA},
			problems: []error{ErrOutsidePool}},
		{name: "two veths with one alias are left alone",
			spec:     podSpec(resA),
			veths:    []HostVeth{vethA, {Name: "gvz", Index: 13, Alias: vethA.Alias}},
			problems: []error{ErrAmbiguousVeth}},
		{name: "nothing reserved, nothing wanted", spec: podSpec(), veths: []HostVeth{vethA}},
		{name: "a reservation naming no attachment (an ADD killed mid-write) has no host side",
			spec:  podSpec(Reservation{Addr: addr("10.244.0.9")}),
			veths: []HostVeth{vethA, {Name: "gvx", Index: 12, Alias: "grapevine//"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, problems := DesiredPodHosts(tt.spec, tt.veths)
			if !slices.Equal(got, tt.want) {
				t.Errorf("pods = %v, want %v", got, tt.want)
			}
			checkProblems(t, problems, tt.problems)
		})
	}
}

func checkProblems(t *testing.T, got, want []error) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("problems = %v, want %v", got, want)
	}
	for i := range want {
		if !errors.Is(got[i], want[i]) {
			t.Errorf("problem %d = %v, want %v", i, got[i], want[i])
		}
	}
}

// wiredSysctls is every setting of vs as the plugin leaves it.
func wiredSysctls(vs ...HostVeth) map[string]string {
	m := make(map[string]string)
	for _, v := range vs {
		for _, s := range hostveth.Sysctls(v.Name) {
			m[s.Key] = s.Value
		}
	}
	return m
}

func TestPlanPodHosts(t *testing.T) {
	podA := PodHost{resA.Addr, vethA}
	routeA := podA.Route()
	neighA := PodNeighbour{vethA.Index, Neighbour{IP: resA.Addr, MAC: macA, Permanent: true}}
	with := func(m map[string]string, key, value string) map[string]string {
		m[key] = value
		return m
	}
	without := func(m map[string]string, key string) map[string]string {
		delete(m, key)
		return m
	}
	proxyARP := hostveth.Sysctls(vethA.Name)[0]
	acceptRA := hostveth.Sysctls(vethA.Name)[3]
	unknownMAC := vethA
	unknownMAC.PodMAC = MAC{}
	tests := []struct {
		name     string
		pods     []PodHost
		routes   []Route
		neighs   []PodNeighbour
		sysctls  map[string]string
		want     PodHostPlan
		problems []error
	}{
		{name: "intact", pods: []PodHost{podA}, routes: []Route{routeA}, neighs: []PodNeighbour{neighA}, sysctls: wiredSysctls(vethA)},
		{name: "route deleted", pods: []PodHost{podA}, neighs: []PodNeighbour{neighA}, sysctls: wiredSysctls(vethA),
			want: PodHostPlan{Routes: []Route{routeA}}},
		{name: "route moved to another link", pods: []PodHost{podA},
			routes: []Route{{Dst: routeA.Dst, LinkIndex: 99}}, neighs: []PodNeighbour{neighA}, sysctls: wiredSysctls(vethA),
			want: PodHostPlan{Routes: []Route{routeA}}},
		{name: "route given a gateway", pods: []PodHost{podA},
			routes: []Route{{Dst: routeA.Dst, LinkIndex: vethA.Index, Via: addr("172.16.254.9")}}, neighs: []PodNeighbour{neighA}, sysctls: wiredSysctls(vethA),
			want: PodHostPlan{Routes: []Route{routeA}}},
		{name: "route turned into a blackhole", pods: []PodHost{podA},
			routes: []Route{{Dst: routeA.Dst, Blackhole: true}}, neighs: []PodNeighbour{neighA}, sysctls: wiredSysctls(vethA),
			want: PodHostPlan{Routes: []Route{routeA}}},
		{name: "a route with another metric does not count", pods: []PodHost{podA},
			routes: []Route{{Dst: routeA.Dst, LinkIndex: vethA.Index, Metric: 100}}, neighs: []PodNeighbour{neighA}, sysctls: wiredSysctls(vethA),
			want: PodHostPlan{Routes: []Route{routeA}}},
		{name: "neighbour deleted", pods: []PodHost{podA}, routes: []Route{routeA}, sysctls: wiredSysctls(vethA),
			want: PodHostPlan{Neighbours: []PodNeighbour{neighA}}},
		{name: "neighbour no longer permanent", pods: []PodHost{podA}, routes: []Route{routeA},
			neighs: []PodNeighbour{{vethA.Index, Neighbour{IP: resA.Addr, MAC: macA}}}, sysctls: wiredSysctls(vethA),
			want: PodHostPlan{Neighbours: []PodNeighbour{neighA}}},
		{name: "neighbour with another MAC", pods: []PodHost{podA}, routes: []Route{routeA},
			neighs: []PodNeighbour{{vethA.Index, Neighbour{IP: resA.Addr, MAC: macB, Permanent: true}}}, sysctls: wiredSysctls(vethA),
			want: PodHostPlan{Neighbours: []PodNeighbour{neighA}}},
		{name: "the same address on another link does not count", pods: []PodHost{podA}, routes: []Route{routeA},
			neighs: []PodNeighbour{{vethB.Index, neighA.Neighbour}}, sysctls: wiredSysctls(vethA),
			want: PodHostPlan{Neighbours: []PodNeighbour{neighA}}},
		{name: "pod MAC unknown, entry missing", pods: []PodHost{{resA.Addr, unknownMAC}}, routes: []Route{routeA}, sysctls: wiredSysctls(vethA),
			problems: []error{ErrPodMACUnknown}},
		{name: "pod MAC unknown, permanent entry kept", pods: []PodHost{{resA.Addr, unknownMAC}}, routes: []Route{routeA},
			neighs: []PodNeighbour{neighA}, sysctls: wiredSysctls(vethA)},
		{name: "proxy_arp turned off", pods: []PodHost{podA}, routes: []Route{routeA}, neighs: []PodNeighbour{neighA},
			sysctls: with(wiredSysctls(vethA), proxyARP.Key, "0"),
			want:    PodHostPlan{Sysctls: []Sysctl{proxyARP}}},
		{name: "a missing optional setting is skipped", pods: []PodHost{podA}, routes: []Route{routeA}, neighs: []PodNeighbour{neighA},
			sysctls: without(wiredSysctls(vethA), acceptRA.Key)},
		{name: "a missing required setting is written (and fails there)", pods: []PodHost{podA}, routes: []Route{routeA}, neighs: []PodNeighbour{neighA},
			sysctls: without(wiredSysctls(vethA), proxyARP.Key),
			want:    PodHostPlan{Sysctls: []Sysctl{proxyARP}}},
		{name: "two pods, each repaired on its own veth", pods: []PodHost{podA, {resB.Addr, vethB}},
			routes: []Route{routeA}, neighs: []PodNeighbour{neighA}, sysctls: with(wiredSysctls(vethA, vethB), proxyARP.Key, "0"),
			want: PodHostPlan{
				Routes:     []Route{PodHost{resB.Addr, vethB}.Route()},
				Neighbours: []PodNeighbour{{vethB.Index, Neighbour{IP: resB.Addr, MAC: macB, Permanent: true}}},
				Sysctls:    []Sysctl{proxyARP},
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, problems := PlanPodHosts(tt.pods, tt.routes, tt.neighs, tt.sysctls)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("plan = %+v, want %+v", got, tt.want)
			}
			checkProblems(t, problems, tt.problems)
		})
	}
}

// wireFakePod wires r's pod in k as the plugin does and returns its veth.
func wireFakePod(k *FakeKernel, name string, r Reservation, mac MAC) HostVeth {
	alias := hostveth.Alias(NetworkName, r.ContainerID, r.IfName)
	l := k.WirePod(name, alias, r.Addr, mac)
	return HostVeth{Name: name, Index: l.Index, Alias: alias, PodMAC: mac}
}

// TestReconcilePodsPutsBack: whatever of a pod's host side is deleted or
// changed comes back in the next pass, and an intact one is not written.
func TestReconcilePodsPutsBack(t *testing.T) {
	k := NewFakeKernel()
	k.AddLink("em1", pfx("172.16.254.1/24"))
	a := wireFakePod(k, "gva", resA, macA)
	b := wireFakePod(k, "gvb", resB, macB)
	r := NewReconciler(k, nil, nil)
	spec := podSpec(resA, resB)

	writes := k.Writes()
	res, err := r.ReconcilePods(t.Context(), spec)
	if err != nil || k.Writes() != writes || res.Pods != 2 {
		t.Fatalf("intact pods: %+v, %v, %d writes", res, err, k.Writes()-writes)
	}

	routeA := PodHost{resA.Addr, a}.Route()
	k.RemoveRoute(routeA)
	k.PutRoute(PodHost{resB.Addr, b}.Route().withLink(a.Index), 3)
	k.RemoveNeighbour(a.Index, resA.Addr)
	k.PutPodNeighbour(PodNeighbour{b.Index, Neighbour{IP: resB.Addr, MAC: macA}})
	k.PutSysctl("net/ipv4/conf/gva/proxy_arp", "0")
	k.PutSysctl("net/ipv4/conf/gvb/forwarding", "0")

	res, err = r.ReconcilePods(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if res.Routes != 2 || res.Neighbours != 2 || res.Sysctls != 2 {
		t.Errorf("repairs = %+v, want 2 routes, 2 neighbours, 2 settings", res)
	}
	checkFakePod(t, k, a, resA.Addr)
	checkFakePod(t, k, b, resB.Addr)

	writes = k.Writes()
	if _, err := r.ReconcilePods(t.Context(), spec); err != nil || k.Writes() != writes {
		t.Errorf("second pass: %v, %d writes", err, k.Writes()-writes)
	}
}

func (r Route) withLink(index int) Route {
	r.LinkIndex = index
	return r
}

// checkFakePod fails unless the pod at ip has its host side on v.
func checkFakePod(t *testing.T, k *FakeKernel, v HostVeth, ip netip.Addr) {
	t.Helper()
	want := PodHost{ip, v}.Route()
	if !slices.ContainsFunc(k.Table(), func(r FakeRoute) bool { return r.Route == want }) {
		t.Errorf("no route %s", want)
	}
	if n, ok := k.PodNeighbour(v.Index, ip); !ok || !n.Permanent || n.MAC != v.PodMAC {
		t.Errorf("neighbour of %s on %s = %+v (found %v), want PERMANENT %s", ip, v.Name, n, ok, v.PodMAC)
	}
	for _, s := range hostveth.Sysctls(v.Name) {
		if got, err := k.Sysctl(s.Key); err != nil || got != s.Value {
			t.Errorf("%s = %q (%v), want %q", s.Key, got, err, s.Value)
		}
	}
}

// TestReconcilePodsErrors: a veth of another network, an
// address outside the pool and a failing write for one pod leave the rest
// as they are, and the failures are reported.
func TestReconcilePodsErrors(t *testing.T) {
	k := NewFakeKernel()
	a := wireFakePod(k, "gva", resA, macA)
	b := wireFakePod(k, "gvb", resB, macB)
	other := k.WirePod("gvo", "othernet/ccc/eth0", addr("10.244.0.7"), macB)
	k.RemoveRoute(PodHost{resA.Addr, a}.Route())
	k.RemoveRoute(PodHost{resB.Addr, b}.Route())
	k.RemoveRoute(Route{Dst: pfx("10.244.0.7/32"), LinkIndex: other.Index})
	k.InjectError(OpPod, pfx("10.244.0.5/32"), errors.New("injected"))

	r := NewReconciler(k, nil, nil)
	outside := Reservation{Addr: addr("192.168.7.7"), ContainerID: "bbb", IfName: "eth0"}
	res, err := r.ReconcilePods(t.Context(), podSpec(resA, resB, outside, Reservation{Addr: addr("10.244.0.7"), ContainerID: "ccc", IfName: "eth0"}))
	if err == nil || !strings.Contains(err.Error(), "injected") || !errors.Is(err, ErrOutsidePool) {
		t.Errorf("err = %v, want the injected failure and the address outside the pool", err)
	}
	if res.Routes != 1 {
		t.Errorf("routes put back = %d, want 1 (b's)", res.Routes)
	}
	checkFakePod(t, k, b, resB.Addr)
	for _, fr := range k.Table() {
		if fr.Dst == pfx("10.244.0.7/32") || fr.Dst == pfx("192.168.7.7/32") {
			t.Errorf("routed %s, which is not this network's pod", fr.Route)
		}
	}
}

// TestReconcilePodsWaitsForTheirVethToSettle: a pod whose veth the passes
// have not seen for PodSpec.Settle yet may be one the plugin is still
// wiring, and is left to it; a later pass repairs it.
func TestReconcilePodsWaitsForTheirVethToSettle(t *testing.T) {
	k := NewFakeKernel()
	a := wireFakePod(k, "gva", resA, macA)
	k.RemoveRoute(PodHost{resA.Addr, a}.Route())
	r := NewReconciler(k, nil, nil)
	spec := podSpec(resA)
	spec.Settle = time.Hour
	writes := k.Writes()
	res, err := r.ReconcilePods(t.Context(), spec)
	if err != nil || res.Unsettled != 1 || res.Routes != 0 || k.Writes() != writes {
		t.Fatalf("young veth: %+v, %v, %d writes; want it left alone", res, err, k.Writes()-writes)
	}
	spec.Settle = 0
	if res, err := r.ReconcilePods(t.Context(), spec); err != nil || res.Unsettled != 0 || res.Routes != 1 {
		t.Fatalf("settled veth: %+v, %v; want its route put back", res, err)
	}
}

// TestReconcilePodsReportsTheVethsItListed: the agent tells gone pods from
// the pass's listing, so a pass that could not list says so rather than
// reporting no veths.
func TestReconcilePodsReportsTheVethsItListed(t *testing.T) {
	k := NewFakeKernel()
	a := wireFakePod(k, "gva", resA, macA)
	k.AddHostVeth("gvx", "other/ccc/eth0", macB)
	r := NewReconciler(k, nil, nil)
	res, err := r.ReconcilePods(t.Context(), podSpec(resA))
	if err != nil {
		t.Fatal(err)
	}
	if !res.VethsListed || !slices.Equal(res.Veths, []HostVeth{a}) {
		t.Errorf("veths = %+v (listed %v), want %+v", res.Veths, res.VethsListed, a)
	}

	k.InjectError(OpPod, netip.Prefix{}, errors.New("injected"))
	res, err = r.ReconcilePods(t.Context(), podSpec(resA))
	if err == nil || res.VethsListed || res.Veths != nil {
		t.Errorf("failed listing: %+v, %v; want an error and no listing", res, err)
	}
}
