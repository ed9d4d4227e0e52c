package node

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// RouteProtocol is the rtnetlink protocol number (rtm_protocol) carried by
// every route Grapevine installs; `ip route` shows it as "proto 74". Routes
// with any other protocol are never changed or deleted.
const RouteProtocol = 74

// UnreachableMetric is the metric of the unreachable route for the whole
// pool: the highest a route can carry short of the u32 limit on 32-bit
// platforms, so any route to the pool or one of its blocks, of anyone, wins
// over it, while it still keeps pod-addressed packets from following the
// default route out of the host.
const UnreachableMetric = 1<<31 - 1

// IPv6DefaultMetric is the metric the kernel gives an IPv6 route written
// with none (IP6_RT_PRIO_USER): IPv6 routes Grapevine installs carry it
// explicitly, so that the routes the kernel lists back match the desired
// ones.
const IPv6DefaultMetric = 1024

// routeMetric is the metric of the routes Grapevine installs to dst other
// than the unreachable ones: 0 for IPv4, IPv6DefaultMetric for IPv6 (the
// kernel lists an IPv6 route written with metric 0 with that one).
func routeMetric(dst netip.Prefix) int {
	if dst.Addr().Is6() {
		return IPv6DefaultMetric
	}
	return 0
}

// Desired is what the agent wants this host's kernel to look like.
type Desired struct {
	// Iface is the host interface peers are reached through (the seed's em1).
	// It is looked up by name on every reconcile, since it may be recreated.
	Iface string
	// OwnBlock is the block this node holds; it gets a blackhole route so
	// traffic to unallocated pod addresses is dropped here instead of
	// following the default route. Zero: no block, no blackhole.
	OwnBlock netip.Prefix
	// Pool is the pod pool: IPv4, or IPv6 on an IPv6-only node (whose
	// OwnBlock, Peers and HostIP are IPv6 too, routed as IPv4 ones are,
	// with IPv6DefaultMetric). Traffic from it to outside it is masqueraded,
	// and the pool gets an unreachable route of lowest precedence: a packet
	// for a block nobody routes (a withdrawn peer, a block not handed out)
	// fails at once with an ICMP error on this host instead of leaving
	// through the default route with a pod address. Zero: neither.
	Pool netip.Prefix
	// OwnBlock6 and Pool6 are the IPv6 twins of OwnBlock and Pool on a
	// dual-stack node (zero otherwise): a blackhole for the one, an
	// unreachable route for the other, IPv6 forwarding, and with
	// Masquerade, Pool6's own masquerade (table ip6 grapevine).
	OwnBlock6  netip.Prefix
	Pool6      netip.Prefix
	Masquerade bool
	Peers      []PeerRoute
	// Peers6 are the peers' IPv6 blocks and IPv6 host addresses, named
	// like their Peers entries; Via is zero where this host or the peer
	// has no IPv6 address. One is routed `<block6> via <host6> dev
	// <iface>` when the host address is on an IPv6 network of the
	// interface, otherwise over VXLAN on the IPv4 underlay unless
	// encapsulation is never (see choosePath6); a block with neither is
	// answered by the pool6's unreachable route.
	Peers6 []PeerRoute
	// Encapsulation chooses the peers reached over VXLAN (see ChoosePath).
	Encapsulation Encapsulation
	// HostIP is this host's address on Iface: the VXLAN device's local
	// address, from which its MAC is derived (VTEPMAC).
	HostIP netip.Addr
}

// PeerRoute says: reach Block through the peer host at Via.
type PeerRoute struct {
	Peer  string
	Block netip.Prefix
	Via   netip.Addr
}

