package node

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/grapevine-net/grapevine/internal/netlinkdump"
)

// Uplink is the interface towards the peers and this host's address on it.
type Uplink struct {
	Name string
	Addr netip.Addr
	MTU  int
}

// ResolveUplink fills in, in this network namespace, the interface (default:
// the one holding the host address if that is given, else the one the
// default route of the family leaves through) and the host address
// (default: the interface's first global address of the family). The
// family is IPv6 when ipv6 is set (an IPv6-only cluster: the host address
// is IPv6) or addr is IPv6, else IPv4. Given both, it still checks that the
// address is on the interface, because peers will use it as their next
// hop.
func ResolveUplink(name string, addr netip.Addr, ipv6 bool) (Uplink, error) {
	return resolveUplink(&netlink.Handle{}, name, addr, ipv6)
}

func resolveUplink(h *netlink.Handle, name string, addr netip.Addr, ipv6 bool) (Uplink, error) {
	fam := uplinkFamily{ipv6: ipv6 || addr.Is6()}
	if addr.IsValid() && addr.Is4() == fam.ipv6 {
		return Uplink{}, fmt.Errorf("host address %s is not an %s address", addr, fam)
	}
	var link netlink.Link
	var addrs []netlink.Addr // the link's addresses of the family, once listed
	var err error
	switch {
	case name != "":
		if link, err = h.LinkByName(name); err != nil {
			return Uplink{}, fmt.Errorf("interface %s: %w", name, err)
		}
	case addr.IsValid():
		if link, addrs, err = linkWithAddr(h, addr, fam); err != nil {
			return Uplink{}, err
		}
	default:
		if link, err = defaultRouteLink(h, fam); err != nil {
			return Uplink{}, err
		}
	}
	attrs := link.Attrs()
	if addrs == nil {
		if addrs, err = netlinkdump.Retry(func() ([]netlink.Addr, error) { return h.AddrList(link, fam.netlink()) }); err != nil {
			return Uplink{}, fmt.Errorf("list addresses of %s: %w", attrs.Name, err)
		}
	}
	var found netip.Addr
	for _, a := range addrs {
		ip, ok := fam.hostAddr(a)
		if !ok {
			continue
		}
		if !addr.IsValid() || ip == addr {
			found = ip
			break
		}
	}
	switch {
	case !found.IsValid() && addr.IsValid():
		return Uplink{}, fmt.Errorf("%s is not an address of %s", addr, attrs.Name)
	case !found.IsValid():
		return Uplink{}, fmt.Errorf("%s has no global %s address", attrs.Name, fam)
	}
	return Uplink{Name: attrs.Name, Addr: found, MTU: attrs.MTU}, nil
}

// uplinkFamily is the address family ResolveUplink looks for.
type uplinkFamily struct{ ipv6 bool }

func (f uplinkFamily) String() string {
	if f.ipv6 {
		return "IPv6"
	}
	return "IPv4"
}

func (f uplinkFamily) netlink() int {
	if f.ipv6 {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

// hostAddr is a's address if it can be a host address of the family: a
// global IPv4 address, or a global unicast IPv6 address that is not
// temporary (a privacy address goes away).
func (f uplinkFamily) hostAddr(a netlink.Addr) (netip.Addr, bool) {
	if !f.ipv6 {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		return ip, ok && a.Scope == int(netlink.SCOPE_UNIVERSE)
	}
	ip, ok := netip.AddrFromSlice(a.IP)
	return ip, ok && ip.Is6() && !ip.Is4In6() && ip.IsGlobalUnicast() && a.Flags&unix.IFA_F_TEMPORARY == 0
}

func defaultRouteLink(h *netlink.Handle, fam uplinkFamily) (netlink.Link, error) {
	routes, err := netlinkdump.Retry(func() ([]netlink.Route, error) { return h.RouteList(nil, fam.netlink()) })
	if err != nil {
		return nil, fmt.Errorf("find the default route: %w", err)
	}
	for _, r := range routes {
		// netlink reports the default route with a nil or a /0 destination.
		isDefault := r.Dst == nil || r.Dst.IP.IsUnspecified() && maskBits(r.Dst.Mask) == 0
		if isDefault && r.LinkIndex > 0 {
			link, err := h.LinkByIndex(r.LinkIndex)
			if err != nil {
				return nil, fmt.Errorf("default route's interface: %w", err)
			}
			return link, nil
		}
	}
	return nil, fmt.Errorf("no %s default route to pick the interface from", fam)
}

func maskBits(m net.IPMask) int {
	ones, _ := m.Size()
	return ones
}

// linkWithAddr finds the interface that holds addr, so that a host whose
// peer-facing address is not on its default route's interface needs only
// the host address (in Kubernetes: the node's InternalIP). It returns that
// interface's addresses of the family too, out of the one list of every
// interface's, so that they need not be listed again.
func linkWithAddr(h *netlink.Handle, addr netip.Addr, fam uplinkFamily) (netlink.Link, []netlink.Addr, error) {
	all, err := netlinkdump.Retry(func() ([]netlink.Addr, error) { return h.AddrList(nil, fam.netlink()) })
	if err != nil {
		return nil, nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range all {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
			link, err := h.LinkByIndex(a.LinkIndex)
			if err != nil {
				return nil, nil, fmt.Errorf("interface of %s: %w", addr, err)
			}
			onLink := slices.DeleteFunc(all, func(b netlink.Addr) bool { return b.LinkIndex != a.LinkIndex })
			return link, onLink, nil
		}
	}
	return nil, nil, fmt.Errorf("%s is not an address of this host", addr)
}

// ResolveUplinkAddr6 returns this host's IPv6 address on the interface
// name, the next hop peers use for its IPv6 block: want if given (checked to
// be on the interface), else the interface's first global unicast IPv6
// address; zero, and no error, when there is none (the host has no IPv6
// underlay there). A temporary (privacy) address is never picked: it goes
// away.
func ResolveUplinkAddr6(name string, want netip.Addr) (netip.Addr, error) {
	h := &netlink.Handle{}
	link, err := h.LinkByName(name)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("interface %s: %w", name, err)
	}
	addrs, err := netlinkdump.Retry(func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_V6) })
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list IPv6 addresses of %s: %w", name, err)
	}
	var ips []netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if ok && ip.Is6() && !ip.Is4In6() && ip.IsGlobalUnicast() && a.Flags&unix.IFA_F_TEMPORARY == 0 {
			ips = append(ips, ip)
		}
	}
	return pickAddr6(name, ips, want)
}

// pickAddr6 is ResolveUplinkAddr6's choice among the interface's global
// IPv6 addresses ips. It is pure.
func pickAddr6(name string, ips []netip.Addr, want netip.Addr) (netip.Addr, error) {
	if want.IsValid() {
		if slices.Contains(ips, want) {
			return want, nil
		}
		return netip.Addr{}, fmt.Errorf("%s is not a global IPv6 address of %s", want, name)
	}
	if len(ips) == 0 {
		return netip.Addr{}, nil
	}
	return ips[0], nil
}
