package main

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// uplink is the interface towards the peers and this host's address on it.
type uplink struct {
	Name string
	Addr netip.Addr
	MTU  int
}

// resolveUplink fills in the interface (default: the one holding the host
// address if that is given, else the one the IPv4 default route leaves
// through) and the host address (default: the interface's first
// global IPv4 address). Given both, it still checks that the address is on
// the interface, because peers will use it as their next hop.
func resolveUplink(name string, addr netip.Addr) (uplink, error) {
	var link netlink.Link
	var err error
	switch {
	case name != "":
		if link, err = netlink.LinkByName(name); err != nil {
			return uplink{}, fmt.Errorf("--iface %s: %w", name, err)
		}
	case addr.IsValid():
		if link, err = linkWithAddr(addr); err != nil {
			return uplink{}, err
		}
	default:
		if link, err = defaultRouteLink(); err != nil {
			return uplink{}, err
		}
	}
	attrs := link.Attrs()
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return uplink{}, fmt.Errorf("list addresses of %s: %w", attrs.Name, err)
	}
	var found netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok || a.Scope != int(netlink.SCOPE_UNIVERSE) {
			continue
		}
		if !addr.IsValid() || ip == addr {
			found = ip
			break
		}
	}
	switch {
	case !found.IsValid() && addr.IsValid():
		return uplink{}, fmt.Errorf("--host-ip %s is not an address of %s", addr, attrs.Name)
	case !found.IsValid():
		return uplink{}, fmt.Errorf("%s has no global IPv4 address; set --host-ip or --iface", attrs.Name)
	}
	return uplink{Name: attrs.Name, Addr: found, MTU: attrs.MTU}, nil
}

func defaultRouteLink() (netlink.Link, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("find the default route: %w", err)
	}
	for _, r := range routes {
		// netlink reports the default route with a nil or a /0 destination.
		isDefault := r.Dst == nil || r.Dst.IP.Equal(net.IPv4zero) && maskBits(r.Dst.Mask) == 0
		if isDefault && r.LinkIndex > 0 {
			link, err := netlink.LinkByIndex(r.LinkIndex)
			if err != nil {
				return nil, fmt.Errorf("default route's interface: %w", err)
			}
			return link, nil
		}
	}
	return nil, fmt.Errorf("no IPv4 default route to pick the interface from; set --iface")
}

func maskBits(m net.IPMask) int {
	ones, _ := m.Size()
	return ones
}

// linkWithAddr finds the interface that holds addr, so that a host whose
// peer-facing address is not on its default route's interface needs only
// --host-ip (in Kubernetes: the node's InternalIP).
func linkWithAddr(addr netip.Addr) (netlink.Link, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && ip == addr {
			link, err := netlink.LinkByIndex(a.LinkIndex)
			if err != nil {
				return nil, fmt.Errorf("interface of %s: %w", addr, err)
			}
			return link, nil
		}
	}
	return nil, fmt.Errorf("--host-ip %s is not an address of this host; set --iface and --host-ip to match", addr)
}
