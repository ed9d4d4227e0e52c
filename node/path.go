package node

import (
	"fmt"
	"net/netip"
)

// Encapsulation says which peers are reached through the VXLAN device.
type Encapsulation int

const (
	// EncapsulationNever routes every peer directly; a peer whose host IP
	// is not on a network of the interface gets ErrNotConnected. It is the
	// zero value: a Desired state that says nothing encapsulates nothing.
	EncapsulationNever Encapsulation = iota
	// EncapsulationCrossSubnet routes a peer directly when its host IP is
	// on a network directly connected to the interface, and over VXLAN
	// otherwise.
	EncapsulationCrossSubnet
	// EncapsulationAlways routes every peer over VXLAN.
	EncapsulationAlways
)

// ParseEncapsulation reads the --encapsulation flag's value.
func ParseEncapsulation(s string) (Encapsulation, error) {
	for _, e := range []Encapsulation{EncapsulationNever, EncapsulationCrossSubnet, EncapsulationAlways} {
		if e.String() == s {
			return e, nil
		}
	}
	return 0, fmt.Errorf("encapsulation %q: want cross-subnet, never or always", s)
}

func (e Encapsulation) String() string {
	switch e {
	case EncapsulationNever:
		return "never"
	case EncapsulationCrossSubnet:
		return "cross-subnet"
	case EncapsulationAlways:
		return "always"
	}
	return fmt.Sprintf("Encapsulation(%d)", int(e))
}

// Path is how packets for a peer's block leave this host.
type Path string

const (
	// PathDirect: <block> via <peer host IP> dev <iface>, the seed's route.
	PathDirect Path = "direct"
	// PathVXLAN: <block> via <peer VTEP> dev gv.vxlan onlink, encapsulated
	// in UDP to the peer's host IP.
	PathVXLAN Path = "vxlan"
	// PathNone: no route (an IPv6 block without a usable path; see
	// PeerPaths6).
	PathNone Path = "none"
)

// PeerPath is the path chosen for one peer and why, in words an operator
// can check against `ip addr` (status shows it).
type PeerPath struct {
	Path Path
	Why  string
}

// ChoosePath picks the path to a peer whose host address is hostIP, given
// the mode and the interface peers are reached through. It is a pure
// function. A peer is direct only when hostIP lies in a network of one of
// the interface's addresses: that is what lets `via hostIP dev iface` work
// without a router in between.
func ChoosePath(mode Encapsulation, hostIP netip.Addr, link Link) PeerPath {
	var networks []netip.Prefix // for the reason: IPv4 only, as peers are
	for _, a := range link.Addrs {
		if a.Addr().Is4() == hostIP.Is4() {
			networks = append(networks, a.Masked())
		}
	}
	var connected netip.Prefix
	for _, a := range link.Addrs {
		if a.Masked().Contains(hostIP) {
			connected = a.Masked()
			break
		}
	}
	switch {
	case mode == EncapsulationAlways:
		return PeerPath{PathVXLAN, "encapsulation is always"}
	case connected.IsValid():
		return PeerPath{PathDirect, fmt.Sprintf("%s is on %s's network %s", hostIP, link.Name, connected)}
	case mode == EncapsulationCrossSubnet:
		return PeerPath{PathVXLAN, fmt.Sprintf("%s is not on %s's networks %v", hostIP, link.Name, networks)}
	}
	return PeerPath{PathDirect, fmt.Sprintf("%s is not on %s's networks %v and encapsulation is never", hostIP, link.Name, networks)}
}

// PeerPaths chooses the path of every peer of d (see ChoosePath).
func PeerPaths(d Desired, link Link) map[string]PeerPath {
	paths := make(map[string]PeerPath, len(d.Peers))
	for _, p := range d.Peers {
		paths[p.Peer] = ChoosePath(d.Encapsulation, p.Via, link)
	}
	return paths
}
