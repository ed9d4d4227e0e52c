package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/grapevine-net/grapevine/internal/hostveth"
	"github.com/grapevine-net/grapevine/internal/netlinkdump"
	"github.com/grapevine-net/grapevine/ipam"
)

// cmdCheck compares the kernel with what ADD built and the previous result
// reported, and names every difference it finds.
func cmdCheck(args *skel.CmdArgs) error {
	ctx := context.Background()
	conf, att, err := parseArgs(args)
	if err != nil {
		return err
	}
	alias := att.alias(conf.Name)
	hostVeth := att.HostVethName()
	if link, err := findHostVeth(att, alias); err != nil {
		return err
	} else if link != nil {
		hostVeth = link.Attrs().Name
	}
	want, err := expectedFromPrevResult(conf, args, hostVeth)
	if err != nil {
		return err
	}
	podNS, err := getPodNS(args.Netns)
	if err != nil {
		return err
	}
	defer podNS.Close()

	hostIndex, drift := checkHost(hostVeth, alias, want)
	drift = append(drift, checkPod(podNS, args.IfName, want, hostIndex)...)
	if err := newAddressSource(conf, args).check(ctx, want.prev); err != nil {
		drift = append(drift, err)
	}
	if len(drift) > 0 {
		return fmt.Errorf("attachment %s/%s drifted: %w", args.ContainerID, args.IfName, errors.Join(drift...))
	}
	return nil
}

// expected is what CHECK looks for, taken from the previous result.
type expected struct {
	prev *current.Result
	// podIP is the pod's IPv4 address when prevResult lists one (not on
	// an IPv6-only node), podIP6 its IPv6 address when it lists one; it
	// lists at least one of them.
	podIP   netip.Addr
	podIP6  netip.Addr
	podMAC  string
	podMTU  int
	hostMTU int
}

func expectedFromPrevResult(conf *Config, args *skel.CmdArgs, hostVeth string) (expected, error) {
	if conf.RawPrevResult == nil {
		return expected{}, types.NewError(types.ErrInvalidNetworkConfig, "CHECK needs prevResult in the network config", "")
	}
	prev, err := ipam.PrevResult(&conf.PluginConf)
	if err != nil {
		return expected{}, err
	}
	want := expected{prev: prev}
	podIdx := -1
	for i, intf := range prev.Interfaces {
		switch {
		case intf.Name == args.IfName && intf.Sandbox == args.Netns:
			podIdx, want.podMAC, want.podMTU = i, intf.Mac, intf.Mtu
		case intf.Name == hostVeth && intf.Sandbox == "":
			want.hostMTU = intf.Mtu
		}
	}
	if podIdx < 0 {
		return expected{}, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("prevResult has no interface %s in sandbox %s", args.IfName, args.Netns), "")
	}
	for _, ipc := range prev.IPs {
		addr, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok || (ipc.Interface != nil && *ipc.Interface != podIdx) {
			continue
		}
		switch addr = addr.Unmap(); {
		case addr.Is4() && !want.podIP.IsValid():
			want.podIP = addr
		case addr.Is6() && !want.podIP6.IsValid():
			want.podIP6 = addr
		}
	}
	if !want.podIP.IsValid() && !want.podIP6.IsValid() {
		return expected{}, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("prevResult has no address on %s", args.IfName), "")
	}
	return want, nil
}

// checkHost checks the host side of the pair in the current namespace and
// returns its index for the pairing check.
func checkHost(name, alias string, want expected) (int, []error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return 0, []error{fmt.Errorf("host veth %s: %w", name, err)}
	}
	var drift []error
	driftf := func(format string, a ...any) { drift = append(drift, fmt.Errorf("host veth "+name+": "+format, a...)) }
	attrs := link.Attrs()
	if _, ok := link.(*netlink.Veth); !ok {
		driftf("is a %s, not a veth", link.Type())
	}
	if attrs.Alias != alias {
		driftf("belongs to %q, not %q", attrs.Alias, alias)
	}
	if attrs.HardwareAddr.String() != hostVethMAC().String() {
		driftf("MAC is %s, want %s", attrs.HardwareAddr, hostVethMAC())
	}
	if want.hostMTU != 0 && attrs.MTU != want.hostMTU {
		driftf("MTU is %d, want %d", attrs.MTU, want.hostMTU)
	}
	if attrs.Flags&net.FlagUp == 0 {
		driftf("is down")
	}
	for _, s := range hostveth.Sysctls(name) {
		got, err := sysctl.Sysctl(s.Key)
		switch {
		case err != nil && s.Optional:
		case err != nil:
			driftf("read %s: %v", s.Key, err)
		case strings.TrimSpace(got) != s.Value:
			driftf("%s is %s, want %s", s.Key, strings.TrimSpace(got), s.Value)
		}
	}
	if want.podIP.IsValid() {
		drift = append(drift, checkRouteToPod(name, attrs.Index, want.podIP, want.podMAC)...)
	}
	if want.podIP6.IsValid() {
		drift = append(drift, checkRouteToPod(name, attrs.Index, want.podIP6, want.podMAC)...)
		addrs, err := netlinkdump.Retry(func() ([]netlink.Addr, error) { return netlink.AddrList(link, unix.AF_INET6) })
		if err != nil {
			driftf("list addresses: %v", err)
		} else if !hasAddrBits(addrs, ipam.Gateway6(), 64) {
			driftf("address %s/64 is missing", ipam.Gateway6())
		}
	}
	return attrs.Index, drift
}

