package node

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/grapevine-net/grapevine/internal/hostveth"
	"github.com/grapevine-net/grapevine/ipam"
)

// testPod is a pod wired into host as the CNI plugin wires one: a veth with
// its host side in host (MAC ee:ee:ee:ee:ee:ee, alias, settings, /32 route,
// PERMANENT neighbour entry) and its other end, eth0, in a namespace of its
// own, with the pod's address.
type testPod struct {
	res    Reservation
	veth   HostVeth
	podMAC MAC
}

func wireTestPod(t *testing.T, host *testNS, k *NetlinkKernel, vethName string, res Reservation) testPod {
	t.Helper()
	pod := newTestNS(t)
	podFd, err := netns.GetFromPath(pod.path)
	if err != nil {
		t.Fatal(err)
	}
	defer podFd.Close()
	alias := hostveth.Alias(NetworkName, res.ContainerID, res.IfName)
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: vethName, HardwareAddr: net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(podFd)),
	}
	if err := host.handle.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s: %v", vethName, err)
	}
	l, err := host.handle.LinkByName(vethName)
	if err != nil {
		t.Fatal(err)
	}
	if err := host.handle.LinkSetAlias(l, alias); err != nil {
		t.Fatal(err)
	}
	if err := host.handle.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	eth0 := pod.setUp(t, "eth0", res.Addr.String()+"/32")
	var podMAC MAC
	copy(podMAC[:], eth0.Attrs().HardwareAddr)

	for _, s := range hostveth.Sysctls(vethName) {
		if err := k.SetSysctl(s); err != nil && !s.Optional {
			t.Fatal(err)
		}
	}
	hv := HostVeth{Name: vethName, Index: l.Attrs().Index, Alias: alias, PodMAC: podMAC}
	p := PodHost{res.Addr, hv}
	if err := k.ReplacePodRoute(p.Route()); err != nil {
		t.Fatal(err)
	}
	if err := k.SetPodNeighbour(PodNeighbour{hv.Index, Neighbour{IP: res.Addr, MAC: podMAC}}); err != nil {
		t.Fatal(err)
	}
	return testPod{res: res, veth: hv, podMAC: podMAC}
}

