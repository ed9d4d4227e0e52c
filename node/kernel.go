package node

import (
	"errors"
	"net/netip"
)

// Kernel is everything the Reconciler asks of the host. NetlinkKernel is the
// real one; FakeKernel keeps the same state in memory so the agent and
// simulations of many nodes run without privileges.
type Kernel interface {
	// Link resolves an interface by name. A missing interface yields an
	// error wrapping ErrLinkNotFound.
	Link(name string) (Link, error)
	// Routes lists the main table's routes carrying RouteProtocol.
	Routes() ([]Route, error)
	// AddRoute installs r with RouteProtocol where no route with the same
	// destination and metric exists. If one does (someone else's), it fails
	// with an error wrapping ErrRouteExists and leaves it alone.
	AddRoute(r Route) error
	// ReplaceRoute overwrites our route with the same destination and
	// metric by r.
	ReplaceRoute(r Route) error
	// DeleteRoute removes r, which must carry RouteProtocol.
	DeleteRoute(r Route) error
	// EnsureForwarding turns on forwarding for family (ForwardingSysctl),
	// writing only if it is off; enabled reports that it was off and the
	// call turned it on.
	EnsureForwarding(family Family) (enabled bool, err error)
	// EnsureMasquerade makes table "ip grapevine" (for an IPv4 pool) or
	// "ip6 grapevine" (for an IPv6 one) masquerade traffic from pool to
	// outside pool, rebuilding the table only if it differs.
	EnsureMasquerade(pool netip.Prefix) error
	// RemoveMasquerade deletes family's grapevine table if it exists.
	RemoveMasquerade(family Family) error
	// TunnelKernel is the VXLAN device and its entries.
	TunnelKernel
	// PodKernel is the pods' host sides.
	PodKernel
	// ForwardKernel is the filter tables' FORWARD chains.
	ForwardKernel
}

var (
	// ErrLinkNotFound means the interface does not exist (yet).
	ErrLinkNotFound = errors.New("link not found")
	// ErrRouteExists means another route (not Grapevine's) holds the slot.
	ErrRouteExists = errors.New("a route with another protocol already exists for this destination")
)

// ForwardingSysctl is the sysctl that turns forwarding on for family.
func ForwardingSysctl(family Family) string {
	if family == IPv6 {
		return "net.ipv6.conf.all.forwarding"
	}
	return "net.ipv4.ip_forward"
}

// NFTTable is the nftables table (families ip and ip6) Grapevine owns.
const NFTTable = "grapevine"
