package plugin

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The dual-stack lab's blocks, and the host's IPv6 address on its uplink.
const (
	labBlock6 = "fd00:10:244:1::/64"
	labHost6  = "fd00:192:0:2::1"
)

// newDualStackLab is newLab with an IPv6 block in node.json and an IPv6
// address on the host's uplink, but no IPv6 default route on the host:
// nothing of the pods' IPv6 wiring may depend on one. addrGenMode, when not
// negative, is set as the host namespace's default
// net.ipv6.conf.default.addr_gen_mode before any pod's veth exists, so
// every host veth starts with it.
func newDualStackLab(t *testing.T, addrGenMode int) *lab {
	t.Helper()
	l := newLab(t)
	l.writeDualStackState("10.244.1.0/24", labBlock6, 1450)
	inNS(t, l.hostNS, func() error {
		if addrGenMode >= 0 {
			key := "/proc/sys/net/ipv6/conf/default/addr_gen_mode"
			if err := os.WriteFile(key, []byte(fmt.Sprint(addrGenMode)), 0o644); err != nil {
				return err
			}
		}
		link, err := netlink.LinkByName("gvcniuplink")
		if err != nil {
			return err
		}
		// nodad: the lab's host address is usable at once, as a settled
		// host's is.
		return netlink.AddrAdd(link, &netlink.Addr{IPNet: hostPrefix(netip.MustParseAddr(labHost6)), Flags: unix.IFA_F_NODAD})
	})
	inNS(t, l.hostNS, func() error {
		routes, err := netlink.RouteList(nil, unix.AF_INET6)
		for _, r := range routes {
			if r.Dst == nil || r.Dst.String() == "::/0" {
				t.Fatalf("the lab's host has an IPv6 default route: %v", r)
			}
		}
		return err
	})
	return l
}

// podIPsOf returns the pod's IPv4 and IPv6 addresses in an ADD result,
// failing unless there is exactly one of each, on the pod's interface.
func podIPsOf(t *testing.T, res *current.Result) (v4, v6 netip.Addr) {
	t.Helper()
	if len(res.IPs) != 2 {
		t.Fatalf("result has %d IPs, want 2: %v", len(res.IPs), res)
	}
	for _, ipc := range res.IPs {
		addr, _ := netip.AddrFromSlice(ipc.Address.IP)
		addr = addr.Unmap()
		gw, bits := "169.254.1.1", 32
		if addr.Is6() {
			gw, bits = "fe80::ecee:eeff:feee:eeee", 128
			v6 = addr
		} else {
			v4 = addr
		}
		if ones, _ := ipc.Address.Mask.Size(); ones != bits || ipc.Gateway.String() != gw || ipc.Interface == nil || *ipc.Interface != 1 {
			t.Errorf("result IP %v, want %s/%d gateway %s on interface 1", ipc, addr, bits, gw)
		}
	}
	var routes []string
	for _, r := range res.Routes {
		routes = append(routes, r.Dst.String()+" via "+r.GW.String())
	}
	want := []string{"0.0.0.0/0 via 169.254.1.1", "::/0 via fe80::ecee:eeff:feee:eeee"}
	if !slices.Equal(routes, want) {
		t.Errorf("result routes %q, want %q", routes, want)
	}
	if !v4.Is4() || !netip.MustParsePrefix(labBlock6).Contains(v6) {
		t.Fatalf("result addresses %s and %s, want one IPv4 and one from %s", v4, v6, labBlock6)
	}
	return v4, v6
}

