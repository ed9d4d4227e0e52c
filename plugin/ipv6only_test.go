package plugin

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/grapevine-net/grapevine/node/nodestate"
)

// newIPv6OnlyLab is newDualStackLab with the node.json of an IPv6-only
// node: its one block, pool and host address are IPv6, and there is no
// IPv4 block.
func newIPv6OnlyLab(t *testing.T) *lab {
	t.Helper()
	l := newDualStackLab(t, -1)
	lease, err := nodestate.LeaseFromNow(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	st := nodestate.State{
		Node:   "node-a",
		Block:  netip.MustParsePrefix(labBlock6),
		Pool:   netip.MustParsePrefix("fd00:10:244::/48"),
		HostIP: netip.MustParseAddr(labHost6),
		MTU:    1450,
		Lease:  lease,
	}
	if err := nodestate.Write(l.runDir, st); err != nil {
		t.Fatal(err)
	}
	return l
}

// pod6Of returns the pod's one address in an IPv6-only ADD result, failing
// unless the result has exactly an IPv6 /128 from the lab's block with the
// link-local gateway and an IPv6 default route, and nothing IPv4.
func pod6Of(t *testing.T, res *current.Result) netip.Addr {
	t.Helper()
	if len(res.IPs) != 1 {
		t.Fatalf("result has %d IPs, want one IPv6: %v", len(res.IPs), res)
	}
	ipc := res.IPs[0]
	addr, _ := netip.AddrFromSlice(ipc.Address.IP)
	if ones, _ := ipc.Address.Mask.Size(); !netip.MustParsePrefix(labBlock6).Contains(addr) || ones != 128 ||
		ipc.Gateway.String() != "fe80::ecee:eeff:feee:eeee" || ipc.Interface == nil || *ipc.Interface != 1 {
		t.Fatalf("result IP %v, want a /128 of %s via fe80::ecee:eeff:feee:eeee on interface 1", ipc, labBlock6)
	}
	var routes []string
	for _, r := range res.Routes {
		routes = append(routes, r.Dst.String()+" via "+r.GW.String())
	}
	if want := []string{"::/0 via fe80::ecee:eeff:feee:eeee"}; !slices.Equal(routes, want) {
		t.Errorf("result routes %q, want %q", routes, want)
	}
	return addr
}

// assertNoIPv4 checks that the pod has no IPv4 address and no IPv4 route.
func assertNoIPv4(t *testing.T, p *pod) {
	t.Helper()
	inNS(t, p.netns, func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(link, unix.AF_INET)
		if err != nil {
			return err
		}
		routes, err := netlink.RouteList(link, unix.AF_INET)
		if len(addrs) != 0 || len(routes) != 0 {
			t.Errorf("IPv6-only pod has IPv4 addresses %v and routes %v", addrs, routes)
		}
		return err
	})
}

// TestIPv6OnlyAddCheckDel wires a pod on an IPv6-only node: it gets only
// its /128 with the seed's IPv6 wiring, reaches the host and is reached
// from it over IPv6 with the first packet, CHECK passes, and DEL leaves
// nothing behind.
func TestIPv6OnlyAddCheckDel(t *testing.T) {
	l := newIPv6OnlyLab(t)
	list := l.conflist("1.1.0")
	p := l.newPod("v6only")
	res := l.mustAdd(list, p)
	pod6 := pod6Of(t, res)
	hostVeth := res.Interfaces[0].Name
	assertWired6(t, l, p, hostVeth, pod6)
	assertNoIPv4(t, p)
	if err := ping(t, p.netns, netip.MustParseAddr(labHost6)); err != nil {
		t.Errorf("pod -> host: %v", err)
	}
	if err := ping(t, l.hostNS, pod6); err != nil {
		t.Errorf("host -> pod: %v", err)
	}
	if err := l.check(list, p); err != nil {
		t.Errorf("CHECK after ADD: %v", err)
	}
	if r := l.reservations(); !slices.Equal(r, []string{pod6.String()}) {
		t.Errorf("reservations %v, want the pod's %s alone", r, pod6)
	}
	if err := l.del(list, p); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	l.assertNothingLeft()
	l.assertNoHostRoute6(pod6)
}

