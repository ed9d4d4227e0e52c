package node

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/grapevine-net/grapevine/internal/netlinkdump"
)

// HostVeths implements PodKernel.
func (k *NetlinkKernel) HostVeths(aliasPrefix string) ([]HostVeth, error) {
	links, err := netlinkdump.Retry(k.handle.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []HostVeth
	for _, l := range links {
		attrs := l.Attrs()
		if l.Type() != "veth" || !strings.HasPrefix(attrs.Alias, aliasPrefix) {
			continue
		}
		v := HostVeth{Name: attrs.Name, Index: attrs.Index, Alias: attrs.Alias}
		// Without the MAC only a missing neighbour entry stays missing;
		// the rest of the pod's host side is still kept.
		v.PodMAC, _ = k.peerMAC(attrs)
		out = append(out, v)
	}
	return out, nil
}

// peerMAC asks for the MAC of the veth's other end in the pod's namespace,
// by the namespace's ID as the host veth's attributes give it
// (IFLA_LINK_NETNSID) and the peer's index there (IFLA_LINK), without
// entering the namespace: RTM_GETLINK with IFLA_TARGET_NETNSID (Linux 4.20).
func (k *NetlinkKernel) peerMAC(attrs *netlink.LinkAttrs) (MAC, error) {
	if attrs.NetNsID < 0 || attrs.ParentIndex == 0 {
		return MAC{}, fmt.Errorf("%s: its other end is in no other namespace", attrs.Name)
	}
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(attrs.ParentIndex)
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.IFLA_TARGET_NETNSID, nl.Uint32Attr(uint32(attrs.NetNsID))))
	var msgs [][]byte
	err := k.inNetns(func() error {
		var err error
		msgs, err = req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
		return err
	})
	if err != nil {
		return MAC{}, fmt.Errorf("look up the other end of %s: %w", attrs.Name, err)
	}
	if len(msgs) == 0 {
		return MAC{}, fmt.Errorf("look up the other end of %s: no answer", attrs.Name)
	}
	peer, err := netlink.LinkDeserialize(nil, msgs[0])
	if err != nil {
		return MAC{}, fmt.Errorf("look up the other end of %s: %w", attrs.Name, err)
	}
	var mac MAC
	if len(peer.Attrs().HardwareAddr) != len(mac) {
		return MAC{}, fmt.Errorf("the other end of %s has no Ethernet address", attrs.Name)
	}
	copy(mac[:], peer.Attrs().HardwareAddr)
	return mac, nil
}

// PodRoutes implements PodKernel.
func (k *NetlinkKernel) PodRoutes() ([]Route, error) {
	return netlinkdump.Retry(func() ([]Route, error) {
		var routes []Route
		filter := &netlink.Route{Table: unix.RT_TABLE_MAIN}
		err := k.handle.RouteListFilteredIter(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_TABLE, func(nr netlink.Route) bool {
			dst, ok := prefixFromIPNet(nr.Dst)
			if !ok || dst.Bits() != dst.Addr().BitLen() || int(nr.Protocol) == RouteProtocol {
				return true
			}
			r := Route{
				Dst:         dst,
				Metric:      nr.Priority,
				Blackhole:   nr.Type == unix.RTN_BLACKHOLE,
				Unreachable: nr.Type == unix.RTN_UNREACHABLE,
				LinkIndex:   nr.LinkIndex,
			}
			r.Via, _ = netip.AddrFromSlice(nr.Gw)
			r.Via = r.Via.Unmap()
			if nr.Type != unix.RTN_UNICAST && !r.Blackhole && !r.Unreachable {
				r.LinkIndex = 0 // prohibit, throw: nothing a pod's route could be
			}
			routes = append(routes, r)
			return true
		})
		if err != nil {
			return nil, fmt.Errorf("list /32 and /128 routes: %w", err)
		}
		return routes, nil
	})
}

// ReplacePodRoute implements PodKernel.
func (k *NetlinkKernel) ReplacePodRoute(r Route) error {
	nr := &netlink.Route{
		Dst:       ipNet(r.Dst),
		LinkIndex: r.LinkIndex,
		Scope:     netlink.SCOPE_LINK,
		Table:     unix.RT_TABLE_MAIN,
		Priority:  r.Metric,
	}
	if r.Dst.Addr().Is6() {
		nr.Scope = netlink.SCOPE_UNIVERSE // IPv6 routes carry no scope
	}
	if err := k.handle.RouteReplace(nr); err != nil {
		return fmt.Errorf("put back route %s dev ifindex %d: %w", r.Dst, r.LinkIndex, err)
	}
	return nil
}

// PodNeighbours implements PodKernel.
func (k *NetlinkKernel) PodNeighbours() ([]PodNeighbour, error) {
	ns, err := netlinkdump.Retry(func() ([]netlink.Neigh, error) { return k.handle.NeighList(0, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("list neighbours: %w", err)
	}
	out := make([]PodNeighbour, 0, len(ns))
	for _, n := range ns {
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		e := PodNeighbour{LinkIndex: n.LinkIndex, Neighbour: Neighbour{IP: ip.Unmap(), Permanent: n.State&netlink.NUD_PERMANENT != 0}}
		copy(e.MAC[:], n.HardwareAddr)
		out = append(out, e)
	}
	return out, nil
}

// SetPodNeighbour implements PodKernel.
func (k *NetlinkKernel) SetPodNeighbour(n PodNeighbour) error {
	family := unix.AF_INET
	if n.IP.Is6() {
		family = unix.AF_INET6
	}
	err := k.handle.NeighSet(&netlink.Neigh{
		LinkIndex:    n.LinkIndex,
		Family:       family,
		State:        netlink.NUD_PERMANENT,
		IP:           n.IP.AsSlice(),
		HardwareAddr: net.HardwareAddr(n.MAC[:]),
	})
	if err != nil {
		return fmt.Errorf("put back neighbour %s lladdr %s dev ifindex %d: %w", n.IP, n.MAC, n.LinkIndex, err)
	}
	return nil
}

// sysctlPath is key's file under /proc/sys; only the per-interface network
// settings are ever asked for.
func sysctlPath(key string) (string, error) {
	clean := filepath.Clean(key)
	if clean != key || !strings.HasPrefix(key, "net/") || strings.Contains(key, "..") {
		return "", fmt.Errorf("sysctl %q is not a network setting", key)
	}
	return filepath.Join("/proc/sys", key), nil
}

// Sysctl implements PodKernel, in k's namespace: /proc/sys/net serves the
// namespace of the thread that opens it.
func (k *NetlinkKernel) Sysctl(key string) (string, error) {
	path, err := sysctlPath(key)
	if err != nil {
		return "", err
	}
	var value string
	err = k.inNetns(func() error {
		b, err := os.ReadFile(path)
		value = strings.TrimSpace(string(b))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("read %s: %w", key, err)
	}
	return value, nil
}

// SetSysctl implements PodKernel.
func (k *NetlinkKernel) SetSysctl(s Sysctl) error {
	path, err := sysctlPath(s.Key)
	if err != nil {
		return err
	}
	err = k.inNetns(func() error {
		// O_WRONLY without O_CREATE: a setting that is gone stays gone.
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		_, err = f.WriteString(s.Value)
		return errors.Join(err, f.Close())
	})
	if err != nil {
		return fmt.Errorf("put back %s=%s: %w", s.Key, s.Value, err)
	}
	return nil
}
