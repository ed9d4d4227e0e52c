package plugin

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/grapevine-net/grapevine/internal/hostveth"
	"github.com/grapevine-net/grapevine/internal/netlinkdump"
	"github.com/grapevine-net/grapevine/ipam"
)

// hostVethMAC is the MAC of every host-side veth. Pods only ever see it as
// the gateway's MAC; a fixed value keeps their ARP cache valid across veth
// re-creation and makes the host side recognisable.
func hostVethMAC() net.HardwareAddr { return net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee} }

func hostPrefix(addr netip.Addr) *net.IPNet {
	return &net.IPNet{IP: net.IP(addr.AsSlice()), Mask: net.CIDRMask(addr.BitLen(), addr.BitLen())}
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// createVeth creates the pair with the host side in the current namespace
// and the pod side directly in podNS, first removing leftover, a link named
// hostName that pickHostVeth found to be this attachment's or nobody's (an
// earlier ADD of it, or one that died before labelling its link). It
// labels the host side with alias, which the kernel ignores in a create
// request, and reports whether it created the link, so that a failed ADD
// removes only what it made.
func createVeth(hostName, podIfName, alias string, mtu int, podNS ns.NetNS, leftover netlink.Link) (created bool, err error) {
	if leftover != nil {
		if err := netlink.LinkDel(leftover); err != nil && !isNotFound(err) {
			return false, fmt.Errorf("remove leftover link %s: %w", hostName, err)
		}
	}
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{
			Name:         hostName,
			MTU:          mtu,
			HardwareAddr: hostVethMAC(),
			Flags:        net.FlagUp,
		},
		PeerName:      podIfName,
		PeerNamespace: netlink.NsFd(int(podNS.Fd())),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return false, fmt.Errorf("create veth %s (pod side %s in %s): %w", hostName, podIfName, podNS.Path(), err)
	}
	if err := netlink.LinkSetAlias(veth, alias); err != nil {
		return true, fmt.Errorf("label %s with %q: %w", hostName, alias, err)
	}
	return true, nil
}

// podInterface is what configurePod reports back about the pod's side.
type podInterface struct {
	mac net.HardwareAddr
	mtu int
}

// configurePod gives the pod side its /32, brings it up, routes everything
// through the link-local gateway and tells the pod the gateway's MAC:
//
//	inet 10.244.1.3/32 scope global eth0
//	169.254.1.1 dev eth0 scope link
//	default via 169.254.1.1 dev eth0
//	169.254.1.1 dev eth0 lladdr ee:ee:ee:ee:ee:ee PERMANENT
//
// The neighbour entry is why the pod works on a host without an IPv4 default
// route: proxy ARP answers for 169.254.1.1 only if the host has a route to
// it, and the gateway address is routed nowhere. It also saves the ARP round
// trip on the pod's first packet. proxy_arp stays on for anything that flushes
// the pod's neighbours.
//
// On a dual-stack node the pod gets the IPv6 twin (configurePod6), on an
// IPv6-only node that alone.
func configurePod(podNS ns.NetNS, ifName string, podIPs podAddrs) (podInterface, error) {
	var pod podInterface
	err := podNS.Do(func(ns.NetNS) error {
		link, err := netlink.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("look up %s: %w", ifName, err)
		}
		if podIPs.v6.IsValid() {
			// Before the link comes up, so that a namespace created with
			// IPv6 off gets it for this link from the start.
			if err := enableIPv6(ifName); err != nil {
				return err
			}
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up: %w", ifName, err)
		}
		if podIPs.v4.IsValid() {
			if err := configurePod4(link, podIPs.v4); err != nil {
				return err
			}
		}
		if podIPs.v6.IsValid() {
			if err := configurePod6(link, podIPs.v6); err != nil {
				return err
			}
		}
		pod = podInterface{mac: link.Attrs().HardwareAddr, mtu: link.Attrs().MTU}
		return nil
	})
	return pod, err
}