// Route is one route in the main table carrying RouteProtocol: a unicast
// route to Dst via a gateway on link LinkIndex, a blackhole, or an
// unreachable route.
type Route struct {
	Dst         netip.Prefix
	Blackhole   bool
	Unreachable bool
	Via         netip.Addr // zero for a blackhole or an unreachable route
	LinkIndex   int        // zero for a blackhole or an unreachable route
	// OnLink says the next hop is on the link whatever its addresses:
	// the VXLAN path's `via <peer VTEP> dev gv.vxlan onlink`.
	OnLink bool
	// Metric is the route's priority: 0 for the routes Grapevine installs
	// (IPv6DefaultMetric for IPv6 ones), but UnreachableMetric for the
	// pools' unreachable routes. Any other
	// found in the kernel is a leftover to delete, since a replace with
	// the desired metric would not overwrite it.
	Metric int
}

// Unicast reports whether r leads to a next hop (a peer route), rather than
// dropping what it matches.
func (r Route) Unicast() bool { return !r.Blackhole && !r.Unreachable }

// String reads like `ip route` output, with the link's index for its name.
func (r Route) String() string {
	s := fmt.Sprintf("%s via %s ifindex %d", r.Dst, r.Via, r.LinkIndex)
	switch {
	case r.Blackhole:
		s = "blackhole " + r.Dst.String()
	case r.Unreachable:
		s = "unreachable " + r.Dst.String()
	}
	if r.OnLink {
		s += " onlink"
	}
	if r.Metric != 0 {
		s += fmt.Sprintf(" metric %d", r.Metric)
	}
	return s
}

// Link is what a reconcile needs to know about the host interface.
type Link struct {
	Name  string
	Index int
	Up    bool
	// Addrs are the interface's addresses with their prefix lengths
	// (172.16.254.1/24): their networks are the directly connected ones.
	Addrs []netip.Prefix
	// MTU is the interface's MTU; 0: not known (a fake's link).
	MTU int
}

// Errors a peer can get in Result.PeerErrors instead of a route.
var (
	ErrNotConnected   = errors.New("next hop is not on a network directly connected to the interface")
	ErrOverlapsOwn    = errors.New("block overlaps this node's own block")
	ErrOverlapsPeer   = errors.New("block overlaps another peer's block")
	ErrInvalidPeer    = errors.New("invalid peer route")
	ErrLinkNotUsable  = errors.New("interface is not usable")
	errFamilyMismatch = errors.New("next hop and block are of different address families")
)

// DesiredRoutes turns d into the routes the main table should hold, given the
// resolved interface and VXLAN device (zero when there is none). A peer
// that cannot be routed safely gets an entry in peerErrs and no route; the
// other peers are unaffected. It is a pure function.
func DesiredRoutes(d Desired, link, tunnel Link) (routes []Route, peerErrs map[string]error) {
	peerErrs = make(map[string]error)
	if d.Pool.IsValid() {
		routes = append(routes, Route{Dst: d.Pool.Masked(), Unreachable: true, Metric: UnreachableMetric})
	}
	if d.OwnBlock.IsValid() {
		routes = append(routes, Route{Dst: d.OwnBlock.Masked(), Blackhole: true, Metric: routeMetric(d.OwnBlock)})
	}
	if d.Pool6.IsValid() {
		routes = append(routes, Route{Dst: d.Pool6.Masked(), Unreachable: true, Metric: UnreachableMetric})
	}
	if d.OwnBlock6.IsValid() {
		routes = append(routes, Route{Dst: d.OwnBlock6.Masked(), Blackhole: true, Metric: IPv6DefaultMetric})
	}
	candidates := make([]PeerRoute, 0, len(d.Peers))
	for _, p := range d.Peers {
		if err := checkPeerOnPath(p, d, link, tunnel); err != nil {
			peerErrs[p.Peer] = err
			continue
		}
		candidates = append(candidates, p)
	}
	for _, pair := range overlappingPeers(candidates) {
		a, b := pair[0], pair[1]
		peerErrs[a.Peer] = fmt.Errorf("%w: %s overlaps %s of %s", ErrOverlapsPeer, a.Block, b.Block, b.Peer)
		peerErrs[b.Peer] = fmt.Errorf("%w: %s overlaps %s of %s", ErrOverlapsPeer, b.Block, a.Block, a.Peer)
	}
	for _, p := range candidates {
		if _, bad := peerErrs[p.Peer]; !bad {
			routes = append(routes, peerRoute(p, d, link, tunnel))
		}
	}
	routes6, _ := peerRoutes6(d, link, tunnel, peerErrs)
	return append(routes, routes6...), peerErrs
}

