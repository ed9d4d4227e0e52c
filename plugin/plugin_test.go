package plugin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/grapevine-net/grapevine/node/nodestate"
)

// podIPOf returns the pod address in an ADD result.
func podIPOf(t *testing.T, res *current.Result) netip.Addr {
	t.Helper()
	if len(res.IPs) != 1 {
		t.Fatalf("result has %d IPs, want 1: %v", len(res.IPs), res)
	}
	addr, ok := netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
	if !ok {
		t.Fatalf("result IP %v is not IPv4", res.IPs[0].Address)
	}
	return addr
}

// assertWired checks the kernel state the seed shows, on both sides.
func assertWired(t *testing.T, l *lab, p *pod, res *current.Result, wantMTU int) {
	t.Helper()
	podIP := podIPOf(t, res)
	// The name from the pod's identity, or the container's own when
	// another sandbox of the pod holds that one.
	att := attachment{ContainerID: p.rt.ContainerID, IfName: p.rt.IfName, podName: "default/" + p.rt.Args[1][1]}
	names := att.hostVethNames()
	hostVeth := names[0]
	if len(res.Interfaces) > 0 && slices.Contains(names, res.Interfaces[0].Name) {
		hostVeth = res.Interfaces[0].Name
	}

	// The result: both interfaces, the /32 with the gateway, the default route.
	if len(res.Interfaces) != 2 || res.Interfaces[0].Name != hostVeth || res.Interfaces[1].Name != "eth0" ||
		res.Interfaces[1].Sandbox != p.rt.NetNS || res.Interfaces[0].Sandbox != "" {
		t.Errorf("result interfaces = %v, want [%s (host), eth0 (sandbox %s)]", res.Interfaces, hostVeth, p.rt.NetNS)
	}
	ipc := res.IPs[0]
	if ones, _ := ipc.Address.Mask.Size(); ones != 32 || ipc.Gateway.String() != "169.254.1.1" || ipc.Interface == nil || *ipc.Interface != 1 {
		t.Errorf("result IP = %v, want %s/32 gateway 169.254.1.1 on interface 1", ipc, podIP)
	}
	if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" || res.Routes[0].GW.String() != "169.254.1.1" {
		t.Errorf("result routes = %v, want default via 169.254.1.1", res.Routes)
	}

	// Pod side: eth0 with the /32, `169.254.1.1 dev eth0 scope link`,
	// `default via 169.254.1.1 dev eth0` and the gateway's MAC as a
	// PERMANENT neighbour.
	var podMAC net.HardwareAddr
	inNS(t, p.netns, func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		podMAC = link.Attrs().HardwareAddr
		if podMAC.String() != res.Interfaces[1].Mac {
			t.Errorf("pod MAC %s, result says %s", podMAC, res.Interfaces[1].Mac)
		}
		if link.Attrs().MTU != wantMTU {
			t.Errorf("pod MTU %d, want %d", link.Attrs().MTU, wantMTU)
		}
		if link.Attrs().Flags&net.FlagUp == 0 {
			t.Error("pod eth0 is down")
		}
		addrs, err := netlink.AddrList(link, unix.AF_INET)
		if err != nil {
			return err
		}
		if len(addrs) != 1 || addrs[0].IPNet.String() != podIP.String()+"/32" {
			t.Errorf("pod addresses %v, want %s/32", addrs, podIP)
		}
		routes, err := netlink.RouteList(nil, unix.AF_INET)
		if err != nil {
			return err
		}
		var got []string
		for _, r := range routes {
			if r.Table == unix.RT_TABLE_MAIN {
				got = append(got, routeString(r, "eth0"))
			}
		}
		want := []string{"default via 169.254.1.1 dev eth0", "169.254.1.1 dev eth0 scope link"}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("pod routes %q, want %q", got, want)
		}
		neighs, err := netlink.NeighList(link.Attrs().Index, unix.AF_INET)
		if err != nil {
			return err
		}
		if len(neighs) != 1 || !neighs[0].IP.Equal(net.ParseIP("169.254.1.1")) || neighs[0].State != netlink.NUD_PERMANENT ||
			neighs[0].HardwareAddr.String() != "ee:ee:ee:ee:ee:ee" {
			t.Errorf("pod neighbours %v, want only 169.254.1.1 lladdr ee:ee:ee:ee:ee:ee PERMANENT", neighs)
		}
		return nil
	})

	// Host side: the veth with ee:ee:ee:ee:ee:ee and proxy ARP, the /32
	// route and the permanent neighbour.
	inNS(t, l.hostNS, func() error {
		link, err := netlink.LinkByName(hostVeth)
		if err != nil {
			return err
		}
		if mac := link.Attrs().HardwareAddr.String(); mac != "ee:ee:ee:ee:ee:ee" {
			t.Errorf("host veth MAC %s, want ee:ee:ee:ee:ee:ee", mac)
		}
		if alias := link.Attrs().Alias; alias != att.alias(l.network) {
			t.Errorf("host veth alias %q, want %q", alias, att.alias(l.network))
		}
		if link.Attrs().MTU != wantMTU {
			t.Errorf("host veth MTU %d, want %d", link.Attrs().MTU, wantMTU)
		}
		addrs, err := netlink.AddrList(link, unix.AF_INET)
		if err != nil {
			return err
		}
		if len(addrs) != 0 {
			t.Errorf("host veth has IPv4 addresses %v, want none", addrs)
		}
		routes, err := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{LinkIndex: link.Attrs().Index}, netlink.RT_FILTER_OIF)
		if err != nil {
			return err
		}
		if len(routes) != 1 || routeString(routes[0], hostVeth) != podIP.String()+" dev "+hostVeth+" scope link" {
			t.Errorf("host routes on %s: %v, want %s dev %s scope link", hostVeth, routes, podIP, hostVeth)
		}
		neighs, err := netlink.NeighList(link.Attrs().Index, unix.AF_INET)
		if err != nil {
			return err
		}
		found := false
		for _, n := range neighs {
			if n.IP.Equal(podIP.AsSlice()) {
				found = n.State == netlink.NUD_PERMANENT && n.HardwareAddr.String() == podMAC.String()
			}
		}
		if !found {
			t.Errorf("host neighbours on %s: %v, want %s lladdr %s PERMANENT", hostVeth, neighs, podIP, podMAC)
		}
		return nil
	})
	for key, want := range map[string]string{
		"net/ipv4/conf/" + hostVeth + "/proxy_arp":    "1",
		"net/ipv4/neigh/" + hostVeth + "/proxy_delay": "0",
		"net/ipv4/conf/" + hostVeth + "/forwarding":   "1",
		"net/ipv6/conf/" + hostVeth + "/accept_ra":    "0",
	} {
		if got := readSysctl(t, l.hostNS, key); got != want {
			t.Errorf("%s = %s, want %s", key, got, want)
		}
	}
}

