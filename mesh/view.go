package mesh

import (
	"net/netip"
	"time"

	"github.com/grapevine-net/grapevine/internal/hostclock"
	"github.com/grapevine-net/grapevine/mesh/ledger"
)

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

// Live reports whether a member in state s is counted in (alive or merely
// suspect) and so may be routed.
func (s MemberState) Live() bool { return s == Alive || s == Suspect }

// View is a snapshot of this node and the cluster as this node sees it.
// A block appears at most once in a View (this node's Block included): every
// block in it is the ledger's assignment.
type View struct {
	Self   string
	ID     ledger.NodeID
	HostIP netip.Addr
	// Block is this node's block per the ledger; zero while it holds none.
	Block netip.Prefix
	// Ready means new pod addresses may be handed out from Block now: the
	// ledger confirmed it within its lease, or the restart rule holds.
	Ready bool
	// Lease is when this node's lease on Block ends, on the host clock;
	// zero without a lease. LeaseRenewed and LeaseEndsAt are the
	// wall-clock times of the claim that granted it and of its end, for
	// people. The agent hands all three to the CNI plugin.
	Lease        hostclock.Instant
	LeaseRenewed time.Time
	LeaseEndsAt  time.Time
	// Reason says why the node is not ready.
	Reason string
	// Degraded is set after this node lost a block it had used: its
	// existing pods hold addresses of a block it no longer owns.
	Degraded string
	// Members is every known member except self, sorted by name, then by
	// node ID: two hosts with one name are two members.
	Members []Member
	// NameConflicts lists every name that live members (this node
	// included) with different node IDs advertise; empty normally.
	NameConflicts []NameConflict
	// Ledger is this node's ledger replica: cluster, role, leader, voters.
	Ledger ledger.Info
	// Restart is what the restart rule made of the block the previous run
	// saved, and RestartReason why it was refused (RestartRefused only).
	Restart       RestartRule
	RestartReason string
}

// RestartRule is what became of the block the previous run saved in
// block.json. Run decides it once, soon after it starts.
type RestartRule int

const (
	// RestartUndecided: Run has not looked at the saved block yet.
	RestartUndecided RestartRule = iota
	// RestartNoBlock: the previous run saved no block this run can use
	// (none, or one outside the pool).
	RestartNoBlock
	// RestartRestored: the saved block is usable without the ledger's
	// word, under the restart rule, for as long as View.Ready says.
	RestartRestored
	// RestartRefused: the restart rule does not apply to the saved block;
	// only the ledger may hand it back.
	RestartRefused
)

func (r RestartRule) String() string {
	switch r {
	case RestartUndecided:
		return "undecided"
	case RestartNoBlock:
		return "no block"
	case RestartRestored:
		return "restored"
	case RestartRefused:
		return "refused"
	}
	return "unknown"
}

// Member is one peer in a View. Gossip knows it by ID; Name is the label
// its metadata carries (memberlist's name, the ID, when the metadata was
// rejected).
type Member struct {
	Name   string
	Addr   netip.Addr // gossip address
	HostIP netip.Addr
	// HostIP6 is the IPv6 host address the member advertises (zero:
	// none), the next hop for its IPv6 block.
	HostIP6 netip.Addr
	ID      ledger.NodeID
	// Advertised is the block the member advertises in its metadata: when
	// set, it must equal the ledger's assignment (Held) for the member to
	// be routed; it never moves a route by itself.
	Advertised netip.Prefix
	// ClusterID is the ledger the member advertises (zero: none yet).
	ClusterID ledger.ClusterID
	// Foreign marks a member of another ledger (founded separately with
	// the same gossip key): listed, never routed.
	Foreign bool
	// Block is the block to route to the member: the ledger's assignment
	// to the member's node ID, only while the member is live and advertises
	// the name, host IP and block the ledger recorded. Zero otherwise.
	Block netip.Prefix
	// Held is the ledger's assignment to the member's node ID, under the
	// name and host IP it advertised last, whether the member is live or
	// not (zero for a foreign member or invalid metadata). A dead or
	// departed member's route is kept on the data path only while Held
	// still names the routed block: a release or reclaim ends it.
	Held  netip.Prefix
	State MemberState
}

// NameConflict is one name that several live nodes advertise, each with
// its own node ID: cloned hosts that kept a host name, typically. Gossip
// keeps them apart (it knows nodes by ID) and the ledger keeps the name's
// block with the node that holds it, refusing the others' claims.
type NameConflict struct {
	Name string
	// Nodes are the nodes advertising Name, the ledger's holder first,
	// then by host IP.
	Nodes []NameClaimant
}

// NameClaimant is one node advertising a conflicting name.
type NameClaimant struct {
	ID     ledger.NodeID
	HostIP netip.Addr
	// Holder: the ledger assigns a block to this node ID under the name.
	Holder bool
	// Self: this is the node whose View it is.
	Self bool
}