// PeerPaths6 is the IPv6 path of every peer of d.Peers6 and why: PathDirect
// or PathVXLAN for a routed IPv6 block (see choosePath6), PathNone with the
// reason for one without a route (the pool6's unreachable route answers
// for it). tunnel is the VXLAN device (zero when there is none), peerErrs
// the IPv4 peers' errors, as DesiredRoutes returns them. It is a pure
// function.
func PeerPaths6(d Desired, link, tunnel Link, peerErrs map[string]error) map[string]PeerPath {
	_, paths := peerRoutes6(d, link, tunnel, peerErrs)
	return paths
}

// peerRoutes6 is the routes to the peers' IPv6 blocks and the path of
// each (see PeerPaths6). Neither side of an overlap is routed, as for IPv4.
func peerRoutes6(d Desired, link, tunnel Link, peerErrs map[string]error) ([]Route, map[string]PeerPath) {
	peers4 := make(map[string]PeerRoute, len(d.Peers))
	for _, p := range d.Peers {
		peers4[p.Peer] = p
	}
	paths := make(map[string]PeerPath, len(d.Peers6))
	chosen := make(map[string]Route, len(d.Peers6))
	var candidates []PeerRoute
	for _, p := range d.Peers6 {
		r, path := choosePath6(p, peers4[p.Peer], d, link, tunnel, peerErrs[p.Peer])
		paths[p.Peer] = path
		if path.Path != PathNone {
			chosen[p.Peer] = r
			candidates = append(candidates, p)
		}
	}
	for _, pair := range overlappingPeers(candidates) {
		a, b := pair[0], pair[1]
		paths[a.Peer] = PeerPath{PathNone, fmt.Sprintf("%v: %s overlaps %s of %s", ErrOverlapsPeer, a.Block, b.Block, b.Peer)}
		paths[b.Peer] = PeerPath{PathNone, fmt.Sprintf("%v: %s overlaps %s of %s", ErrOverlapsPeer, b.Block, a.Block, a.Peer)}
	}
	var routes []Route
	for _, p := range candidates {
		if paths[p.Peer].Path != PathNone {
			routes = append(routes, chosen[p.Peer])
		}
	}
	return routes, paths
}

// choosePath6 picks the path of p, a peer's IPv6 block, whose IPv4 peer is
// p4 (with error err4), and the route it takes. It is direct, `via <peer
// host IPv6> dev <iface>`, when both hosts have IPv6 on a shared network of
// the interface (and encapsulation is not always). Otherwise, unless
// encapsulation is never, it goes over the VXLAN device on the IPv4
// underlay, as cross-subnet chooses for IPv4: `<block6> via <peer's IPv6
// VTEP> dev gv.vxlan onlink`, the first address of the block, with the
// neighbour and FDB entries of the peer's IPv4 VTEP (see tunnelPeers6).
// Either way the IPv6 block must be a valid block of Pool6 clear of this
// node's, and the peer's IPv4 block not in doubt.
func choosePath6(p, p4 PeerRoute, d Desired, link, tunnel Link, err4 error) (Route, PeerPath) {
	if err := checkBlock6(p, d, err4); err != nil {
		return Route{}, PeerPath{PathNone, err.Error()}
	}
	direct, errDirect := peerRoute6(p, d, link)
	if errDirect == nil && d.Encapsulation != EncapsulationAlways {
		return direct, ChoosePath(EncapsulationNever, p.Via, link)
	}
	var why string
	switch {
	case errDirect == nil:
		why = "encapsulation is always"
	case d.Encapsulation == EncapsulationNever:
		return Route{}, PeerPath{PathNone, errDirect.Error() + "; --encapsulation=never: cross-subnet would reach it over VXLAN"}
	default:
		why = errDirect.Error()
	}
	if !p4.Block.IsValid() {
		return Route{}, PeerPath{PathNone, why + "; no IPv4 route to carry it over VXLAN"}
	}
	if err := checkTunnelPeer(p4, d, link, tunnel); err != nil {
		return Route{}, PeerPath{PathNone, why + "; not over VXLAN either: " + err.Error()}
	}
	r := Route{Dst: p.Block, Via: VTEPAddr(p.Block), LinkIndex: tunnel.Index, OnLink: true, Metric: IPv6DefaultMetric}
	return r, PeerPath{PathVXLAN, fmt.Sprintf("%s; over VXLAN to %s", why, p4.Via)}
}

