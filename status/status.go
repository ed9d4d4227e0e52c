// Package status owns the agent's status document: the JSON the agent
// serves on GET /status of its status socket, which `grapevine status -o
// json` prints as is. The agent writes it; `grapevine status` (its table),
// `grapevine doctor` and the lab's tests read it, all through these types,
// so a field is named once. Scripts read it too: a field's JSON name is a
// promise (testdata/report.json pins them).
//
// The package holds types and their meaning only: it depends on no other
// package of Grapevine, touches no kernel and speaks no gossip. Addresses
// and prefixes are strings as the agent prints them, "" when unset.
package status

import "time"

// Report is the agent's status: this node, its block and readiness, and
// every member with its route.
type Report struct {
	Node   string `json:"node"`
	NodeID string `json:"nodeID,omitempty"`
	HostIP string `json:"hostIP,omitempty"`
	Block  string `json:"block,omitempty"`
	// Block6 and HostIP6 are this node's IPv6 block and IPv6 host address
	// on a dual-stack node (--pool6); absent otherwise.
	Block6   string `json:"block6,omitempty"`
	HostIP6  string `json:"hostIP6,omitempty"`
	Ready    bool   `json:"ready"`
	Reason   string `json:"reason,omitempty"`
	Degraded string `json:"degraded,omitempty"`
	// LeaseRenewed and LeaseEnds are the wall-clock times of the last
	// renewal of this node's lease on Block and of its end: after it the
	// CNI plugin hands out no new addresses unless the lease is renewed.
	LeaseRenewed time.Time `json:"leaseRenewed,omitzero"`
	LeaseEnds    time.Time `json:"leaseEnds,omitzero"`
	// PendingReleases says, for each deleted Node whose block waits for
	// its lease to end, when it will be free.
	PendingReleases []string `json:"pendingReleases,omitempty"`
	// ForwardAccept says, for each filter FORWARD chain of iptables that
	// drops by policy, that the agent accepts the pool in it and how it
	// wrote its rules (see node.PlanForwardAccept); empty while none
	// drops.
	ForwardAccept []string `json:"forwardAccept,omitempty"`
	// ForwardUnhandled says, for each filter FORWARD chain the agent can
	// neither read nor change, why (iptables-legacy without its binary).
	ForwardUnhandled []string `json:"forwardUnhandled,omitempty"`
	// ForwardError is why the agent could not read or change a filter
	// FORWARD chain (node.Result.ForwardErr).
	ForwardError string `json:"forwardError,omitempty"`
	// Encapsulation is the --encapsulation mode the paths were chosen by
	// (never, cross-subnet, always).
	Encapsulation string `json:"encapsulation,omitempty"`
	// Settings are the agent's settings a reader checks the host against
	// (grapevine doctor).
	Settings *Settings `json:"settings,omitempty"`
	Ledger   Ledger    `json:"ledger"`
	// NetworkPolicy is Kubernetes NetworkPolicy enforcement by
	// grapevine-policy, as it answered the agent on the socket of the
	// agent's --policy-socket; Enabled is false without that flag.
	NetworkPolicy NetworkPolicy `json:"networkPolicy"`
	// NameConflicts lists the names several live hosts advertise, each
	// with its own node ID (see mesh.View.NameConflicts).
	NameConflicts []NameConflict `json:"nameConflicts,omitempty"`
	Members       []Member       `json:"members"`
}

// NetworkPolicy is the enforcement of Kubernetes NetworkPolicy for this
// node's pods (by grapevine-policy, which reports it on its admission
// socket).
type NetworkPolicy struct {
	Enabled bool `json:"enabled"`
	// Socket is the enforcer's admission socket, which node.json names
	// for the CNI plugin.
	Socket string `json:"socket,omitempty"`
	// Unreachable is why the agent could not ask the enforcer on Socket;
	// new pods cannot start until it answers. The fields below are then
	// unknown.
	Unreachable string `json:"unreachable,omitempty"`
	// Synced is false until the first lists of pods, namespaces and
	// policies arrived; nothing is compiled before, and new pods wait.
	Synced bool `json:"synced,omitempty"`
	// Policies counts the cluster's NetworkPolicies, Pods this node's
	// pods a policy isolates in either direction, as of the last sync.
	Policies int `json:"policies"`
	Pods     int `json:"pods"`
	// LastSync is when the enforcer last compiled the policies and had the
	// result in force; LastSyncAgeSeconds its age when the status was
	// read.
	LastSync           time.Time `json:"lastSync,omitzero"`
	LastSyncAgeSeconds float64   `json:"lastSyncAgeSeconds,omitempty"`
	// Error is why the last ruleset could not be applied; the previous
	// one stays in force.
	Error string `json:"error,omitempty"`
}

