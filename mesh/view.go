package mesh

import "net/netip"

// MemberState is a member's liveness as memberlist sees it.
type MemberState int

const (
	Alive MemberState = iota
	Suspect
	Dead
	Left
)

func (s MemberState) String() string {
	switch s {
	case Alive:
		return "alive"
	case Suspect:
		return "suspect"
	case Dead:
		return "dead"
	case Left:
		return "left"
	}
	return "unknown"
}

// live reports whether a member in state s may hold and route a block.
func (s MemberState) live() bool { return s == Alive || s == Suspect }

// View is a snapshot of this node and the cluster as this node sees it.
// A block appears at most once in a View (this node's Block included).
type View struct {
	Self   string
	HostIP netip.Addr
	Block  netip.Prefix // zero: holds none
	Ready  bool
	// Reason says why the node is not ready.
	Reason string
	// Degraded is set after this node lost its block to an older claim: its
	// existing pods hold addresses of a block it no longer owns.
	Degraded string
	Members  []Member // every known member except self, sorted by name
}

// Member is one peer in a View.
type Member struct {
	Name   string
	Addr   netip.Addr // gossip address
	HostIP netip.Addr
	// Block is the block to route to the member: zero if it holds none, lost
	// a conflict, advertises invalid metadata, or is dead or gone.
	Block netip.Prefix
	State MemberState
}