// routeString renders r the way `ip route` does for the cases the seed shows.
func routeString(r netlink.Route, dev string) string {
	dst := "default"
	if r.Dst != nil && r.Dst.String() != "0.0.0.0/0" {
		dst = r.Dst.IP.String()
		if ones, _ := r.Dst.Mask.Size(); ones != 32 {
			dst = r.Dst.String()
		}
	}
	s := dst
	if r.Gw != nil {
		s += " via " + r.Gw.String()
	}
	s += " dev " + dev
	if r.Scope == netlink.SCOPE_LINK {
		s += " scope link"
	}
	return s
}

func TestAddCheckDel(t *testing.T) {
	l := newLab(t)
	list := l.conflist("1.1.0")
	p := l.newPod("web-1")

	res := l.mustAdd(list, p)
	assertWired(t, l, p, res, 1450)
	podIP := podIPOf(t, res)
	if !netip.MustParsePrefix("10.244.1.0/24").Contains(podIP) || podIP == netip.MustParseAddr("10.244.1.0") {
		t.Errorf("pod address %s, want a host address of 10.244.1.0/24", podIP)
	}
	if err := ping(t, p.netns, l.hostIP); err != nil {
		t.Errorf("pod -> host through 169.254.1.1: %v", err)
	}
	if err := l.check(list, p); err != nil {
		t.Errorf("CHECK after ADD: %v", err)
	}

	if err := l.del(list, p); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	l.assertNothingLeft()
	inNS(t, p.netns, func() error {
		if _, err := netlink.LinkByName("eth0"); err == nil {
			t.Error("pod eth0 survived DEL")
		}
		return nil
	})
	if err := l.del(list, p); err != nil {
		t.Errorf("second DEL: %v", err)
	}
}