// Reasons a peer's IPv6 block has no direct route.
var (
	ErrNoPool6        = errors.New("this host has no IPv6 pool")
	ErrNoIPv6Underlay = errors.New("this host or the peer has no IPv6 address to route via")
)

// checkBlock6 accepts p's IPv6 block for a route of either path: inside
// Pool6 and, for a peer whose IPv4 block is not in doubt (err4 is not an
// overlap or an invalid peer: the IPv6 block follows from the IPv4 one),
// clear of this node's IPv6 block.
func checkBlock6(p PeerRoute, d Desired, err4 error) error {
	switch {
	case !d.Pool6.IsValid():
		return ErrNoPool6
	case !p.Block.IsValid() || !p.Block.Addr().Is6() || p.Block.Addr().Is4In6() || p.Block.Masked() != p.Block:
		return fmt.Errorf("%w: IPv6 block %s", ErrInvalidPeer, p.Block)
	case p.Block.Bits() < d.Pool6.Bits() || !d.Pool6.Contains(p.Block.Addr()):
		return fmt.Errorf("%w: IPv6 block %s is outside pool6 %s", ErrInvalidPeer, p.Block, d.Pool6)
	case errors.Is(err4, ErrOverlapsPeer) || errors.Is(err4, ErrOverlapsOwn) || errors.Is(err4, ErrInvalidPeer):
		return fmt.Errorf("its IPv4 block, which the IPv6 one follows from, is not routed: %w", err4)
	case d.OwnBlock6.IsValid() && d.OwnBlock6.Overlaps(p.Block):
		return fmt.Errorf("%w: %s overlaps %s", ErrOverlapsOwn, p.Block, d.OwnBlock6)
	}
	return nil
}

// peerRoute6 is the direct route to p, a peer's IPv6 block that passed
// checkBlock6: via its host address on a network of the interface.
// Otherwise the error says why not.
func peerRoute6(p PeerRoute, d Desired, link Link) (Route, error) {
	switch {
	case !p.Via.IsValid():
		return Route{}, ErrNoIPv6Underlay
	case !p.Via.IsGlobalUnicast():
		return Route{}, fmt.Errorf("%w: IPv6 host address %s is not global unicast", ErrInvalidPeer, p.Via)
	}
	if err := checkPeer(p, d.OwnBlock6, link); err != nil {
		return Route{}, err
	}
	return Route{Dst: p.Block, Via: p.Via, LinkIndex: link.Index, Metric: IPv6DefaultMetric}, nil
}