// configurePod4 gives the pod side, in the pod's namespace, its IPv4 /32,
// the route to 169.254.1.1 and the default route through it, and the
// gateway's PERMANENT neighbour entry.
func configurePod4(link netlink.Link, podIP netip.Addr) error {
	ifName := link.Attrs().Name
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: hostPrefix(podIP)}); err != nil {
		return fmt.Errorf("add %s/32 to %s: %w", podIP, ifName, err)
	}
	idx := link.Attrs().Index
	gw := net.IP(ipam.Gateway().AsSlice())
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: hostPrefix(ipam.Gateway()), Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("add route %s dev %s scope link: %w", gw, ifName, err)
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: idx, Gw: gw}); err != nil {
		return fmt.Errorf("add route default via %s dev %s: %w", gw, ifName, err)
	}
	if err := netlink.NeighSet(gatewayNeighbour(idx, ipam.Gateway())); err != nil {
		return fmt.Errorf("add neighbour %s lladdr %s dev %s: %w", gw, hostVethMAC(), ifName, err)
	}
	return nil
}

// configurePod6 gives the pod side, in the pod's namespace, its IPv6 /128
// and the twin of the IPv4 wiring:
//
//	inet6 fd00:10:244:1::3/128 scope global nodad
//	default via fe80::ecee:eeff:feee:eeee dev eth0
//	fe80::ecee:eeff:feee:eeee dev eth0 lladdr ee:ee:ee:ee:ee:ee PERMANENT
//
// No duplicate address detection: the address is the pod's alone (IPAM
// says so), and DAD would hold it tentative for a second or more, losing
// the pod's first packets. The PERMANENT entry means the pod never has to
// solicit the gateway, so nothing depends on NDP (proxy or not) or on
// routes on the host. A link-local gateway needs no on-link route.
//
// Even without DAD the kernel makes an IPv6 address local (puts it in the
// local table) only when its address work runs on a workqueue, after the
// add has returned; until then the pod can send from the address but drops
// what comes back to it (Ip6InAddrErrors). On a loaded host that lasted
// long enough to lose a new pod's first answer, so ADD waits for it.
func configurePod6(link netlink.Link, podIP netip.Addr) error {
	name, idx := link.Attrs().Name, link.Attrs().Index
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: hostPrefix(podIP), Flags: unix.IFA_F_NODAD}); err != nil {
		return fmt.Errorf("add %s/128 nodad to %s: %w", podIP, name, err)
	}
	gw := net.IP(ipam.Gateway6().AsSlice())
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: idx, Gw: gw, Dst: defaultRoute6()}); err != nil {
		return fmt.Errorf("add route default via %s dev %s: %w", gw, name, err)
	}
	if err := netlink.NeighSet(gatewayNeighbour(idx, ipam.Gateway6())); err != nil {
		return fmt.Errorf("add neighbour %s lladdr %s dev %s: %w", gw, hostVethMAC(), name, err)
	}
	if err := waitLocal(podIP, localAddressWait); err != nil {
		return fmt.Errorf("%s on %s: %w", podIP, name, err)
	}
	return nil
}

// localAddressWait bounds how long ADD waits for the kernel to make the
// pod's IPv6 address local; it takes well under a millisecond on an idle
// host.
const localAddressWait = 10 * time.Second

// waitLocal waits until addr is local in the current namespace: a route
// lookup for it finds the local table's entry.
func waitLocal(addr netip.Addr, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for pause := 100 * time.Microsecond; ; pause = min(2*pause, 20*time.Millisecond) {
		// Until the address is local, a lookup finds the default route,
		// or none (ENETUNREACH).
		routes, err := netlink.RouteGet(net.IP(addr.AsSlice()))
		if err != nil && !errors.Is(err, unix.ENETUNREACH) {
			return fmt.Errorf("look up the route to it: %w", err)
		}
		if len(routes) > 0 && routes[0].Type == unix.RTN_LOCAL {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the kernel has not made it a local address after %v", limit)
		}
		time.Sleep(pause)
	}
}

func defaultRoute6() *net.IPNet { return &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)} }

