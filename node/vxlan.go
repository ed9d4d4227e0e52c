package node

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// The VXLAN device that carries traffic to peers whose host address is not
// on a network of the interface (docs/design.md, "Fixed names and numbers").
const (
	// TunnelName is the device's name. The dot keeps it apart from the
	// plugin's veths (gv + 13 hex digits), so neither ever touches the other.
	TunnelName = "gv.vxlan"
	// TunnelVNI is the VXLAN network identifier: Grapevine's number, as in
	// proto 74. It differs from flannel's (1) and Calico's (4096), so the
	// devices of several networks can share one UDP socket.
	TunnelVNI = 74
	// TunnelPort is the UDP destination port: IANA's VXLAN port, which
	// firewalls expect and NICs offload, rather than the kernel's legacy
	// default 8472.
	TunnelPort = 4789
	// TunnelOverhead is what VXLAN adds to every packet over IPv4: outer
	// IPv4 (20), UDP (8), VXLAN (8) and inner Ethernet (14) headers.
	TunnelOverhead = 50
	// TunnelOverhead6 is the same over an IPv6 underlay (an IPv6-only
	// node): the outer IPv6 header is 40 bytes.
	TunnelOverhead6 = 70
)

// TunnelOverheadFor is what VXLAN adds to every packet on the underlay of
// hostIP's family.
func TunnelOverheadFor(hostIP netip.Addr) int {
	if hostIP.Is6() {
		return TunnelOverhead6
	}
	return TunnelOverhead
}

// MAC is an Ethernet address.
type MAC [6]byte

func (m MAC) String() string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

// VTEPMAC is the MAC address of the VXLAN device of the host whose address
// is hostIP: 0e:74 followed by the four bytes of the address. 0x0e marks it
// locally administered and unicast. Deriving it from the address every peer
// already knows is what lets peers program their neighbour and FDB entries
// without asking anyone, and keeps the member metadata as it is.
func VTEPMAC(hostIP netip.Addr) MAC {
	a := hostIP.As4()
	return MAC{0x0e, 0x74, a[0], a[1], a[2], a[3]}
}

// VTEPMAC6 is the MAC address of the VXLAN device of the IPv6-only host
// holding block (an IPv6 block): 0e:74 followed by the 32 bits of the
// block's address just above its host part, which hold the block's index
// in the pool. Blocks of one pool differ there (a pool has at most
// 2^MaxBlockCountBits blocks, mesh's limit), so unlike the low bits of the
// hosts' IPv6 addresses (::1 on two subnets) no two hosts share a MAC, and
// peers derive it from the block gossip already gives them.
func VTEPMAC6(block netip.Prefix) MAC {
	a := block.Masked().Addr().As16()
	hi, lo := binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:])
	shift := uint(128 - block.Bits())
	var v uint64
	switch {
	case shift >= 64:
		v = hi >> (shift - 64)
	case shift == 0:
		v = lo
	default:
		v = lo>>shift | hi<<(64-shift)
	}
	return MAC{0x0e, 0x74, byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
}

// vtepMAC is the VXLAN device MAC of the host at hostIP holding block:
// VTEPMAC on an IPv4 underlay, VTEPMAC6 on an IPv6 one.
func vtepMAC(hostIP netip.Addr, block netip.Prefix) MAC {
	if hostIP.Is4() {
		return VTEPMAC(hostIP)
	}
	return VTEPMAC6(block)
}

// VTEPAddr is the address of the VXLAN device of the host holding block: the
// block's first address, which IPAM never hands to a pod.
func VTEPAddr(block netip.Prefix) netip.Addr {
	return block.Masked().Addr()
}

// Tunnel is the VXLAN device as Grapevine wants it.
type Tunnel struct {
	VNI  int
	Port int
	// Local is this host's address: the outer source of every packet.
	Local netip.Addr
	// Underlay is the index of the interface the outer packets leave by.
	Underlay int
	MAC      MAC
	// MTU is the device's: the underlay's less TunnelOverhead. 0: the
	// underlay's is not known, and any will do.
	MTU int
	// Addr is this host's VTEP address (/32 on the device), so that traffic
	// the host itself sends into the tunnel comes from an address of its own
	// block and the answer returns through the tunnel. Zero: the node holds
	// no block and the device has no address.
	Addr netip.Addr
	// Addr6 is this host's IPv6 VTEP address (/128 on the device), the
	// first of its IPv6 block, for the same reason, on a dual-stack node
	// with a peer's IPv6 block over VXLAN. Zero: none.
	Addr6 netip.Addr
}