// writeStore writes rs into a new IPAM store as host-local does and returns
// the store.
func writeStore(t *testing.T, rs ...Reservation) ipam.Config {
	t.Helper()
	store := ipam.Config{Network: NetworkName, DataDir: t.TempDir()}
	if err := os.Mkdir(store.StoreDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if err := os.WriteFile(filepath.Join(store.StoreDir(), r.Addr.String()), []byte(r.ContainerID+"\r\n"+r.IfName), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return store
}

// ipLines runs `ip -n <ns> args...` and returns its lines.
func (n *testNS) ipLines(t *testing.T, args ...string) []string {
	t.Helper()
	return n.command(t, "ip", args...)
}

// TestNetlinkPodHostRepaired: a pod's /32 route, its PERMANENT neighbour
// entry and its veth's proxy_arp, deleted or changed by hand, are put back
// by one pass, with the pod side's MAC learnt across the namespace
// boundary; the route deletion is reported by the watch.
func TestNetlinkPodHostRepaired(t *testing.T) {
	host := newTestNS(t)
	host.addLink(t, "em1", "172.16.254.1/24")
	k := host.kernel(t)
	pod := wireTestPod(t, host, k, "gvtest0", resA)
	other := wireTestPod(t, host, k, "gvtest1", resB)
	spec := podSpec(readStore(t, writeStore(t, resA, resB))...)

	veths, err := k.HostVeths(NetworkName + "/")
	if err != nil {
		t.Fatal(err)
	}
	if want := []HostVeth{pod.veth, other.veth}; !slices.Equal(veths, want) {
		t.Fatalf("host veths = %+v, want %+v (with the pod sides' MACs)", veths, want)
	}
	r := NewReconciler(k, nil, nil)
	if res, err := r.ReconcilePods(t.Context(), spec); err != nil || res.Routes+res.Neighbours+res.Sysctls != 0 {
		t.Fatalf("intact pods: %+v, %v", res, err)
	}

	watchCtx, stop := context.WithCancel(t.Context())
	defer stop()
	changes := k.WatchRoutes(watchCtx)
	route := "10.244.0.5 dev gvtest0 scope link"
	neigh := "10.244.0.5 dev gvtest0 lladdr " + pod.podMAC.String() + " PERMANENT"
	host.ipLines(t, "route", "del", "10.244.0.5/32")
	waitFor(t, changes, "a notification for the deleted pod route")
	host.ipLines(t, "neigh", "del", "10.244.0.5", "dev", "gvtest0")
	host.ipLines(t, "neigh", "replace", "10.244.0.6", "dev", "gvtest1", "lladdr", "02:00:00:00:00:99", "nud", "reachable")
	if err := k.SetSysctl(Sysctl{Key: "net/ipv4/conf/gvtest0/proxy_arp", Value: "0"}); err != nil {
		t.Fatal(err)
	}

	res, err := r.ReconcilePods(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if res.Routes != 1 || res.Neighbours != 2 || res.Sysctls != 1 {
		t.Errorf("repairs = %+v, want 1 route, 2 neighbours, 1 setting", res)
	}
	if got := host.ipLines(t, "route", "show", "10.244.0.5"); !slices.Contains(got, route) {
		t.Errorf("route = %q, want %q", got, route)
	}
	if got := host.ipLines(t, "neigh", "show", "dev", "gvtest0"); !slices.Contains(got, strings.Replace(neigh, " dev gvtest0", "", 1)) {
		t.Errorf("neighbours = %q, want %q", got, neigh)
	}
	if got := host.ipLines(t, "neigh", "show", "dev", "gvtest1"); !slices.Contains(got, "10.244.0.6 lladdr "+other.podMAC.String()+" PERMANENT") {
		t.Errorf("neighbours of the other pod = %q, want its PERMANENT entry back", got)
	}
	if v, err := k.Sysctl("net/ipv4/conf/gvtest0/proxy_arp"); err != nil || v != "1" {
		t.Errorf("proxy_arp = %q, %v; want 1", v, err)
	}
	if res, err := r.ReconcilePods(t.Context(), spec); err != nil || res.Routes+res.Neighbours+res.Sysctls != 0 {
		t.Errorf("second pass: %+v, %v; want no writes", res, err)
	}
}

// readStore is ipam.ReadReservations failing the test on an error.
func readStore(t *testing.T, store ipam.Config) []Reservation {
	t.Helper()
	rs, err := ipam.ReadReservations(store)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// TestNetlinkPodHostRepaired6: a dual-stack pod's IPv6 host side, its /128
// route and PERMANENT IPv6 neighbour entry, deleted by hand, is put back by
// one pass like the IPv4 one; the deletion is reported by the watch, and an
// intact pod costs no writes (the kernel lists the route back as written).
func TestNetlinkPodHostRepaired6(t *testing.T) {
	host := newTestNS(t)
	host.addLink(t, "em1", "172.16.254.1/24")
	k := host.kernel(t)
	pod := wireTestPod(t, host, k, "gvtest0", resA)
	res6 := Reservation{Addr: addr("fd00:10:244::5"), ContainerID: resA.ContainerID, IfName: resA.IfName}
	p6 := PodHost{res6.Addr, pod.veth}
	if err := k.ReplacePodRoute(p6.Route()); err != nil {
		t.Fatal(err)
	}
	if err := k.SetPodNeighbour(PodNeighbour{pod.veth.Index, Neighbour{IP: res6.Addr, MAC: pod.podMAC}}); err != nil {
		t.Fatal(err)
	}
	spec := podSpec(readStore(t, writeStore(t, resA, res6))...)
	spec.Pool6 = pfx("fd00:10:244::/48")

	r := NewReconciler(k, nil, nil)
	if res, err := r.ReconcilePods(t.Context(), spec); err != nil || res.Routes+res.Neighbours+res.Sysctls != 0 {
		t.Fatalf("intact dual-stack pod: %+v, %v", res, err)
	}
	watchCtx, stop := context.WithCancel(t.Context())
	defer stop()
	changes := k.WatchRoutes(watchCtx)
	host.ipLines(t, "-6", "route", "del", "fd00:10:244::5/128")
	waitFor(t, changes, "a notification for the deleted IPv6 pod route")
	host.ipLines(t, "-6", "neigh", "del", "fd00:10:244::5", "dev", "gvtest0")
	waitFor(t, changes, "a notification for the deleted IPv6 pod neighbour")

	res, err := r.ReconcilePods(t.Context(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if res.Routes != 1 || res.Neighbours != 1 {
		t.Errorf("repairs = %+v, want 1 route, 1 neighbour", res)
	}
	if got := host.ipLines(t, "-6", "route", "show", "fd00:10:244::5"); !slices.Contains(got, "fd00:10:244::5 dev gvtest0 metric 1024 pref medium") {
		t.Errorf("IPv6 route = %q, want it back via gvtest0", got)
	}
	if got := host.ipLines(t, "-6", "neigh", "show", "dev", "gvtest0"); !slices.Contains(got, "fd00:10:244::5 lladdr "+pod.podMAC.String()+" PERMANENT") {
		t.Errorf("IPv6 neighbours = %q, want the pod's PERMANENT entry back", got)
	}
	if res, err := r.ReconcilePods(t.Context(), spec); err != nil || res.Routes+res.Neighbours+res.Sysctls != 0 {
		t.Errorf("second pass: %+v, %v; want no writes", res, err)
	}
}