// enableIPv6 turns IPv6 on for the link name in the current namespace
// (net.ipv6.conf.<name>.disable_ipv6=0): a host or pod namespace whose
// default has IPv6 off would refuse the link's IPv6 addresses. A kernel
// without IPv6 is said so.
func enableIPv6(name string) error {
	key := "net/ipv6/conf/" + name + "/disable_ipv6"
	if _, err := sysctl.Sysctl(key, "0"); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("this node has an IPv6 block but the kernel has no IPv6 for %s: %w", name, err)
		}
		return fmt.Errorf("set %s=0: %w", key, err)
	}
	return nil
}

// gatewayNeighbour is the pod's PERMANENT entry for the gateway gw
// (169.254.1.1 or its IPv6 twin) on the link with index idx: the gateway is
// the host veth, whose MAC is fixed.
func gatewayNeighbour(idx int, gw netip.Addr) *netlink.Neigh {
	family := unix.AF_INET
	if !gw.Is4() {
		family = unix.AF_INET6
	}
	return &netlink.Neigh{
		LinkIndex:    idx,
		Family:       family,
		State:        netlink.NUD_PERMANENT,
		IP:           net.IP(gw.AsSlice()),
		HardwareAddr: hostVethMAC(),
	}
}

// configureHost finishes the host side in the current namespace: the fixed
// MAC (verified, since some kernels ignore the MAC in a create request), the
// sysctls, `<podIP> dev <veth> scope link`, and a permanent neighbour entry
// so the host never has to ARP for the pod; on a dual-stack node the same
// for the pod's IPv6 address, and the gateway's link-local address
// (configureHost6).
func configureHost(name string, podIPs podAddrs, podMAC net.HardwareAddr) (netlink.Link, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", name, err)
	}
	if !bytes.Equal(link.Attrs().HardwareAddr, hostVethMAC()) {
		if err := netlink.LinkSetHardwareAddr(link, hostVethMAC()); err != nil {
			return nil, fmt.Errorf("set MAC of %s to %s: %w", name, hostVethMAC(), err)
		}
		if link, err = netlink.LinkByName(name); err != nil {
			return nil, fmt.Errorf("look up %s: %w", name, err)
		}
		if got := link.Attrs().HardwareAddr; !bytes.Equal(got, hostVethMAC()) {
			return nil, fmt.Errorf("%s has MAC %s after setting %s", name, got, hostVethMAC())
		}
	}
	for _, s := range hostveth.Sysctls(name) {
		if _, err := sysctl.Sysctl(s.Key, s.Value); err != nil {
			if s.Optional && errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("set %s=%s: %w", s.Key, s.Value, err)
		}
	}
	if podIPs.v4.IsValid() {
		if err := routeToPod(link, podIPs.v4, podMAC); err != nil {
			return nil, err
		}
	}
	if podIPs.v6.IsValid() {
		if err := configureHost6(link, podIPs.v6, podMAC); err != nil {
			return nil, err
		}
	}
	return link, nil
}

// configureHost6 gives the host veth the gateway's link-local address
// fe80::ecee:eeff:feee:eeee/64 (nodad), then `<pod6> dev <veth>` and a
// PERMANENT neighbour entry for the pod's IPv6 address.
//
// The address is added explicitly rather than left to the kernel: the
// kernel derives it from the MAC only under addr_gen_mode 0 (EUI-64); mode
// 1 gives the link none, modes 2 and 3 an opaque one, and any mode runs
// DAD first. The pod's PERMANENT entry means the pod never asks for it, but
// with it the host answers the pod's neighbour solicitations for its
// gateway should the entry be flushed, and sends ICMPv6 errors from the
// address the pod routes through. Where the kernel already made the same
// address (mode 0), adding it again changes nothing.
func configureHost6(link netlink.Link, podIP netip.Addr, podMAC net.HardwareAddr) error {
	name := link.Attrs().Name
	if err := enableIPv6(name); err != nil {
		return err
	}
	gw := &net.IPNet{IP: net.IP(ipam.Gateway6().AsSlice()), Mask: net.CIDRMask(64, 128)}
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: gw, Flags: unix.IFA_F_NODAD}); err != nil {
		return fmt.Errorf("add %s nodad to %s: %w", gw, name, err)
	}
	return routeToPod(link, podIP, podMAC)
}