// TunnelState is the device named TunnelName as found in the kernel.
type TunnelState struct {
	// Kind is the link type; anything but "vxlan" is someone else's
	// device with our name, which is left alone.
	Kind     string
	Index    int
	Up       bool
	Learning bool
	Tunnel   Tunnel // Addr and Addr6 unused: see Addrs
	// Addrs are the device's addresses, but for its IPv6 link-local one
	// (the kernel's).
	Addrs []netip.Prefix
}

// Neighbour is a neighbour entry on the VXLAN device: a peer's VTEP address
// and the peer's VTEP MAC.
type Neighbour struct {
	IP        netip.Addr
	MAC       MAC
	Permanent bool
}

// FDBEntry is a forwarding entry on the VXLAN device: frames for MAC are
// sent in UDP to Dst, the peer's host address.
type FDBEntry struct {
	MAC MAC
	Dst netip.Addr
}

// TunnelKernel is what the Reconciler asks of the host for the VXLAN path.
// The device, and so every neighbour and FDB entry on it, is Grapevine's;
// nothing outside it is ever touched.
type TunnelKernel interface {
	// Tunnel returns the device named TunnelName, or an error wrapping
	// ErrLinkNotFound.
	Tunnel() (TunnelState, error)
	// AddTunnel creates the device, down and without addresses, with
	// learning off.
	AddTunnel(t Tunnel) error
	// DeleteTunnel removes the device (and with it its routes, neighbours
	// and FDB entries) if it exists and is a VXLAN device.
	DeleteTunnel() error
	SetTunnelUp() error
	AddTunnelAddr(p netip.Prefix) error
	DeleteTunnelAddr(p netip.Prefix) error
	// TunnelEntries lists the device's IPv4 and IPv6 neighbours and its
	// FDB.
	TunnelEntries() ([]Neighbour, []FDBEntry, error)
	// SetNeighbour adds or replaces a permanent neighbour entry.
	SetNeighbour(n Neighbour) error
	DeleteNeighbour(n Neighbour) error
	// SetFDB adds or replaces a permanent FDB entry.
	SetFDB(f FDBEntry) error
	DeleteFDB(f FDBEntry) error
}

// ErrTunnelNotUsable is a VXLAN peer's error when the device could not be
// set up.
var ErrTunnelNotUsable = errors.New("VXLAN device is not usable")

// DesiredTunnel is the device this host should have for d, and false when
// no peer is to be reached over VXLAN. It is a pure function: a peer counts
// when it takes PathVXLAN and nothing but the device stands in the way of
// its route.
func DesiredTunnel(d Desired, link Link) (Tunnel, bool) {
	wanted, wanted6 := false, false
	anyTunnel := Link{Index: -1, Up: true}
	for _, p := range d.Peers {
		if ChoosePath(d.Encapsulation, p.Via, link).Path == PathVXLAN && checkTunnelPeer(p, d, link, anyTunnel) == nil {
			wanted = true
			break
		}
	}
	_, paths6 := peerRoutes6(d, link, anyTunnel, nil)
	for _, p := range paths6 {
		wanted6 = wanted6 || p.Path == PathVXLAN
	}
	// On an IPv6 underlay the device's MAC follows from the node's block:
	// none before it holds one.
	if !wanted && !wanted6 || d.HostIP.Is6() && !d.OwnBlock.IsValid() {
		return Tunnel{}, false
	}
	t := Tunnel{VNI: TunnelVNI, Port: TunnelPort, Local: d.HostIP, Underlay: link.Index, MAC: vtepMAC(d.HostIP, d.OwnBlock)}
	if overhead := TunnelOverheadFor(d.HostIP); link.MTU > overhead {
		t.MTU = link.MTU - overhead
	}
	if d.OwnBlock.IsValid() {
		t.Addr = VTEPAddr(d.OwnBlock)
	}
	if wanted6 && d.OwnBlock6.IsValid() {
		t.Addr6 = VTEPAddr(d.OwnBlock6)
	}
	return t, true
}