// assertWired6 checks the IPv6 half of the seed's wiring on both sides: the
// pod's /128 (nodad, never tentative, local), its default route via the host
// veth's link-local address and that address's PERMANENT entry; the host
// veth's link-local address, `<pod6> dev <veth>` and the pod's PERMANENT
// entry.
func assertWired6(t *testing.T, l *lab, p *pod, hostVeth string, pod6 netip.Addr) {
	t.Helper()
	var podMAC string
	inNS(t, p.netns, func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		podMAC = link.Attrs().HardwareAddr.String()
		addrs, err := netlink.AddrList(link, unix.AF_INET6)
		if err != nil {
			return err
		}
		found := false
		for _, a := range addrs {
			if a.IP.Equal(pod6.AsSlice()) {
				ones, _ := a.Mask.Size()
				found = ones == 128 && a.Flags&unix.IFA_F_NODAD != 0 && a.Flags&unix.IFA_F_TENTATIVE == 0
			}
		}
		if !found {
			t.Errorf("pod IPv6 addresses %v, want %s/128 nodad, not tentative", addrs, pod6)
		}
		// Local already, or the pod drops what comes back to it.
		if local, err := netlink.RouteGet(pod6.AsSlice()); err != nil || len(local) == 0 || local[0].Type != unix.RTN_LOCAL {
			t.Errorf("route lookup of %s in the pod: %v, %v; want its local route", pod6, local, err)
		}
		routes, err := netlink.RouteList(link, unix.AF_INET6)
		if err != nil {
			return err
		}
		if !hasDefaultVia(routes, net.ParseIP("fe80::ecee:eeff:feee:eeee")) {
			t.Errorf("pod IPv6 routes %v, want default via fe80::ecee:eeff:feee:eeee dev eth0", routes)
		}
		neighs, err := netlink.NeighList(link.Attrs().Index, unix.AF_INET6)
		if err != nil {
			return err
		}
		if !hasGatewayNeighbour(neighs, netip.MustParseAddr("fe80::ecee:eeff:feee:eeee")) {
			t.Errorf("pod IPv6 neighbours %v, want fe80::ecee:eeff:feee:eeee lladdr ee:ee:ee:ee:ee:ee PERMANENT", neighs)
		}
		return nil
	})
	inNS(t, l.hostNS, func() error {
		link, err := netlink.LinkByName(hostVeth)
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(link, unix.AF_INET6)
		if err != nil {
			return err
		}
		if !hasAddrBits(addrs, netip.MustParseAddr("fe80::ecee:eeff:feee:eeee"), 64) {
			t.Errorf("host veth IPv6 addresses %v, want fe80::ecee:eeff:feee:eeee/64", addrs)
		}
		if drift := checkRouteToPod(hostVeth, link.Attrs().Index, pod6, podMAC); len(drift) > 0 {
			t.Errorf("host side of %s: %v", pod6, drift)
		}
		return nil
	})
}

// TestDualStackAddCheckDel wires a dual-stack pod under each addr_gen_mode
// the host's veths may start with (0 EUI-64, 1 none, 2 stable privacy
// without a secret, 3 random) on a host without an IPv6 default route: the
// pod reaches the host over both families with its first packet, the host
// reaches the pod, CHECK passes, and DEL leaves nothing of either family.
func TestDualStackAddCheckDel(t *testing.T) {
	for mode := 0; mode <= 3; mode++ {
		t.Run(fmt.Sprintf("addr_gen_mode=%d", mode), func(t *testing.T) {
			l := newDualStackLab(t, mode)
			list := l.conflist("1.1.0")
			p := l.newPod(fmt.Sprintf("dual-%d", mode))
			res := l.mustAdd(list, p)
			pod4, pod6 := podIPsOf(t, res)
			hostVeth := res.Interfaces[0].Name
			assertWired6(t, l, p, hostVeth, pod6)
			if got := readSysctl(t, l.hostNS, "net/ipv6/conf/"+hostVeth+"/addr_gen_mode"); got != fmt.Sprint(mode) {
				t.Errorf("host veth addr_gen_mode = %s, want the namespace's default %d", got, mode)
			}
			if err := ping(t, p.netns, netip.MustParseAddr(labHost6)); err != nil {
				t.Errorf("pod -> host over IPv6: %v", err)
			}
			if err := ping(t, l.hostNS, pod6); err != nil {
				t.Errorf("host -> pod over IPv6: %v", err)
			}
			if err := ping(t, p.netns, l.hostIP); err != nil {
				t.Errorf("pod -> host over IPv4: %v", err)
			}
			if err := ping(t, l.hostNS, pod4); err != nil {
				t.Errorf("host -> pod over IPv4: %v", err)
			}
			if err := l.check(list, p); err != nil {
				t.Errorf("CHECK after ADD: %v", err)
			}
			if r := l.reservations(); len(r) != 2 {
				t.Errorf("reservations %v, want the pod's two", r)
			}
			if err := l.del(list, p); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			l.assertNothingLeft()
			l.assertNoHostRoute6(pod6)
		})
	}
}

// TestDualStackPodToPod: two dual-stack pods on one host reach each other
// over IPv6 through the host (which forwards IPv6, as the agent's host
// must).
func TestDualStackPodToPod(t *testing.T) {
	l := newDualStackLab(t, -1)
	l.forwardIPv6()
	list := l.conflist("1.1.0")
	a, b := l.newPod("pod-a"), l.newPod("pod-b")
	l.mustAdd(list, a)
	_, b6 := podIPsOf(t, l.mustAdd(list, b))
	if err := ping(t, a.netns, b6); err != nil {
		t.Errorf("pod-a -> pod-b over IPv6: %v", err)
	}
}

// TestDualStackCheckNamesDrift: CHECK names what is missing of the IPv6
// wiring on either side.
func TestDualStackCheckNamesDrift(t *testing.T) {
	l := newDualStackLab(t, -1)
	list := l.conflist("1.1.0")
	p := l.newPod("drift6")
	res := l.mustAdd(list, p)
	_, pod6 := podIPsOf(t, res)
	checkNamesDrift6(t, l, list, p, res.Interfaces[0].Name, pod6)
}

