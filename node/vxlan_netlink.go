package node

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/grapevine-net/grapevine/internal/netlinkdump"
)

var _ Kernel = (*NetlinkKernel)(nil)

// tunnelLink looks the device up; a missing one wraps ErrLinkNotFound.
func (k *NetlinkKernel) tunnelLink() (netlink.Link, error) {
	l, err := k.handle.LinkByName(TunnelName)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			return nil, fmt.Errorf("interface %q: %w", TunnelName, ErrLinkNotFound)
		}
		return nil, fmt.Errorf("look up %s: %w", TunnelName, err)
	}
	return l, nil
}

// Tunnel implements TunnelKernel.
func (k *NetlinkKernel) Tunnel() (TunnelState, error) {
	l, err := k.tunnelLink()
	if err != nil {
		return TunnelState{}, err
	}
	attrs := l.Attrs()
	st := TunnelState{Kind: l.Type(), Index: attrs.Index, Up: attrs.Flags&net.FlagUp != 0}
	vx, ok := l.(*netlink.Vxlan)
	if !ok {
		return st, nil
	}
	st.Learning = vx.Learning
	st.Tunnel = Tunnel{VNI: vx.VxlanId, Port: vx.Port, Underlay: vx.VtepDevIndex, MTU: attrs.MTU}
	if a, ok := netip.AddrFromSlice(vx.SrcAddr); ok {
		st.Tunnel.Local = a.Unmap()
	}
	copy(st.Tunnel.MAC[:], attrs.HardwareAddr)
	addrs, err := netlinkdump.Retry(func() ([]netlink.Addr, error) { return k.handle.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return st, fmt.Errorf("list addresses of %s: %w", TunnelName, err)
	}
	for _, a := range addrs {
		// The IPv6 link-local address is the kernel's, not one of ours.
		if p, ok := prefixFromIPNet(a.IPNet); ok && !p.Addr().IsLinkLocalUnicast() {
			st.Addrs = append(st.Addrs, p)
		}
	}
	return st, nil
}

// AddTunnel implements TunnelKernel. Without an MTU (0) the kernel gives
// the device the underlay's less the VXLAN overhead.
func (k *NetlinkKernel) AddTunnel(t Tunnel) error {
	vx := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: TunnelName, HardwareAddr: net.HardwareAddr(t.MAC[:]), MTU: t.MTU},
		VxlanId:      t.VNI,
		VtepDevIndex: t.Underlay,
		SrcAddr:      t.Local.AsSlice(),
		Port:         t.Port,
		Learning:     false,
	}
	if err := k.handle.LinkAdd(vx); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create %s (VNI %d, port %d): another device uses its name or VNI and port: %w", TunnelName, t.VNI, t.Port, err)
		}
		return fmt.Errorf("create %s (VNI %d, port %d): %w", TunnelName, t.VNI, t.Port, err)
	}
	return nil
}

// DeleteTunnel implements TunnelKernel.
func (k *NetlinkKernel) DeleteTunnel() error {
	l, err := k.tunnelLink()
	if errors.Is(err, ErrLinkNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, ok := l.(*netlink.Vxlan); !ok {
		return fmt.Errorf("delete %s: it is a %s device, not Grapevine's", TunnelName, l.Type())
	}
	if err := k.handle.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", TunnelName, err)
	}
	return nil
}

// SetTunnelUp implements TunnelKernel.
func (k *NetlinkKernel) SetTunnelUp() error {
	l, err := k.tunnelLink()
	if err != nil {
		return err
	}
	if err := k.handle.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", TunnelName, err)
	}
	return nil
}

// AddTunnelAddr implements TunnelKernel.
func (k *NetlinkKernel) AddTunnelAddr(p netip.Prefix) error {
	l, err := k.tunnelLink()
	if err != nil {
		return err
	}
	if err := k.handle.AddrReplace(l, &netlink.Addr{IPNet: ipNet(p)}); err != nil {
		return fmt.Errorf("add address %s to %s: %w", p, TunnelName, err)
	}
	return nil
}

