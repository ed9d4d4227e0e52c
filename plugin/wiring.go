package plugin

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

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
func configurePod(podNS ns.NetNS, ifName string, podIP netip.Addr) (podInterface, error) {
	var pod podInterface
	err := podNS.Do(func(ns.NetNS) error {
		link, err := netlink.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("look up %s: %w", ifName, err)
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up: %w", ifName, err)
		}
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
		if err := netlink.NeighSet(gatewayNeighbour(idx)); err != nil {
			return fmt.Errorf("add neighbour %s lladdr %s dev %s: %w", gw, hostVethMAC(), ifName, err)
		}
		pod = podInterface{mac: link.Attrs().HardwareAddr, mtu: link.Attrs().MTU}
		return nil
	})
	return pod, err
}

// gatewayNeighbour is the pod's PERMANENT entry for the gateway on the link
// with index idx: 169.254.1.1 is the host veth, whose MAC is fixed.
func gatewayNeighbour(idx int) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    idx,
		Family:       unix.AF_INET,
		State:        netlink.NUD_PERMANENT,
		IP:           net.IP(ipam.Gateway().AsSlice()),
		HardwareAddr: hostVethMAC(),
	}
}

// configureHost finishes the host side in the current namespace: the fixed
// MAC (verified, since some kernels ignore the MAC in a create request), the
// sysctls, `<podIP> dev <veth> scope link`, and a permanent neighbour entry
// so the host never has to ARP for the pod.
func configureHost(name string, podIP netip.Addr, podMAC net.HardwareAddr) (netlink.Link, error) {
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
	idx := link.Attrs().Index
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: hostPrefix(podIP), Scope: netlink.SCOPE_LINK}); err != nil {
		return nil, fmt.Errorf("add route %s dev %s scope link: %w", podIP, name, err)
	}
	neigh := &netlink.Neigh{
		LinkIndex:    idx,
		Family:       unix.AF_INET,
		State:        netlink.NUD_PERMANENT,
		IP:           net.IP(podIP.AsSlice()),
		HardwareAddr: podMAC,
	}
	if err := netlink.NeighSet(neigh); err != nil {
		return nil, fmt.Errorf("add neighbour %s lladdr %s dev %s: %w", podIP, podMAC, name, err)
	}
	return link, nil
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