// routeToPod writes `<podIP> dev <link> scope link` (a /32 or /128) and the
// pod's PERMANENT neighbour entry on the host veth.
func routeToPod(link netlink.Link, podIP netip.Addr, podMAC net.HardwareAddr) error {
	name, idx := link.Attrs().Name, link.Attrs().Index
	family, scope, route := unix.AF_INET, netlink.SCOPE_LINK, podIP.String()+" dev "+name+" scope link"
	if !podIP.Is4() {
		// IPv6 routes carry no scope.
		family, scope, route = unix.AF_INET6, netlink.SCOPE_UNIVERSE, podIP.String()+" dev "+name
	}
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: hostPrefix(podIP), Scope: scope}); err != nil {
		return fmt.Errorf("add route %s: %w", route, err)
	}
	neigh := &netlink.Neigh{
		LinkIndex:    idx,
		Family:       family,
		State:        netlink.NUD_PERMANENT,
		IP:           net.IP(podIP.AsSlice()),
		HardwareAddr: podMAC,
	}
	if err := netlink.NeighSet(neigh); err != nil {
		return fmt.Errorf("add neighbour %s lladdr %s dev %s: %w", podIP, podMAC, name, err)
	}
	return nil
}

// pickHostVeth returns the name for the attachment's host veth and the link
// of that name ADD may replace (nil if none). The name derived from the pod's
// identity comes first; when a link of that name carries another
// attachment's alias (a sandbox of the same pod still running, or a
// request naming a pod it does not own), the name derived from the
// container ID and interface is used instead, so an ADD never unwires
// another container.
func pickHostVeth(att attachment, alias string) (string, netlink.Link, error) {
	var taken []string
	for _, name := range att.hostVethNames() {
		link, err := netlink.LinkByName(name)
		if isNotFound(err) {
			return name, nil, nil
		}
		if err != nil {
			return "", nil, fmt.Errorf("look up %s: %w", name, err)
		}
		if a := link.Attrs().Alias; a == alias || (a == "" && isHostVeth(link)) {
			return name, link, nil
		}
		taken = append(taken, fmt.Sprintf("%s (%s)", name, link.Attrs().Alias))
	}
	return "", nil, fmt.Errorf("no host veth name is free for %s: %s belong to other attachments", alias, strings.Join(taken, ", "))
}

// findHostVeth returns the attachment's host veth: the link carrying alias,
// looked up under the names ADD may have given it and, failing that, among
// all links (the runtime may pass other CNI_ARGS to DEL than to ADD). nil
// means the attachment has no host veth.
func findHostVeth(att attachment, alias string) (netlink.Link, error) {
	for _, name := range att.hostVethNames() {
		link, err := netlink.LinkByName(name)
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("look up %s: %w", name, err)
		}
		if link.Attrs().Alias == alias {
			return link, nil
		}
	}
	return linkWithAlias(alias)
}

// linkWithAlias returns the grapevine host veth carrying alias, or nil.
func linkWithAlias(alias string) (netlink.Link, error) {
	links, err := netlinkdump.Retry(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	for _, link := range links {
		if isHostVeth(link) && link.Attrs().Alias == alias {
			return link, nil
		}
	}
	return nil, nil
}

// isHostVeth reports whether link is a veth named like grapevine's host
// sides.
func isHostVeth(link netlink.Link) bool {
	_, isVeth := link.(*netlink.Veth)
	return isVeth && strings.HasPrefix(link.Attrs().Name, HostVethPrefix)
}

// deleteCreatedVeth removes the host veth name that a failing ADD created,
// and with it the pod side, unless a link of another attachment has taken
// the name meanwhile. A missing link is success.
func deleteCreatedVeth(name, alias string) error {
	link, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if a := link.Attrs().Alias; a != alias && a != "" {
		return nil
	}
	return deleteLink(link)
}

// deleteLink removes link; one already gone is success.
func deleteLink(link netlink.Link) error {
	if err := netlink.LinkDel(link); err != nil && !isNotFound(err) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", link.Attrs().Name, err)
	}
	return nil
}