func checkPeer(p PeerRoute, own netip.Prefix, link Link) error {
	switch {
	case !p.Block.IsValid() || !p.Via.IsValid():
		return fmt.Errorf("%w: block %s via %s", ErrInvalidPeer, p.Block, p.Via)
	case p.Block.Masked() != p.Block:
		return fmt.Errorf("%w: block %s is not a network address", ErrInvalidPeer, p.Block)
	case p.Block.Addr().Is4() != p.Via.Is4():
		return fmt.Errorf("%w: %s via %s", errFamilyMismatch, p.Block, p.Via)
	case own.IsValid() && own.Overlaps(p.Block):
		return fmt.Errorf("%w: %s overlaps %s", ErrOverlapsOwn, p.Block, own)
	case link.Index == 0:
		return fmt.Errorf("%w: %s does not exist", ErrLinkNotUsable, link.Name)
	case !link.Up:
		return fmt.Errorf("%w: %s is down", ErrLinkNotUsable, link.Name)
	}
	for _, a := range link.Addrs {
		if a.Addr() == p.Via {
			return fmt.Errorf("%w: %s is this host's own address on %s", ErrInvalidPeer, p.Via, link.Name)
		}
	}
	for _, a := range link.Addrs {
		if a.Masked().Contains(p.Via) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s is not in any network of %s %v", ErrNotConnected, p.Via, link.Name, link.Addrs)
}

// overlappingPeers returns the pairs of peers whose blocks overlap (or are
// equal). Neither side of an overlap is routed: mesh
// guarantees a block appears once, so an overlap is a bug or an attack, and
// routing one side would pick a winner that gossip did not pick.
func overlappingPeers(peers []PeerRoute) [][2]PeerRoute {
	valid := make([]PeerRoute, 0, len(peers))
	for _, p := range peers {
		if p.Block.IsValid() {
			valid = append(valid, p)
		}
	}
	slices.SortFunc(valid, func(a, b PeerRoute) int {
		return cmp.Or(a.Block.Addr().Compare(b.Block.Addr()), cmp.Compare(a.Block.Bits(), b.Block.Bits()))
	})
	// Prefixes either nest or are disjoint; sorted by address, a prefix
	// overlaps an earlier one exactly when the widest earlier one still
	// covering addresses contains its start.
	var pairs [][2]PeerRoute
	widest := -1
	for i, p := range valid {
		if widest >= 0 && valid[widest].Block.Overlaps(p.Block) {
			pairs = append(pairs, [2]PeerRoute{valid[widest], p})
			if p.Block.Bits() < valid[widest].Block.Bits() {
				widest = i
			}
			continue
		}
		widest = i
	}
	return pairs
}

// routeKey identifies a route slot in the kernel's main table: a replace
// with the same key overwrites it.
type routeKey struct {
	dst    netip.Prefix
	metric int
}

func (r Route) key() routeKey { return routeKey{r.Dst, r.Metric} }

// Diff returns the routes to replace and to delete so that actual (our
// routes in the kernel) becomes desired. A route in actual whose slot a
// replace in toAdd overwrites is not deleted. Of several desired routes for
// one slot (DesiredRoutes never makes them) the lowest wins. Both results are sorted by destination, so the order of the inputs
// does not matter. It is a pure function.
func Diff(desired, actual []Route) (toAdd, toDel []Route) {
	want := make(map[routeKey]Route, len(desired))
	for _, r := range desired {
		if prev, dup := want[r.key()]; !dup || compareRoutes(r, prev) < 0 {
			want[r.key()] = r
		}
	}
	satisfied := make(map[routeKey]bool, len(actual))
	for _, a := range actual {
		w, ok := want[a.key()]
		switch {
		case !ok:
			toDel = append(toDel, a)
		case a == w:
			satisfied[a.key()] = true
		}
		// Otherwise the slot is ours but wrong: the replace fixes it.
	}
	for k, r := range want {
		if !satisfied[k] {
			toAdd = append(toAdd, r)
		}
	}
	slices.SortFunc(toAdd, compareRoutes)
	slices.SortFunc(toDel, compareRoutes)
	toDel = slices.Compact(toDel)
	return toAdd, toDel
}

func compareRoutes(a, b Route) int {
	return cmp.Or(
		a.Dst.Addr().Compare(b.Dst.Addr()),
		cmp.Compare(a.Dst.Bits(), b.Dst.Bits()),
		cmp.Compare(a.Metric, b.Metric),
		compareBool(a.Blackhole, b.Blackhole),
		compareBool(a.Unreachable, b.Unreachable),
		compareBool(a.OnLink, b.OnLink),
		a.Via.Compare(b.Via),
		cmp.Compare(a.LinkIndex, b.LinkIndex),
	)
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}