// Settings are what the agent was started with, as far as the host's
// state depends on it: the interface towards the peers, the pool it routes
// and masquerades, and the ports peers reach it on (the same on every host
// of a cluster started alike).
type Settings struct {
	Iface      string `json:"iface"`
	Pool       string `json:"pool"`
	Masquerade bool   `json:"masquerade"`
	GossipPort int    `json:"gossipPort"`
	LedgerPort int    `json:"ledgerPort"`
	PodMTU     int    `json:"podMTU,omitempty"`
}

// NameConflict is one name several live hosts advertise: only the holder
// (the node the ledger assigns a block under the name) is routed; the
// ledger refuses the others' claims.
type NameConflict struct {
	Name  string         `json:"name"`
	Nodes []NameClaimant `json:"nodes"`
}

// NameClaimant is one host advertising a conflicting name.
type NameClaimant struct {
	ID     string `json:"id"`
	HostIP string `json:"hostIP"`
	// Holder: the ledger assigns the name's block to this host.
	Holder bool `json:"holder,omitempty"`
	Self   bool `json:"self,omitempty"`
}

// Ledger is this node's replica of the block ledger.
type Ledger struct {
	ClusterID string   `json:"clusterID,omitempty"`
	Role      string   `json:"role"`
	Leader    string   `json:"leader,omitempty"`
	Voters    []string `json:"voters"`
	LastIndex uint64   `json:"lastIndex"`
	// Foreign names the members of other ledgers (founded separately with
	// the same gossip key): they are never routed.
	Foreign []string `json:"foreign,omitempty"`
}

// Member is one member of the mesh as this node sees it.
type Member struct {
	Name string `json:"name"`
	// ID is the member's node ID: gossip's name for it, which tells apart
	// two hosts with one name.
	ID     string `json:"id,omitempty"`
	Addr   string `json:"addr,omitempty"`
	HostIP string `json:"hostIP,omitempty"`
	Block  string `json:"block,omitempty"`
	State  string `json:"state"`
	// ClusterID is the ledger the member belongs to; Foreign marks
	// another ledger than this node's (never routed).
	ClusterID string `json:"clusterID,omitempty"`
	Foreign   bool   `json:"foreign,omitempty"`
	// Route is node.PeerProgrammed, node.PeerPending, "error: ...",
	// RouteWithdrawn or RouteNone.
	Route string `json:"route"`
	// Path is how packets for the member's block leave (direct, vxlan),
	// and PathReason why; both empty when it is not routed.
	Path       string `json:"path,omitempty"`
	PathReason string `json:"pathReason,omitempty"`
	// Block6 and HostIP6 are the member's IPv6 block and IPv6 host
	// address; Path6 is how packets for Block6 leave (direct, vxlan, or
	// none: not routed) and Path6Reason why. All absent on an IPv4-only
	// node.
	Block6      string `json:"block6,omitempty"`
	HostIP6     string `json:"hostIP6,omitempty"`
	Path6       string `json:"path6,omitempty"`
	Path6Reason string `json:"path6Reason,omitempty"`
	// KeptBy names the signals that keep the route: "gossip" (memberlist
	// counts the member in), "data path" (its host answers echo requests).
	KeptBy []string `json:"keptBy,omitempty"`
	// RouteReason explains a route of a member memberlist counts out (dead,
	// left): "left; kept by data path", "dead; withdrawn: host down", ...;
	// or why a live member is not routed (its metadata and the ledger
	// disagree, another host holds its name). Empty for a member routed on
	// gossip or holding no block.
	RouteReason string `json:"routeReason,omitempty"`
	// GossipSeen is when memberlist last counted the member in.
	GossipSeen time.Time `json:"gossipSeen,omitzero"`
	// DataPath is "up", "down", "no reply yet" or, for a host not
	// probed, empty; DataPathSeen is its last echo reply.
	DataPath     string    `json:"dataPath,omitempty"`
	DataPathSeen time.Time `json:"dataPathSeen,omitzero"`
	// DataPathHealth is the probe's last minute of the member's host;
	// absent for a host not probed.
	DataPathHealth *PathHealth `json:"dataPathHealth,omitempty"`
}

// Route states of a member besides node's PeerProgrammed, PeerPending
// and "error: ...": the mesh withdrew the member's block, or it holds none.
const (
	RouteWithdrawn = "withdrawn"
	RouteNone      = "none"
)

// Routed reports whether the agent means to route m's block: a member of
// this node's ledger with a block whose route is not withdrawn.
func (m Member) Routed() bool {
	return !m.Foreign && m.Block != "" && m.Route != RouteWithdrawn && m.Route != RouteNone
}

// PathHealth is the agent's probe of a member's host over the last minute:
// round-trip quantiles in milliseconds (zero while no request was
// answered) and the share of the Requests resolved that were Lost.
type PathHealth struct {
	Requests int     `json:"requests"`
	Lost     int     `json:"lost"`
	Loss     float64 `json:"loss"`
	RTTp50ms float64 `json:"rttP50ms"`
	RTTp99ms float64 `json:"rttP99ms"`
}