func TestAddTakesMTUFromConfigOverNodeState(t *testing.T) {
	l := newLab(t)
	list := l.conflistMTU("1.1.0", 1400)
	p := l.newPod("mtu")
	res := l.mustAdd(list, p)
	assertWired(t, l, p, res, 1400)
}

func TestAddResultInEverySupportedVersion(t *testing.T) {
	l := newLab(t)
	for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		list := l.conflist(v)
		p := l.newPod("v" + strings.ReplaceAll(v, ".", ""))
		raw, err := l.addRaw(list, p)
		if err != nil {
			t.Fatalf("ADD at %s: %v", v, err)
		}
		if raw.Version() != v {
			t.Errorf("ADD at %s answered with cniVersion %s", v, raw.Version())
		}
		res, err := current.NewResultFromResult(raw)
		if err != nil {
			t.Fatal(err)
		}
		assertWired(t, l, p, res, 1450)
		if v != "0.3.0" && v != "0.3.1" {
			if err := l.check(list, p); err != nil {
				t.Errorf("%s: CHECK: %v", v, err)
			}
		}
		if err := l.del(list, p); err != nil {
			t.Errorf("%s: DEL: %v", v, err)
		}
	}
	l.assertNothingLeft()
}

func TestRetriedAddKeepsAddressAndReplacesVeth(t *testing.T) {
	l := newLab(t)
	list := l.conflist("1.1.0")
	p := l.newPod("retry")
	first := podIPOf(t, l.mustAdd(list, p))
	// The runtime lost the result and asks again for the same attachment.
	res := l.mustAdd(list, p)
	if got := podIPOf(t, res); got != first {
		t.Errorf("retried ADD got %s, first ADD %s", got, first)
	}
	assertWired(t, l, p, res, 1450)
	if v := l.hostVeths(); len(v) != 1 {
		t.Errorf("host veths %v, want exactly one", v)
	}
	if r := l.reservations(); len(r) != 1 {
		t.Errorf("reservations %v, want exactly one", r)
	}
}

func TestDelOfRecreatedPodLeavesNewSandboxAlone(t *testing.T) {
	l := newLab(t)
	list := l.conflist("1.1.0")
	old := l.newPod("same-name")
	oldRes := l.mustAdd(list, old)
	oldIP := podIPOf(t, oldRes)
	// Kubernetes recreates the sandbox of the same pod: same veth name, new
	// container ID. The new sandbox's ADD must not cut the old one, which
	// still runs until its DEL, and the late DEL of the old sandbox must not
	// cut the new one.
	fresh := l.newPod("same-name")
	res := l.mustAdd(list, fresh)
	if res.Interfaces[0].Name == oldRes.Interfaces[0].Name {
		t.Errorf("new sandbox took the old sandbox's host veth %s", res.Interfaces[0].Name)
	}
	assertWired(t, l, old, oldRes, 1450)
	if err := ping(t, old.netns, l.hostIP); err != nil {
		t.Errorf("old sandbox after the new one's ADD: %v", err)
	}
	if err := l.del(list, old); err != nil {
		t.Fatalf("DEL of the old sandbox: %v", err)
	}
	assertWired(t, l, fresh, res, 1450)
	if err := ping(t, fresh.netns, l.hostIP); err != nil {
		t.Errorf("new sandbox after old DEL: %v", err)
	}
	if slices.Contains(l.reservations(), oldIP.String()) {
		t.Errorf("old sandbox's address %s still reserved", oldIP)
	}
}

func TestDelWithoutNamespaceOrAdd(t *testing.T) {
	l := newLab(t)
	list := l.conflist("1.1.0")
	never := l.newPod("never-added")
	if err := l.del(list, never); err != nil {
		t.Errorf("DEL without ADD: %v", err)
	}
	p := l.newPod("gone")
	l.mustAdd(list, p)
	p.rt.NetNS = "/run/netns/gvcni-does-not-exist"
	if err := l.del(list, p); err != nil {
		t.Errorf("DEL with the namespace gone: %v", err)
	}
	l.assertNothingLeft()
}