// DeleteTunnelAddr implements TunnelKernel.
func (k *NetlinkKernel) DeleteTunnelAddr(p netip.Prefix) error {
	l, err := k.tunnelLink()
	if err != nil {
		return err
	}
	if err := k.handle.AddrDel(l, &netlink.Addr{IPNet: ipNet(p)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("delete address %s from %s: %w", p, TunnelName, err)
	}
	return nil
}

// TunnelEntries implements TunnelKernel.
func (k *NetlinkKernel) TunnelEntries() ([]Neighbour, []FDBEntry, error) {
	l, err := k.tunnelLink()
	if err != nil {
		return nil, nil, err
	}
	index := l.Attrs().Index
	ns, err := netlinkdump.Retry(func() ([]netlink.Neigh, error) { return k.handle.NeighList(index, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, nil, fmt.Errorf("list neighbours of %s: %w", TunnelName, err)
	}
	var neighs []Neighbour
	for _, n := range ns {
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok || n.LinkIndex != index || n.Family != unix.AF_INET && n.Family != unix.AF_INET6 {
			continue
		}
		e := Neighbour{IP: ip.Unmap(), Permanent: n.State&netlink.NUD_PERMANENT != 0}
		copy(e.MAC[:], n.HardwareAddr)
		neighs = append(neighs, e)
	}
	fs, err := netlinkdump.Retry(func() ([]netlink.Neigh, error) { return k.handle.NeighList(index, unix.AF_BRIDGE) })
	if err != nil {
		return nil, nil, fmt.Errorf("list FDB of %s: %w", TunnelName, err)
	}
	var fdb []FDBEntry
	for _, f := range fs {
		if f.LinkIndex != index {
			continue
		}
		var e FDBEntry
		copy(e.MAC[:], f.HardwareAddr)
		if dst, ok := netip.AddrFromSlice(f.IP); ok {
			e.Dst = dst.Unmap()
		}
		fdb = append(fdb, e)
	}
	return neighs, fdb, nil
}

func (k *NetlinkKernel) neigh(family int, ip netip.Addr, mac MAC) (*netlink.Neigh, error) {
	l, err := k.tunnelLink()
	if err != nil {
		return nil, err
	}
	n := &netlink.Neigh{
		LinkIndex:    l.Attrs().Index,
		Family:       family,
		State:        netlink.NUD_PERMANENT,
		IP:           ip.AsSlice(),
		HardwareAddr: net.HardwareAddr(mac[:]),
	}
	if family == unix.AF_BRIDGE {
		n.Flags = netlink.NTF_SELF
	}
	return n, nil
}

// SetNeighbour implements TunnelKernel.
func (k *NetlinkKernel) SetNeighbour(e Neighbour) error {
	n, err := k.neigh(neighFamily(e.IP), e.IP, e.MAC)
	if err == nil {
		err = k.handle.NeighSet(n)
	}
	if err != nil {
		return fmt.Errorf("neighbour %s lladdr %s dev %s: %w", e.IP, e.MAC, TunnelName, err)
	}
	return nil
}

// DeleteNeighbour implements TunnelKernel.
func (k *NetlinkKernel) DeleteNeighbour(e Neighbour) error {
	n, err := k.neigh(neighFamily(e.IP), e.IP, e.MAC)
	if err == nil {
		err = k.handle.NeighDel(n)
	}
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete neighbour %s dev %s: %w", e.IP, TunnelName, err)
	}
	return nil
}

// neighFamily is the neighbour table of ip's family.
func neighFamily(ip netip.Addr) int {
	if ip.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// SetFDB implements TunnelKernel.
func (k *NetlinkKernel) SetFDB(e FDBEntry) error {
	n, err := k.neigh(unix.AF_BRIDGE, e.Dst, e.MAC)
	if err == nil {
		err = k.handle.NeighSet(n)
	}
	if err != nil {
		return fmt.Errorf("fdb %s dst %s dev %s: %w", e.MAC, e.Dst, TunnelName, err)
	}
	return nil
}

// DeleteFDB implements TunnelKernel.
func (k *NetlinkKernel) DeleteFDB(e FDBEntry) error {
	n, err := k.neigh(unix.AF_BRIDGE, e.Dst, e.MAC)
	if err == nil {
		if !e.Dst.IsValid() {
			n.IP = nil
		}
		err = k.handle.NeighDel(n)
	}
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete fdb %s dst %s dev %s: %w", e.MAC, e.Dst, TunnelName, err)
	}
	return nil
}