// TestIPv6OnlyPodToPod: two pods of an IPv6-only node reach each other
// through the host, which forwards IPv6 as the agent's host does.
func TestIPv6OnlyPodToPod(t *testing.T) {
	l := newIPv6OnlyLab(t)
	l.forwardIPv6()
	list := l.conflist("1.1.0")
	a, b := l.newPod("v6-a"), l.newPod("v6-b")
	l.mustAdd(list, a)
	b6 := pod6Of(t, l.mustAdd(list, b))
	if err := ping(t, a.netns, b6); err != nil {
		t.Errorf("pod-a -> pod-b: %v", err)
	}
}

// TestIPv6OnlyCheckNamesDrift: CHECK of an IPv6-only pod names what is
// missing of its wiring, and does not ask for an IPv4 address it never had.
func TestIPv6OnlyCheckNamesDrift(t *testing.T) {
	l := newIPv6OnlyLab(t)
	list := l.conflist("1.1.0")
	p := l.newPod("drift-v6only")
	res := l.mustAdd(list, p)
	err := checkNamesDrift6(t, l, list, p, res.Interfaces[0].Name, pod6Of(t, res))
	if err != nil && (strings.Contains(err.Error(), "169.254.1.1") || strings.Contains(err.Error(), "/32")) {
		t.Errorf("CHECK of an IPv6-only pod asks for IPv4 wiring: %v", err)
	}
}

// TestIPv6OnlyGC: GC frees the address of an attachment the runtime no
// longer lists and removes its veth, and leaves the listed pod wired.
func TestIPv6OnlyGC(t *testing.T) {
	l := newIPv6OnlyLab(t)
	list := l.conflist("1.1.0")
	keep, leak := l.newPod("keep-v6only"), l.newPod("leak-v6only")
	keepRes := l.mustAdd(list, keep)
	keep6 := pod6Of(t, keepRes)
	leak6 := pod6Of(t, l.mustAdd(list, leak))
	if err := os.Remove(filepath.Join(l.cacheDir, "results", l.network+"-"+leak.rt.ContainerID+"-eth0")); err != nil {
		t.Fatal(err)
	}
	l.gcKeeping(list, keep)
	if r := l.reservations(); !slices.Equal(r, []string{keep6.String()}) {
		t.Errorf("reservations after GC %v, want only the kept pod's %s", r, keep6)
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

// TestAddrsFromDelegatedResult: a delegated IPAM's result gives the pod the
// first address of each family the node has a block of, inside that
// block: on an IPv6-only node its IPv6 address alone.
func TestAddrsFromDelegatedResult(t *testing.T) {
	pfx, addr := netip.MustParsePrefix, netip.MustParseAddr
	v4only := nodestate.State{Block: pfx("10.244.1.0/24"), Pool: pfx("10.244.0.0/16")}
	dual := v4only
	dual.Block6, dual.Pool6 = pfx(labBlock6), pfx("fd00:10:244::/48")
	v6only := nodestate.State{Block: pfx(labBlock6), Pool: pfx("fd00:10:244::/48")}
	result := func(addrs ...string) *current.Result {
		res := &current.Result{CNIVersion: current.ImplementedSpecVersion}
		for _, a := range addrs {
			p := netip.PrefixFrom(addr(a), addr(a).BitLen())
			res.IPs = append(res.IPs, &current.IPConfig{Address: net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Bits())}})
		}
		return res
	}
	for _, tc := range []struct {
		name    string
		node    nodestate.State
		res     *current.Result
		want    podAddrs
		wantErr string
	}{
		{"IPv4-only node ignores IPv6", v4only, result("10.244.1.5", "fd00:10:244:1::5"), podAddrs{v4: addr("10.244.1.5")}, ""},
		{"dual-stack node takes both", dual, result("fd00:10:244:1::5", "10.244.1.5"), podAddrs{v4: addr("10.244.1.5"), v6: addr("fd00:10:244:1::5")}, ""},
		{"IPv6-only node takes its IPv6 address", v6only, result("10.244.1.5", "fd00:10:244:1::5"), podAddrs{v6: addr("fd00:10:244:1::5")}, ""},
		{"IPv6-only node without an IPv6 address", v6only, result("10.244.1.5"), podAddrs{}, "no address in this node's block " + labBlock6},
		{"IPv6-only node, address outside its block", v6only, result("fd00:10:244:2::5"), podAddrs{}, "outside this node's block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &delegatedIPAM{typ: "host-local"}
			got, err := d.addrsFromResult(tc.res, tc.node)
			switch {
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("got %+v, %v; want error %q", got, err, tc.wantErr)
			case tc.wantErr == "" && (err != nil || got != tc.want):
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}