func TestCheckNamesDrift(t *testing.T) {
	l := newLab(t)
	list := l.conflist("1.1.0")
	p := l.newPod("drift")
	res := l.mustAdd(list, p)
	podIP := podIPOf(t, res)
	hostVeth := res.Interfaces[0].Name

	inNS(t, l.hostNS, func() error {
		link, err := netlink.LinkByName(hostVeth)
		if err != nil {
			return err
		}
		if err := netlink.NeighDel(&netlink.Neigh{LinkIndex: link.Attrs().Index, Family: unix.AF_INET, IP: podIP.AsSlice()}); err != nil {
			return err
		}
		if err := netlink.LinkSetMTU(link, 1400); err != nil {
			return err
		}
		return os.WriteFile("/proc/sys/net/ipv4/conf/"+hostVeth+"/proxy_arp", []byte("0"), 0o644)
	})
	inNS(t, p.netns, func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.NeighDel(&netlink.Neigh{LinkIndex: link.Attrs().Index, Family: unix.AF_INET, IP: net.ParseIP("169.254.1.1")}); err != nil {
			return err
		}
		return netlink.RouteDel(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.ParseIP("169.254.1.1")})
	})

	err := l.check(list, p)
	if err == nil {
		t.Fatal("CHECK passed after the wiring drifted")
	}
	for _, want := range []string{
		"net/ipv4/conf/" + hostVeth + "/proxy_arp is 0, want 1",
		"neighbour " + podIP.String() + " lladdr " + res.Interfaces[1].Mac + " PERMANENT is missing",
		"route default via 169.254.1.1 dev eth0 is missing",
		"pod interface eth0: neighbour 169.254.1.1 lladdr ee:ee:ee:ee:ee:ee PERMANENT is missing",
		"host veth " + hostVeth + ": MTU is 1400, want 1450",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("CHECK error %q does not say %q", err, want)
		}
	}
}

func TestGCRemovesWhatTheRuntimeNoLongerLists(t *testing.T) {
	l := newLab(t)
	list := l.conflist("1.1.0")
	keep, leak := l.newPod("keep"), l.newPod("leak")
	keepRes := l.mustAdd(list, keep)
	leakIP := podIPOf(t, l.mustAdd(list, leak))
	// The runtime lost track of "leak" (no cached result, so libcni cannot
	// DEL it first): only the plugin's GC can clean it up.
	if err := os.Remove(filepath.Join(l.cacheDir, "results", l.network+"-"+leak.rt.ContainerID+"-eth0")); err != nil {
		t.Fatal(err)
	}

	l.gcKeeping(list, keep)
	if v := l.hostVeths(); len(v) != 1 || v[0] != keepRes.Interfaces[0].Name {
		t.Errorf("host veths after GC %v, want only %s", v, keepRes.Interfaces[0].Name)
	}
	if r := l.reservations(); len(r) != 1 || r[0] != podIPOf(t, keepRes).String() {
		t.Errorf("reservations after GC %v, want only %s (leaked %s freed)", r, podIPOf(t, keepRes), leakIP)
	}
	assertWired(t, l, keep, keepRes, 1450)
	if err := l.check(list, keep); err != nil {
		t.Errorf("CHECK of the kept pod after GC: %v", err)
	}
}

func TestStatus(t *testing.T) {
	l := newLab(t)
	list := l.conflist("1.1.0")
	status := func() error {
		return l.inHost(func() error { return l.cni.GetStatusNetworkList(t.Context(), list) })
	}
	if err := status(); err != nil {
		t.Errorf("STATUS with a block: %v", err)
	}
	if err := nodestate.Remove(l.runDir); err != nil {
		t.Fatal(err)
	}
	err := status()
	var cniErr *types.Error
	if !errors.As(err, &cniErr) || cniErr.Code != types.ErrPluginNotAvailable || !strings.Contains(cniErr.Msg, "not ready") {
		t.Errorf("STATUS without node.json = %v, want CNI error 50 saying the agent is not ready", err)
	}
}