// checkTunnelPeer is checkPeer for a peer reached over VXLAN: the same
// checks except that the host address need not be directly connected, and
// the device must be there.
func checkTunnelPeer(p PeerRoute, d Desired, link, tunnel Link) error {
	if err := checkPeer(p, d.OwnBlock, link); err != nil && !errors.Is(err, ErrNotConnected) {
		return err
	}
	// The underlay is IPv4, or IPv6 on an IPv6-only node (an IPv6 pool):
	// the peer's host address is of this host's family.
	underlay6, family := d.Pool.Addr().Is6(), "IPv4"
	if underlay6 {
		family = "IPv6"
	}
	switch {
	case p.Via.Is4() == underlay6 || p.Via.Is4In6() || !p.Via.IsGlobalUnicast():
		return fmt.Errorf("%w: VXLAN needs a unicast %s host address, not %s", ErrInvalidPeer, family, p.Via)
	case d.Pool.IsValid() && d.Pool.Contains(p.Via):
		// Its packets would be routed into the tunnel they travel in.
		return fmt.Errorf("%w: host address %s is inside the pod pool %s", ErrInvalidPeer, p.Via, d.Pool)
	case d.HostIP.Is4() == underlay6 || !d.HostIP.IsValid():
		return fmt.Errorf("%w: this host's address %s cannot be the local end of VXLAN", ErrTunnelNotUsable, d.HostIP)
	case d.HostIP == p.Via:
		return fmt.Errorf("%w: %s is this host's own address", ErrInvalidPeer, p.Via)
	case tunnel.Index == 0:
		return fmt.Errorf("%w: %s does not exist", ErrTunnelNotUsable, TunnelName)
	case !tunnel.Up:
		return fmt.Errorf("%w: %s is down", ErrTunnelNotUsable, TunnelName)
	}
	return nil
}

// checkPeerOnPath checks a peer for the path it takes.
func checkPeerOnPath(p PeerRoute, d Desired, link, tunnel Link) error {
	if ChoosePath(d.Encapsulation, p.Via, link).Path == PathVXLAN {
		return checkTunnelPeer(p, d, link, tunnel)
	}
	err := checkPeer(p, d.OwnBlock, link)
	if errors.Is(err, ErrNotConnected) && d.Encapsulation == EncapsulationNever {
		return fmt.Errorf("%w; --encapsulation=never: cross-subnet would reach it over VXLAN", err)
	}
	return err
}

// peerRoute is the route for a peer that passed checkPeerOnPath.
func peerRoute(p PeerRoute, d Desired, link, tunnel Link) Route {
	if ChoosePath(d.Encapsulation, p.Via, link).Path == PathVXLAN {
		return Route{Dst: p.Block, Via: VTEPAddr(p.Block), LinkIndex: tunnel.Index, OnLink: true, Metric: routeMetric(p.Block)}
	}
	return Route{Dst: p.Block, Via: p.Via, LinkIndex: link.Index, Metric: routeMetric(p.Block)}
}

// TunnelPlan is what to do to the device.
type TunnelPlan struct {
	// Delete removes the device; with Create, to build it anew.
	Delete bool
	Create bool
	SetUp  bool
	// AddAddrs and DeleteAddrs fix the device's addresses.
	AddAddrs    []netip.Prefix
	DeleteAddrs []netip.Prefix
}

// Empty reports whether the plan changes nothing.
func (p TunnelPlan) Empty() bool {
	return !p.Delete && !p.Create && !p.SetUp && len(p.AddAddrs) == 0 && len(p.DeleteAddrs) == 0
}