// checkRouteToPod checks the host's route to podIP through the veth name
// (index idx) and the pod's PERMANENT neighbour entry there.
func checkRouteToPod(name string, idx int, podIP netip.Addr, podMAC string) []error {
	var drift []error
	family, scope, route := unix.AF_INET, netlink.SCOPE_LINK, podIP.String()+" dev "+name+" scope link"
	if !podIP.Is4() {
		family, scope, route = unix.AF_INET6, netlink.SCOPE_UNIVERSE, podIP.String()+" dev "+name
	}
	routes, err := netlinkdump.Retry(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(family, &netlink.Route{Dst: hostPrefix(podIP)}, netlink.RT_FILTER_DST)
	})
	if err != nil {
		drift = append(drift, fmt.Errorf("host veth %s: list routes: %w", name, err))
	} else if !hasRoute(routes, idx, scope, nil) {
		drift = append(drift, fmt.Errorf("host veth %s: route %s is missing", name, route))
	}
	neighs, err := netlinkdump.Retry(func() ([]netlink.Neigh, error) { return netlink.NeighList(idx, family) })
	if err != nil {
		return append(drift, fmt.Errorf("host veth %s: list neighbours: %w", name, err))
	}
	return append(drift, checkNeighbour(name, neighs, podIP, podMAC)...)
}

func checkNeighbour(name string, neighs []netlink.Neigh, podIP netip.Addr, podMAC string) []error {
	for _, n := range neighs {
		if !n.IP.Equal(net.IP(podIP.AsSlice())) {
			continue
		}
		var drift []error
		if n.State&netlink.NUD_PERMANENT == 0 {
			drift = append(drift, fmt.Errorf("host veth %s: neighbour %s is not PERMANENT (state %#x)", name, podIP, n.State))
		}
		if podMAC != "" && n.HardwareAddr.String() != podMAC {
			drift = append(drift, fmt.Errorf("host veth %s: neighbour %s has lladdr %s, want %s", name, podIP, n.HardwareAddr, podMAC))
		}
		return drift
	}
	return []error{fmt.Errorf("host veth %s: neighbour %s lladdr %s PERMANENT is missing", name, podIP, podMAC)}
}

// checkPod checks the pod side inside podNS: the veth paired with the host
// side, its MAC, MTU, and the wiring of each of its addresses (checkPod4,
// checkPod6).
func checkPod(podNS ns.NetNS, ifName string, want expected, hostIndex int) []error {
	var drift []error
	err := podNS.Do(func(ns.NetNS) error {
		link, err := netlink.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("pod interface %s: %w", ifName, err)
		}
		driftf := func(format string, a ...any) {
			drift = append(drift, fmt.Errorf("pod interface "+ifName+": "+format, a...))
		}
		attrs := link.Attrs()
		if _, ok := link.(*netlink.Veth); !ok {
			driftf("is a %s, not a veth", link.Type())
		}
		if hostIndex != 0 && attrs.ParentIndex != hostIndex {
			driftf("is paired with ifindex %d, not the host veth (ifindex %d)", attrs.ParentIndex, hostIndex)
		}
		if want.podMAC != "" && attrs.HardwareAddr.String() != want.podMAC {
			driftf("MAC is %s, want %s", attrs.HardwareAddr, want.podMAC)
		}
		if want.podMTU != 0 && attrs.MTU != want.podMTU {
			driftf("MTU is %d, want %d", attrs.MTU, want.podMTU)
		}
		if attrs.Flags&net.FlagUp == 0 {
			driftf("is down")
		}
		if want.podIP.IsValid() {
			drift = append(drift, checkPod4(link, want.podIP)...)
		}
		if want.podIP6.IsValid() {
			drift = append(drift, checkPod6(link, want.podIP6)...)
		}
		return nil
	})
	if err != nil {
		drift = append(drift, err)
	}
	return drift
}

