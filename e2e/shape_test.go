package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
)

// The seed's fixed values: every host-side veth answers ARP with this MAC,
// and every pod's gateway is this link-local address.
var (
	hostVethMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}
	podGateway  = netip.MustParseAddr("169.254.1.1")
	// podGateway6 is the link-local address hostVethMAC gives the host
	// veth, a dual-stack pod's IPv6 gateway.
	podGateway6 = netip.MustParseAddr("fe80::ecee:eeff:feee:eeee")
)

// TestSeedShape: on 3 hosts with 2 pods each, the kernel holds exactly the
// state the seed article shows for Calico, with proto 74 instead of bird.
func TestSeedShape(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 3})
	ctx := timeout(t, 2*time.Minute)
	statuses, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range l.Hosts() {
		pods := addPods(t, ctx, h, 2)
		own := statuses[h.Name].Block
		if err := expectPeerRoutes(h, own, meshRoutes(statuses, l.Hosts(), h)); err != nil {
			t.Error(err)
		}
		routes, err := readRoutes(h)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pods {
			if !own.Contains(p.IP) {
				t.Errorf("%s/%s: address %s outside the host's block %s", h.Name, p.Name, p.IP, own)
			}
			if err := checkPodShape(p, routes); err != nil {
				t.Error(err)
			}
		}
		out, err := h.Run(ctx, "ip", "route")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("seed shape: %s (block %s) ip route:\n%s", h.Name, own, out)
	}
	out, err := l.Host(1).Run(ctx, "ip", "neigh", "show", "nud", "permanent")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("seed shape: h1 ip neigh show nud permanent:\n%s", out)
}

// checkPodShape compares one pod and its host side with the seed.
func checkPodShape(p *lab.Pod, hostRoutes hostRoutes) error {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	eth0, err := p.LinkByName("eth0")
	if err != nil {
		return err
	}
	addrs, err := p.Addrs(eth0)
	if err != nil {
		return err
	}
	want := netip.PrefixFrom(p.IP, 32).String()
	if len(addrs) != 1 || addrs[0].IPNet.String() != want {
		bad("pod eth0 addresses %v, want exactly %s", addrs, want)
	}

	// The pod's routes: `default via 169.254.1.1 dev eth0` and
	// `169.254.1.1 dev eth0 scope link`, nothing else.
	routes, err := p.Routes()
	if err != nil {
		return err
	}
	var haveDefault, haveGateway bool
	for _, r := range routes {
		switch {
		case r.Dst == nil || r.Dst.String() == "0.0.0.0/0":
			haveDefault = r.Gw.Equal(podGateway.AsSlice()) && r.LinkIndex == eth0.Attrs().Index
		case r.Dst.String() == "169.254.1.1/32":
			haveGateway = r.Scope == netlink.SCOPE_LINK && r.LinkIndex == eth0.Attrs().Index
		default:
			bad("pod has an extra route %s", r)
		}
	}
	if !haveDefault {
		bad("pod lacks `default via 169.254.1.1 dev eth0`: %v", routes)
	}
	if !haveGateway {
		bad("pod lacks `169.254.1.1 dev eth0 scope link`: %v", routes)
	}
	// `169.254.1.1 dev eth0 lladdr ee:ee:ee:ee:ee:ee PERMANENT`: the pod
	// never has to ARP for its gateway (see TestNoDefaultRoute).
	podNeighs, err := p.Neighbours()
	if err != nil {
		return err
	}
	gatewayKnown := false
	for _, n := range podNeighs {
		if n.IP.Equal(podGateway.AsSlice()) {
			gatewayKnown = n.LinkIndex == eth0.Attrs().Index && n.State == netlink.NUD_PERMANENT &&
				n.HardwareAddr.String() == hostVethMAC.String()
		}
	}
	if !gatewayKnown {
		bad("pod lacks `169.254.1.1 dev eth0 lladdr %s PERMANENT`: %v", hostVethMAC, podNeighs)
	}

	// The host side: the veth's peer index names it.
	veth, err := p.Host.LinkByIndex(eth0.Attrs().ParentIndex)
	if err != nil {
		return err
	}
	name := veth.Attrs().Name
	if !strings.HasPrefix(name, "gv") || len(name) != 15 {
		bad("host veth %q is not gv + 13 hex characters", name)
	}
	if veth.Attrs().HardwareAddr.String() != hostVethMAC.String() {
		bad("host veth %s has MAC %s, want %s", name, veth.Attrs().HardwareAddr, hostVethMAC)
	}
	if veth.Attrs().OperState != netlink.OperUp {
		bad("host veth %s is %s, want up", name, veth.Attrs().OperState)
	}
	if v, err := p.Host.Sysctl("conf/" + name + "/proxy_arp"); err != nil || v != "1" {
		bad("host veth %s proxy_arp = %q (%v), want 1", name, v, err)
	}

	// `<podIP> dev <veth> scope link` and a PERMANENT neighbour.
	if idx, ok := hostRoutes.pods[p.IP]; !ok || idx != veth.Attrs().Index {
		bad("host lacks `%s dev %s scope link` (route via ifindex %d)", p.IP, name, idx)
	}
	neighs, err := p.Host.Neighbours()
	if err != nil {
		return err
	}
	var neigh *netlink.Neigh
	for i := range neighs {
		if neighs[i].IP.Equal(p.IP.AsSlice()) {
			neigh = &neighs[i]
		}
	}
	switch {
	case neigh == nil:
		bad("host has no neighbour entry for %s", p.IP)
	case neigh.LinkIndex != veth.Attrs().Index || neigh.State != netlink.NUD_PERMANENT ||
		neigh.HardwareAddr.String() != eth0.Attrs().HardwareAddr.String():
		bad("host neighbour for %s is %s, want dev %s lladdr %s PERMANENT", p.IP, neigh, name, eth0.Attrs().HardwareAddr)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s/%s (%s): %s", p.Host.Name, p.Name, p.IP, strings.Join(problems, "; "))
	}
	return nil
}

