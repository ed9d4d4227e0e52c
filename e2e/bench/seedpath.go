package bench

import (
	"context"
	"fmt"
	"net/netip"
	"os"

	"github.com/grapevine-net/grapevine/e2e/lab"
)

// seedPod is a pod namespace wired by hand with iproute2, the way the seed
// article does it: a veth pair, a /32 on the pod with a default route via
// 169.254.1.1, proxy ARP on the host end, a scope link route to the pod on
// the host. It tells the cost of the routed design in this lab apart from
// anything the plugin adds.
type seedPod struct {
	ns   lab.Namespace
	addr netip.Addr
}

// wireSeedPods wires one hand-made pod on each host, with addresses outside
// the agents' pool so the agents leave their routes alone, and routes each
// host to the other's pod through em1.
func wireSeedPods(ctx context.Context, s *scope, a, b *lab.Host) (pa, pb seedPod, err error) {
	return wireHandPods(ctx, s, a, b, 0, func(self, peer *lab.Host, other netip.Addr) [][]string {
		return [][]string{{"ip", "-n", self.Namespace.Name, "route", "add", other.String() + "/32", "via", peer.IP.String(), "dev", "em1"}}
	})
}

// wireHandPods wires one hand-made pod on each host as wireSeedPods does,
// with the given MTU on both veth ends (0: the default), and lets route say
// the commands (ip, bridge) that take host self to the pod at other on peer.
func wireHandPods(ctx context.Context, s *scope, a, b *lab.Host, mtu int, route func(self, peer *lab.Host, other netip.Addr) [][]string) (pa, pb seedPod, err error) {
	pa = seedPod{addr: netip.MustParseAddr("10.250.1.10")}
	pb = seedPod{addr: netip.MustParseAddr("10.250.2.10")}
	for _, w := range []struct {
		host  *lab.Host
		pod   *seedPod
		peer  *lab.Host
		other netip.Addr
		role  string
	}{{a, &pa, b, pb.addr, "seed1"}, {b, &pb, a, pa.addr, "seed2"}} {
		name, err := s.addNamespace(ctx, w.role)
		if err != nil {
			return pa, pb, err
		}
		w.pod.ns = lab.Namespace{Name: name}
		hostNS, veth := w.host.Namespace.Name, NamePrefix+s.id+w.role[len(w.role)-1:]
		mtuArgs := []string{}
		if mtu != 0 {
			mtuArgs = []string{"mtu", fmt.Sprint(mtu)}
		}
		steps := [][]string{
			append(append(append([]string{"-n", hostNS, "link", "add", veth}, mtuArgs...), "type", "veth", "peer", "name", "eth0"), append(mtuArgs, "netns", name)...),
			{"-n", hostNS, "link", "set", veth, "address", "ee:ee:ee:ee:ee:ee", "up"},
			{"-n", name, "addr", "add", w.pod.addr.String() + "/32", "dev", "eth0"},
			{"-n", name, "link", "set", "eth0", "up"},
			{"-n", name, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"},
			{"-n", name, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"},
			{"-n", hostNS, "route", "add", w.pod.addr.String() + "/32", "dev", veth, "scope", "link"},
		}
		for _, args := range steps {
			if _, err := lab.Run(ctx, "ip", args...); err != nil {
				return pa, pb, err
			}
		}
		for _, c := range route(w.host, w.peer, w.other) {
			if _, err := lab.Run(ctx, c[0], c[1:]...); err != nil {
				return pa, pb, err
			}
		}
		err = lab.Namespace{Name: hostNS}.Do(func() error {
			return os.WriteFile(fmt.Sprintf("/proc/sys/net/ipv4/conf/%s/proxy_arp", veth), []byte("1"), 0o644)
		})
		if err != nil {
			return pa, pb, fmt.Errorf("proxy ARP on %s in %s: %w", veth, hostNS, err)
		}
	}
	return pa, pb, nil
}