// checkPod4 checks the pod side's IPv4 wiring in the pod's namespace: the
// /32, the routes to and via 169.254.1.1 and the gateway's PERMANENT
// neighbour entry.
func checkPod4(link netlink.Link, podIP netip.Addr) []error {
	var drift []error
	attrs, ifName := link.Attrs(), link.Attrs().Name
	driftf := func(format string, a ...any) {
		drift = append(drift, fmt.Errorf("pod interface "+ifName+": "+format, a...))
	}
	addrs, err := netlinkdump.Retry(func() ([]netlink.Addr, error) { return netlink.AddrList(link, unix.AF_INET) })
	if err != nil {
		driftf("list addresses: %v", err)
	} else if !hasAddr(addrs, podIP) {
		driftf("address %s/32 is missing (has %v)", podIP, addrs)
	}
	routes, err := netlinkdump.Retry(func() ([]netlink.Route, error) { return netlink.RouteList(link, unix.AF_INET) })
	if err != nil {
		driftf("list routes: %v", err)
		return drift
	}
	gw := net.IP(ipam.Gateway().AsSlice())
	if !hasRoute(routes, attrs.Index, netlink.SCOPE_LINK, hostPrefix(ipam.Gateway())) {
		driftf("route %s dev %s scope link is missing", gw, ifName)
	}
	if !hasDefaultVia(routes, gw) {
		driftf("route default via %s dev %s is missing", gw, ifName)
	}
	neighs, err := netlink.NeighList(attrs.Index, unix.AF_INET)
	if err != nil {
		driftf("list neighbours: %v", err)
		return drift
	}
	if !hasGatewayNeighbour(neighs, ipam.Gateway()) {
		driftf("neighbour %s lladdr %s PERMANENT is missing or different", gw, hostVethMAC())
	}
	return drift
}

// checkPod6 checks the pod side's IPv6 wiring in the pod's namespace: the
// /128, the default route via the gateway's link-local address and its
// PERMANENT neighbour entry.
func checkPod6(link netlink.Link, podIP netip.Addr) []error {
	var drift []error
	ifName := link.Attrs().Name
	driftf := func(format string, a ...any) {
		drift = append(drift, fmt.Errorf("pod interface "+ifName+": "+format, a...))
	}
	addrs, err := netlinkdump.Retry(func() ([]netlink.Addr, error) { return netlink.AddrList(link, unix.AF_INET6) })
	if err != nil {
		driftf("list addresses: %v", err)
	} else if !hasAddr(addrs, podIP) {
		driftf("address %s/128 is missing (has %v)", podIP, addrs)
	}
	gw := net.IP(ipam.Gateway6().AsSlice())
	routes, err := netlinkdump.Retry(func() ([]netlink.Route, error) { return netlink.RouteList(link, unix.AF_INET6) })
	if err != nil {
		driftf("list routes: %v", err)
	} else if !hasDefaultVia(routes, gw) {
		driftf("route default via %s dev %s is missing", gw, ifName)
	}
	neighs, err := netlink.NeighList(link.Attrs().Index, unix.AF_INET6)
	if err != nil {
		driftf("list neighbours: %v", err)
	} else if !hasGatewayNeighbour(neighs, ipam.Gateway6()) {
		driftf("neighbour %s lladdr %s PERMANENT is missing or different", gw, hostVethMAC())
	}
	return drift
}

// hasGatewayNeighbour reports whether neighs hold gw with the host veth's
// MAC, PERMANENT.
func hasGatewayNeighbour(neighs []netlink.Neigh, gw netip.Addr) bool {
	for _, n := range neighs {
		if n.IP.Equal(net.IP(gw.AsSlice())) {
			return n.State&netlink.NUD_PERMANENT != 0 && n.HardwareAddr.String() == hostVethMAC().String()
		}
	}
	return false
}

// hasAddr reports whether addrs hold want as a host address (/32, /128).
func hasAddr(addrs []netlink.Addr, want netip.Addr) bool {
	return hasAddrBits(addrs, want, want.BitLen())
}

func hasAddrBits(addrs []netlink.Addr, want netip.Addr, bits int) bool {
	for _, a := range addrs {
		ones, _ := a.Mask.Size()
		if a.IP.Equal(net.IP(want.AsSlice())) && ones == bits {
			return true
		}
	}
	return false
}

// hasRoute reports whether routes has one on linkIndex with scope; dst nil
// accepts any destination (the caller filtered already).
func hasRoute(routes []netlink.Route, linkIndex int, scope netlink.Scope, dst *net.IPNet) bool {
	for _, r := range routes {
		if r.LinkIndex != linkIndex || r.Scope != scope || r.Gw != nil {
			continue
		}
		if dst == nil || (r.Dst != nil && r.Dst.String() == dst.String()) {
			return true
		}
	}
	return false
}

func hasDefaultVia(routes []netlink.Route, gw net.IP) bool {
	for _, r := range routes {
		isDefault := r.Dst == nil || r.Dst.String() == "0.0.0.0/0" || r.Dst.String() == "::/0"
		if isDefault && r.Gw.Equal(gw) {
			return true
		}
	}
	return false
}