// checkPodShape6 compares a dual-stack pod's IPv6 side, and its host's,
// with the twin of the seed's IPv4 wiring: eth0 holds <IP6>/128 and no
// other global address, the pod routes `default via
// fe80::ecee:eeff:feee:eeee dev eth0` and has a PERMANENT neighbour entry
// for that gateway at the host veth's MAC; the host routes `<IP6> dev
// <veth>` and has a PERMANENT neighbour entry for it at the pod's MAC.
func checkPodShape6(ctx context.Context, p *lab.Pod, veth string) error {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	eth0, err := p.LinkByName("eth0")
	if err != nil {
		return err
	}
	for _, c := range []struct {
		ns   lab.Namespace
		args []string
		want string // a line of the output, or part of one
	}{
		{p.Namespace, []string{"addr", "show", "dev", "eth0", "scope", "global"}, "inet6 " + netip.PrefixFrom(p.IP6, 128).String() + " "},
		{p.Namespace, []string{"route", "show", "default"}, "default via " + podGateway6.String() + " dev eth0 "},
		{p.Namespace, []string{"neigh", "show", podGateway6.String(), "dev", "eth0", "nud", "permanent"}, "lladdr " + hostVethMAC.String() + " PERMANENT"},
		{p.Host.Namespace, []string{"route", "show", p.IP6.String()}, p.IP6.String() + " dev " + veth + " "},
		{p.Host.Namespace, []string{"neigh", "show", p.IP6.String(), "dev", veth, "nud", "permanent"}, "lladdr " + eth0.Attrs().HardwareAddr.String() + " PERMANENT"},
	} {
		out, err := c.ns.Run(ctx, "ip", append([]string{"-6"}, c.args...)...)
		if err != nil {
			return fmt.Errorf("%s: ip -6 %s: %w: %s", c.ns.Name, strings.Join(c.args, " "), err, out)
		}
		if !strings.Contains(string(out), c.want) {
			bad("%s: ip -6 %s shows %q, want %q", c.ns.Name, strings.Join(c.args, " "), strings.TrimSpace(string(out)), c.want)
		}
		if c.args[0] == "addr" && strings.Count(string(out), "inet6 ") != 1 {
			bad("pod eth0 has global IPv6 addresses %q, want exactly %s/128", strings.TrimSpace(string(out)), p.IP6)
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s/%s (%s): %s", p.Host.Name, p.Name, p.IP6, strings.Join(problems, "; "))
	}
	return nil
}