// PlanTunnel compares the device wanted (want, if wanted) with the one in
// the kernel (have, if exists). It is a pure function. A device whose VXLAN
// settings differ is deleted and created again: the kernel cannot change
// them in place. A device of another kind with our name is an error and is
// left alone.
func PlanTunnel(want Tunnel, wanted bool, have TunnelState, exists bool) (TunnelPlan, error) {
	switch {
	case exists && have.Kind != "vxlan":
		return TunnelPlan{}, fmt.Errorf("%w: a %s device named %s exists; it is not Grapevine's, remove or rename it", ErrTunnelNotUsable, have.Kind, TunnelName)
	case !wanted && exists:
		return TunnelPlan{Delete: true}, nil
	case !wanted:
		return TunnelPlan{}, nil
	}
	wantAddrs := []netip.Prefix(nil)
	for _, a := range []netip.Addr{want.Addr, want.Addr6} {
		if a.IsValid() {
			wantAddrs = append(wantAddrs, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	cfg := want
	cfg.Addr, cfg.Addr6 = netip.Addr{}, netip.Addr{}
	if cfg.MTU == 0 {
		cfg.MTU = have.Tunnel.MTU
	}
	// A changed MTU (the uplink's changed) rebuilds the device like any
	// other setting: the kernel does not pass an underlay's new MTU on
	// to the VXLAN devices on it.
	if !exists || have.Tunnel != cfg || have.Learning {
		return TunnelPlan{Delete: exists, Create: true, SetUp: true, AddAddrs: wantAddrs}, nil
	}
	plan := TunnelPlan{SetUp: !have.Up}
	for _, a := range wantAddrs {
		if !slices.Contains(have.Addrs, a) {
			plan.AddAddrs = append(plan.AddAddrs, a)
		}
	}
	for _, a := range have.Addrs {
		if !slices.Contains(wantAddrs, a) {
			plan.DeleteAddrs = append(plan.DeleteAddrs, a)
		}
	}
	return plan, nil
}

// TunnelPeer is a peer reached over VXLAN, as its entries on the device
// describe it.
type TunnelPeer struct {
	VTEP   netip.Addr
	MAC    MAC
	HostIP netip.Addr
}

// tunnelPeerOf derives a VXLAN peer's entries from what gossip says of it.
func tunnelPeerOf(p PeerRoute) TunnelPeer {
	return TunnelPeer{VTEP: VTEPAddr(p.Block), MAC: vtepMAC(p.Via, p.Block), HostIP: p.Via}
}

// tunnelPeers6 is the entries of the peers whose IPv6 block goes over
// VXLAN (see choosePath6): the IPv6 VTEP, the first address of the block,
// at the peer's VTEP MAC, and the FDB entry of that MAC, which the peer's
// IPv4 block over VXLAN needs alike. It is a pure function.
func tunnelPeers6(d Desired, link, tunnel Link, peerErrs map[string]error) []TunnelPeer {
	_, paths := peerRoutes6(d, link, tunnel, peerErrs)
	hostIP := make(map[string]netip.Addr, len(d.Peers))
	for _, p := range d.Peers {
		hostIP[p.Peer] = p.Via
	}
	var peers []TunnelPeer
	for _, p := range d.Peers6 {
		if paths[p.Peer].Path == PathVXLAN {
			h := hostIP[p.Peer]
			peers = append(peers, TunnelPeer{VTEP: VTEPAddr(p.Block), MAC: VTEPMAC(h), HostIP: h})
		}
	}
	return peers
}

// DiffTunnelEntries returns the neighbour and FDB entries to set and to
// delete so that the device holds exactly one permanent neighbour (VTEP ->
// MAC) and one FDB entry (MAC -> host IP) per peer. Every entry on the device
// is Grapevine's, so anything else there goes. It is a pure function; the
// results are sorted.
func DiffTunnelEntries(peers []TunnelPeer, neighs []Neighbour, fdb []FDBEntry) (setN, delN []Neighbour, setF, delF []FDBEntry) {
	wantN := make(map[netip.Addr]Neighbour, len(peers))
	wantF := make(map[MAC]FDBEntry, len(peers))
	for _, p := range peers {
		wantN[p.VTEP] = Neighbour{IP: p.VTEP, MAC: p.MAC, Permanent: true}
		wantF[p.MAC] = FDBEntry{MAC: p.MAC, Dst: p.HostIP}
	}
	haveN := make(map[netip.Addr]bool, len(neighs))
	for _, n := range neighs {
		switch w, ok := wantN[n.IP]; {
		case !ok:
			delN = append(delN, n)
		case n == w:
			haveN[n.IP] = true
		}
	}
	for ip, n := range wantN {
		if !haveN[ip] {
			setN = append(setN, n)
		}
	}
	haveF := make(map[MAC]bool, len(fdb))
	for _, f := range fdb {
		switch w, ok := wantF[f.MAC]; {
		case !ok || f.Dst != w.Dst:
			// A second destination for a MAC would duplicate its frames;
			// the set below replaces the one kept.
			delF = append(delF, f)
		default:
			haveF[f.MAC] = true
		}
	}
	for m, f := range wantF {
		if !haveF[m] {
			setF = append(setF, f)
		}
	}
	byIP := func(a, b Neighbour) int { return cmp.Or(a.IP.Compare(b.IP), slices.Compare(a.MAC[:], b.MAC[:])) }
	byMAC := func(a, b FDBEntry) int { return cmp.Or(slices.Compare(a.MAC[:], b.MAC[:]), a.Dst.Compare(b.Dst)) }
	slices.SortFunc(setN, byIP)
	slices.SortFunc(delN, byIP)
	slices.SortFunc(setF, byMAC)
	slices.SortFunc(delF, byMAC)
	return setN, delN, setF, delF
}