// checkNamesDrift6 deletes the pod's IPv6 default route and the host's
// neighbour entry for pod6, then checks that CHECK names both; it returns
// CHECK's error.
func checkNamesDrift6(t *testing.T, l *lab, list *libcni.NetworkConfigList, p *pod, hostVeth string, pod6 netip.Addr) error {
	t.Helper()
	inNS(t, p.netns, func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.RouteDel(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: defaultRoute6(), Gw: net.ParseIP("fe80::ecee:eeff:feee:eeee")})
	})
	inNS(t, l.hostNS, func() error {
		link, err := netlink.LinkByName(hostVeth)
		if err != nil {
			return err
		}
		return netlink.NeighDel(&netlink.Neigh{LinkIndex: link.Attrs().Index, Family: unix.AF_INET6, IP: pod6.AsSlice()})
	})
	err := l.check(list, p)
	for _, want := range []string{
		"route default via fe80::ecee:eeff:feee:eeee dev eth0 is missing",
		"neighbour " + pod6.String() + " lladdr",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CHECK = %v, want it to say %q", err, want)
		}
	}
	return err
}

// TestDualStackAddUndoesEverythingWhenIPv6WiringFails: an ADD that fails
// at the pod's IPv6 default route, after the IPv4 wiring and both
// addresses are in place, leaves no veth, no route and no reservation of
// either family.
func TestDualStackAddUndoesEverythingWhenIPv6WiringFails(t *testing.T) {
	l := newDualStackLab(t, -1)
	list := l.conflist("1.1.0")
	p := l.newPod("doomed6")
	// The pod namespace has an IPv6 default route through another link
	// already, so ADD's own fails.
	inNS(t, p.netns, func() error {
		link, err := addLoopedLink("gvcniblock")
		if err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: defaultRoute6(), Gw: net.ParseIP("fe80::1")})
	})
	_, err := l.add(list, p)
	if err == nil || !strings.Contains(err.Error(), "default via fe80::ecee:eeff:feee:eeee dev eth0") {
		t.Fatalf("ADD = %v, want a failure adding the IPv6 default route", err)
	}
	l.assertNothingLeft()
	inNS(t, l.hostNS, func() error {
		for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
			routes, err := netlink.RouteList(nil, family)
			if err != nil {
				return err
			}
			for _, r := range routes {
				if r.Dst != nil && (strings.HasPrefix(r.Dst.String(), "10.244.") || strings.HasPrefix(r.Dst.String(), "fd00:10:244:")) {
					t.Errorf("route %v left behind", r)
				}
			}
		}
		return nil
	})
	l.assertNoEth0(p)
}

// TestIPv4OnlyNodeGivesNoIPv6: without an IPv6 block in node.json the pod
// gets exactly what it always got: one IPv4 address, no IPv6 address but
// its link-local, no IPv6 default route.
func TestIPv4OnlyNodeGivesNoIPv6(t *testing.T) {
	l := newLab(t)
	p := l.newPod("v4only")
	res := l.mustAdd(l.conflist("1.1.0"), p)
	podIPOf(t, res)
	inNS(t, p.netns, func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(link, unix.AF_INET6)
		for _, a := range addrs {
			if !a.IP.IsLinkLocalUnicast() {
				t.Errorf("IPv4-only pod has IPv6 address %v", a)
			}
		}
		routes, _ := netlink.RouteList(link, unix.AF_INET6)
		if hasDefaultVia(routes, net.ParseIP("fe80::ecee:eeff:feee:eeee")) {
			t.Errorf("IPv4-only pod has an IPv6 default route: %v", routes)
		}
		return err
	})
}

// TestDualStackGC: GC frees both addresses of an attachment the runtime no
// longer lists, removes its veth (and with it both families' host routes),
// and leaves the listed dual-stack pod wired.
func TestDualStackGC(t *testing.T) {
	l := newDualStackLab(t, -1)
	list := l.conflist("1.1.0")
	keep, leak := l.newPod("keep6"), l.newPod("leak6")
	keepRes := l.mustAdd(list, keep)
	keep4, keep6 := podIPsOf(t, keepRes)
	_, leak6 := podIPsOf(t, l.mustAdd(list, leak))
	if err := os.Remove(filepath.Join(l.cacheDir, "results", l.network+"-"+leak.rt.ContainerID+"-eth0")); err != nil {
		t.Fatal(err)
	}
	l.gcKeeping(list, keep)
	want := []string{keep4.String(), keep6.String()}
	if r := l.reservations(); !slices.Equal(r, want) {
		t.Errorf("reservations after GC %v, want only the kept pod's %v", r, want)
	}
	if v := l.hostVeths(); len(v) != 1 || v[0] != keepRes.Interfaces[0].Name {
		t.Errorf("host veths after GC %v, want only %s", v, keepRes.Interfaces[0].Name)
	}
	l.assertNoHostRoute6(leak6)
	assertWired6(t, l, keep, keepRes.Interfaces[0].Name, keep6)
	if err := l.check(list, keep); err != nil {
		t.Errorf("CHECK of the kept pod after GC: %v", err)
	}
}