func TestAddWhileAgentNotReady(t *testing.T) {
	l := newLab(t)
	list := l.conflist("1.1.0")
	if err := nodestate.Remove(l.runDir); err != nil {
		t.Fatal(err)
	}
	_, err := l.add(list, l.newPod("early"))
	var cniErr *types.Error
	if !errors.As(err, &cniErr) || cniErr.Code != types.ErrTryAgainLater || !strings.Contains(cniErr.Msg, "not ready") {
		t.Errorf("ADD without node.json = %v, want CNI error 11 saying the agent is not ready", err)
	}
	// An agent that has joined but holds no block yet.
	noBlock := `{"node": "node-a", "pool": "10.244.0.0/16", "hostIP": "192.0.2.1", "mtu": 1450}`
	if err := os.WriteFile(nodestate.Path(l.runDir), []byte(noBlock), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = l.add(list, l.newPod("blockless"))
	if !errors.As(err, &cniErr) || cniErr.Code != types.ErrTryAgainLater || !strings.Contains(cniErr.Msg, "no block") {
		t.Errorf("ADD with a blockless node.json = %v, want CNI error 11 saying there is no block", err)
	}
	l.assertNothingLeft()
}

func TestAddUndoesEverythingWhenWiringFails(t *testing.T) {
	l := newLab(t)
	list := l.conflist("1.1.0")
	p := l.newPod("doomed")
	// The pod namespace already routes the gateway through another link, so
	// ADD fails after creating the veth and allocating the address.
	inNS(t, p.netns, func() error {
		link, err := addLoopedLink("gvcniblock")
		if err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: hostPrefix(netip.MustParseAddr("169.254.1.1")), Scope: netlink.SCOPE_LINK})
	})
	_, err := l.add(list, p)
	if err == nil || !strings.Contains(err.Error(), "169.254.1.1 dev eth0 scope link") {
		t.Fatalf("ADD = %v, want a failure adding the gateway route", err)
	}
	l.assertNothingLeft()
	l.assertNoEth0(p)
}

func TestAddWhenBlockIsExhausted(t *testing.T) {
	l := newLab(t)
	l.writeNodeState("10.244.1.0/30", 1450) // .1 and .2 only
	list := l.conflist("1.1.0")
	l.mustAdd(list, l.newPod("one"))
	l.mustAdd(list, l.newPod("two"))
	_, err := l.add(list, l.newPod("three"))
	var cniErr *types.Error
	if !errors.As(err, &cniErr) || cniErr.Code != 100 || !strings.Contains(cniErr.Msg, "10.244.1.0/30 is exhausted") {
		t.Errorf("third ADD in a /30 = %v, want CNI error 100 saying the block is exhausted", err)
	}
	if v := l.hostVeths(); len(v) != 2 {
		t.Errorf("host veths %v, want the two pods' only", v)
	}
}

func TestBlockChangeServesNewPodsFromNewBlock(t *testing.T) {
	l := newLab(t)
	list := l.conflist("1.1.0")
	old := l.newPod("before")
	oldIP := podIPOf(t, l.mustAdd(list, old))
	l.writeNodeState("10.244.7.0/24", 1450)
	newIP := podIPOf(t, l.mustAdd(list, l.newPod("after")))
	if !netip.MustParsePrefix("10.244.7.0/24").Contains(newIP) {
		t.Errorf("pod added after the block change got %s, want one from 10.244.7.0/24", newIP)
	}
	if err := l.del(list, old); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(l.reservations(), oldIP.String()) {
		t.Errorf("DEL did not free %s from the old block", oldIP)
	}
}

// conflistIPAM is a conflist whose grapevine-cni delegates to another IPAM.
func (l *lab) conflistIPAM(ipamJSON string) *libcni.NetworkConfigList {
	l.t.Helper()
	list, err := libcni.ConfListFromBytes([]byte(`{"cniVersion": "1.1.0", "name": "` + l.network + `", "plugins": [
	  {"type": "grapevine-cni", "runDir": "` + l.runDir + `", "ipam": ` + ipamJSON + `}]}`))
	if err != nil {
		l.t.Fatal(err)
	}
	return list
}

func TestDelegatedIPAM(t *testing.T) {
	l := newLab(t)
	hostLocal := func(subnet string) string {
		return `{"type": "host-local", "dataDir": "` + l.dataDir + `", "ranges": [[{"subnet": "` + subnet + `"}]]}`
	}
	list := l.conflistIPAM(hostLocal("10.244.1.0/24"))
	p := l.newPod("delegated")
	res := l.mustAdd(list, p)
	// host-local hands out a /24 with its own gateway; the pod still gets
	// the /32 and the link-local gateway.
	assertWired(t, l, p, res, 1450)
	if err := ping(t, p.netns, l.hostIP); err != nil {
		t.Error(err)
	}
	if err := l.check(list, p); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := l.del(list, p); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	l.assertNothingLeft()

	// An address outside this node's block would be unreachable from other
	// nodes: ADD refuses it and gives it back.
	outside := l.conflistIPAM(hostLocal("10.99.0.0/24"))
	_, err := l.add(outside, l.newPod("outside"))
	if err == nil || !strings.Contains(err.Error(), "outside this node's block 10.244.1.0/24") {
		t.Errorf("ADD with an address outside the block = %v", err)
	}
	l.assertNothingLeft()
}

