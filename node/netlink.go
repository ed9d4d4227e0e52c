package node

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/grapevine-net/grapevine/internal/netlinkdump"
)

// NetlinkKernel is the Kernel of one network namespace, spoken to through
// rtnetlink (routes, links), nftables netlink (masquerade) and procfs
// (forwarding).
type NetlinkKernel struct {
	handle *netlink.Handle
	// netns is the namespace the kernel was opened for; nil means the
	// namespace of the calling thread, which for the agent is the host's.
	netns ns.NetNS
}

// NewNetlinkKernel returns the Kernel of the calling thread's network
// namespace (the agent's: the host's). Its netlink sockets are opened per
// request in that namespace.
func NewNetlinkKernel() *NetlinkKernel {
	return &NetlinkKernel{handle: &netlink.Handle{}}
}

// NewNetlinkKernelAt returns the Kernel of the network namespace at path
// (e.g. /var/run/netns/NAME), usable from any goroutine without switching
// into it. Close releases it.
func NewNetlinkKernelAt(path string) (*NetlinkKernel, error) {
	target, err := ns.GetNS(path)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	h, err := netlink.NewHandleAt(netns.NsHandle(target.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		target.Close()
		return nil, fmt.Errorf("open rtnetlink in %s: %w", path, err)
	}
	return &NetlinkKernel{handle: h, netns: target}, nil
}

// Close releases the namespace handle and the netlink sockets.
func (k *NetlinkKernel) Close() error {
	k.handle.Close()
	if k.netns == nil {
		return nil
	}
	return k.netns.Close()
}

// inNetns runs f in k's network namespace, for procfs, which serves the
// namespace of the calling thread.
func (k *NetlinkKernel) inNetns(f func() error) error {
	if k.netns == nil {
		return f()
	}
	return k.netns.Do(func(ns.NetNS) error { return f() })
}

// Link implements Kernel.
func (k *NetlinkKernel) Link(name string) (Link, error) {
	l, err := k.handle.LinkByName(name)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return Link{}, fmt.Errorf("interface %q: %w", name, ErrLinkNotFound)
		}
		return Link{}, fmt.Errorf("look up interface %q: %w", name, err)
	}
	addrs, err := netlinkdump.Retry(func() ([]netlink.Addr, error) { return k.handle.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return Link{}, fmt.Errorf("list addresses of %q: %w", name, err)
	}
	link := Link{
		Name:  name,
		Index: l.Attrs().Index,
		Up:    l.Attrs().Flags&net.FlagUp != 0,
		MTU:   l.Attrs().MTU,
	}
	for _, a := range addrs {
		if p, ok := prefixFromIPNet(a.IPNet); ok {
			link.Addrs = append(link.Addrs, p)
		}
	}
	return link, nil
}

// Routes implements Kernel with a single dump of the main table, repeated if
// a concurrent change made it inconsistent.
func (k *NetlinkKernel) Routes() ([]Route, error) {
	return netlinkdump.Retry(k.dumpRoutes)
}

func (k *NetlinkKernel) dumpRoutes() ([]Route, error) {
	filter := &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}
	var routes []Route
	err := k.handle.RouteListFilteredIter(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE,
		func(nr netlink.Route) bool {
			dst, ok := prefixFromIPNet(nr.Dst)
			if !ok {
				return true // a default route is never one of ours to keep or delete
			}
			r := Route{
				Dst:         dst.Masked(),
				Metric:      nr.Priority,
				Blackhole:   nr.Type == unix.RTN_BLACKHOLE,
				Unreachable: nr.Type == unix.RTN_UNREACHABLE,
			}
			if !r.Blackhole && !r.Unreachable {
				r.Via, _ = netip.AddrFromSlice(nr.Gw)
				r.Via = r.Via.Unmap()
				r.LinkIndex = nr.LinkIndex
				r.OnLink = nr.Flags&int(netlink.FLAG_ONLINK) != 0
			}
			routes = append(routes, r)
			return true
		})
	if err != nil {
		return nil, fmt.Errorf("list routes with proto %d: %w", RouteProtocol, err)
	}
	return routes, nil
}

// AddRoute implements Kernel. The kernel checks for an existing route
// atomically (NLM_F_EXCL).
func (k *NetlinkKernel) AddRoute(r Route) error {
	if err := k.handle.RouteAdd(netlinkRoute(r)); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add route %s: %w", r, ErrRouteExists)
		}
		return fmt.Errorf("add route %s: %w", r, err)
	}
	return nil
}

// ReplaceRoute implements Kernel.
func (k *NetlinkKernel) ReplaceRoute(r Route) error {
	if err := k.handle.RouteReplace(netlinkRoute(r)); err != nil {
		return fmt.Errorf("replace route %s: %w", r, err)
	}
	return nil
}

func netlinkRoute(r Route) *netlink.Route {
	nr := &netlink.Route{
		Dst:      ipNet(r.Dst),
		Protocol: RouteProtocol,
		Table:    unix.RT_TABLE_MAIN,
		Priority: r.Metric,
	}
	switch {
	case r.Blackhole:
		nr.Type = unix.RTN_BLACKHOLE
	case r.Unreachable:
		nr.Type = unix.RTN_UNREACHABLE
	default:
		nr.Gw = r.Via.AsSlice()
		nr.LinkIndex = r.LinkIndex
		nr.Scope = netlink.SCOPE_UNIVERSE
		if r.OnLink {
			nr.Flags = int(netlink.FLAG_ONLINK)
		}
	}
	return nr
}

// DeleteRoute implements Kernel. The request names the protocol, so the
// kernel itself refuses to delete a route that is not ours.
func (k *NetlinkKernel) DeleteRoute(r Route) error {
	nr := &netlink.Route{
		Dst:      ipNet(r.Dst),
		Protocol: RouteProtocol,
		Table:    unix.RT_TABLE_MAIN,
		Priority: r.Metric,
	}
	if err := k.handle.RouteDel(nr); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("delete route %s: %w", r, err)
	}
	return nil
}

// EnsureForwarding implements Kernel, in the kernel's network namespace:
// /proc/sys/net belongs to the namespace of the thread that opens it.
func (k *NetlinkKernel) EnsureForwarding(family Family) (enabled bool, err error) {
	what := "IPv4 forwarding"
	if family == IPv6 {
		what = "IPv6 forwarding"
	}
	err = k.inNetns(func() error {
		var werr error
		enabled, werr = enableSysctl(ForwardingSysctl(family), what)
		return werr
	})
	return enabled, err
}

// enableSysctl writes 1 to the switch name (net.ipv4.ip_forward) unless it
// is 1 already, and reports whether it wrote.
func enableSysctl(name, what string) (bool, error) {
	path := "/proc/sys/" + strings.ReplaceAll(name, ".", "/")
	cur, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	if strings.TrimSpace(string(cur)) == "1" {
		return false, nil
	}
	if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
		return false, fmt.Errorf("enable %s: %w", what, err)
	}
	return true, nil
}

func prefixFromIPNet(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	addr, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	addr = addr.Unmap()
	ones, bits := n.Mask.Size()
	if bits == 0 { // not a canonical mask
		return netip.Prefix{}, false
	}
	if addr.Is4() && bits == 128 {
		ones -= 96
	}
	return netip.PrefixFrom(addr, ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}
}