// TestPodWithoutHostDefaultRoute: on a host with no IPv4 default route,
// proxy ARP does not answer for 169.254.1.1 (the host has no route to it),
// yet the pod reaches the host, because the plugin gave the pod the
// gateway's MAC as a PERMANENT neighbour. Without that entry the pod is cut
// off, which the test shows too.
func TestPodWithoutHostDefaultRoute(t *testing.T) {
	l := newLab(t)
	inNS(t, l.hostNS, func() error {
		routes, err := netlink.RouteList(nil, unix.AF_INET)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
				if err := netlink.RouteDel(&r); err != nil {
					return err
				}
			}
		}
		return nil
	})
	list := l.conflist("1.1.0")
	p := l.newPod("no-default")
	l.mustAdd(list, p)
	if err := ping(t, p.netns, l.hostIP); err != nil {
		t.Fatalf("pod -> host without a default route on the host: %v", err)
	}
	if err := l.check(list, p); err != nil {
		t.Errorf("CHECK: %v", err)
	}

	// The premise: without the neighbour entry, ARP for the gateway goes
	// unanswered.
	inNS(t, p.netns, func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.NeighDel(&netlink.Neigh{LinkIndex: link.Attrs().Index, Family: unix.AF_INET, IP: net.ParseIP("169.254.1.1")})
	})
	if err := ping(t, p.netns, l.hostIP); err == nil {
		t.Error("pod reached the host without the gateway's neighbour entry: the test no longer shows why the entry is needed")
	}
}

func TestPodToPodOnOneHost(t *testing.T) {
	l := newLab(t)
	list := l.conflist("1.1.0")
	a, b := l.newPod("pod-a"), l.newPod("pod-b")
	l.mustAdd(list, a)
	bIP := podIPOf(t, l.mustAdd(list, b))
	// pod-a -> 169.254.1.1 (proxy ARP) -> host: `<bIP> dev gv... scope link`
	// and the permanent neighbour -> pod-b, and back the same way. The
	// per-interface forwarding ADD sets on the host veths is all the
	// forwarding this needs.
	if err := ping(t, a.netns, bIP); err != nil {
		t.Errorf("pod-a -> pod-b on the same host: %v", err)
	}
}

func TestAddFailsCleanlyWhenPodAlreadyHasTheInterface(t *testing.T) {
	l := newLab(t)
	list := l.conflist("1.1.0")
	p := l.newPod("taken")
	// Something else already made eth0 in the pod: creating the pair fails
	// after the address was allocated.
	var before int
	inNS(t, p.netns, func() error {
		if _, err := addLoopedLink("eth0"); err != nil {
			return err
		}
		link, err := netlink.LinkByName("eth0")
		before = link.Attrs().Index
		return err
	})
	_, err := l.add(list, p)
	if err == nil || !strings.Contains(err.Error(), "create veth") {
		t.Fatalf("ADD = %v, want the veth creation to fail", err)
	}
	l.assertNothingLeft()
	inNS(t, p.netns, func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil || link.Attrs().Index != before {
			t.Errorf("the pod's own eth0 was touched: %v", err)
		}
		return nil
	})
}

// Kubelet starts many pods at once: 64 plugin processes race for addresses
// through the store's lock, and every one must get its own and keep it.
func TestConcurrentAddsAndDels(t *testing.T) {
	l := newLab(t)
	list := l.conflist("1.1.0")
	const n = 64
	pods := make([]*pod, n)
	for i := range pods {
		pods[i] = l.newPod(fmt.Sprintf("burst-%d", i))
	}
	ips := make([]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Go(func() {
			res, err := l.add(list, p)
			if err != nil {
				errs[i] = err
				return
			}
			if len(res.IPs) == 1 {
				ips[i], _ = netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	distinct := make(map[netip.Addr]bool)
	for _, ip := range ips {
		distinct[ip] = true
	}
	if len(distinct) != n || len(l.reservations()) != n || len(l.hostVeths()) != n {
		t.Errorf("%d concurrent ADDs: %d distinct addresses, %d reservations, %d host veths",
			n, len(distinct), len(l.reservations()), len(l.hostVeths()))
	}
	for i, p := range pods {
		wg.Go(func() { errs[i] = l.del(list, p) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	l.assertNothingLeft()
}
