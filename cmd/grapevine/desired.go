package main

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/node"
	"github.com/grapevine-net/grapevine/node/nodestate"
	"github.com/grapevine-net/grapevine/node/probe"
)

// keptRoute is a peer's block this host routes, and the signals that keep
// the route.
type keptRoute struct {
	Block  netip.Prefix
	HostIP netip.Addr
	// HostIP6 is the peer's advertised IPv6 host address (zero: none), the
	// next hop for its IPv6 block, which follows from Block: the IPv6
	// route is kept and withdrawn with the IPv4 one.
	HostIP6 netip.Addr
	// Gossip: memberlist sees the peer alive (or merely suspect) with this
	// block.
	Gossip bool
	// DataPath: the peer's host answers echo requests.
	DataPath bool
	// DataPath6: the peer's IPv6 host address answers echo requests
	// (ICMPv6). A route kept on the data path alone keeps its direct
	// IPv6 twin only while this holds (see peerRoute6).
	DataPath6 bool
}

// memberKey is how the agent keys a member's route, reason and signals:
// its node ID, as gossip knows it. Two hosts may carry one name (a cloned
// VM that kept its host name); they are two members, and only the one the
// ledger assigns a block is routed.
func memberKey(m mesh.Member) string { return m.ID.String() }

// keptRoutes decides which peers' blocks this host routes, from the mesh's
// view, the routes kept so far and the data-path verdicts. It is the only
// place where gossip meets routing, and it is pure. Routes are keyed by
// node ID (memberKey).
//
// A route is installed only on gossip: a live member with a block. Once
// installed it stays while either signal holds: memberlist sees the member
// alive, or its host still answers on the data path. So a hung agent on a
// healthy host (memberlist calls it dead) keeps its route, and the route is
// withdrawn only when its host has stopped answering and gossip agrees:
// memberlist has declared the member dead, or this host's own direct
// gossip pings went unanswered once the data path was down (silent, see
// silenceChecks). The second does not wait for memberlist to confirm a
// suspicion: when two of three hosts die at once the survivor has nobody
// to confirm it, and memberlist's second dead verdict came seconds after
// the data path's. A withdrawn route comes back only through
// gossip: the data path alone never adds a block, so a host that answers
// again after its block was released cannot take it back.
//
// A member that left gracefully (SIGTERM: a restart, a rolling update) is
// treated like a dead one as far as its route goes: its agent is gone, its
// host need not be, and pods on that host stay reachable while it answers.
// Without data-path verdicts (probes off) nothing keeps a gone member's
// route, so it goes at once on leave, as on a dead verdict.
//
// A gone member's route is kept only while the ledger still assigns the
// routed block to it (Member.Held): a release or reclaim withdraws it at
// once, host answering or not.
//
// A member gossip shows alive without a block (it lost a conflict, its
// metadata is invalid) is not routed, and a route kept on the data path
// alone yields to any member gossip shows with an overlapping block and to
// this node's own block.
func keptRoutes(v mesh.View, prev map[string]keptRoute, paths map[netip.Addr]probe.Verdict, silent map[string]bool) map[string]keptRoute {
	kept := make(map[string]keptRoute, len(v.Members))
	var dataPathOnly []string
	for _, m := range v.Members {
		key := memberKey(m)
		switch r, had := prev[key]; {
		case routable(m) && !silent[key]:
			kept[key] = keptRoute{Block: m.Block, HostIP: m.HostIP, HostIP6: m.HostIP6, Gossip: true, DataPath: paths[m.HostIP].Up,
				DataPath6: m.HostIP6.IsValid() && paths[m.HostIP6].Up}
		case gone(m.State) && had && m.Held == r.Block && paths[r.HostIP].Up:
			kept[key] = keptRoute{Block: r.Block, HostIP: r.HostIP, HostIP6: r.HostIP6, DataPath: true,
				DataPath6: r.HostIP6.IsValid() && paths[r.HostIP6].Up}
			dataPathOnly = append(dataPathOnly, key)
		}
	}
	for _, key := range dataPathOnly {
		b := kept[key].Block
		if v.Block.IsValid() && v.Block.Overlaps(b) {
			delete(kept, key)
			continue
		}
		for other, r := range kept {
			if other != key && r.Gossip && r.Block.Overlaps(b) {
				delete(kept, key)
				break
			}
		}
	}
	return kept
}

// withdrawals says, for every member memberlist counts out (dead or left)
// or this host found silent that this host does not route, why not, by
// memberKey. The reason is fixed by the pass
// that withdrew the route (before holds the last pass's answers), so the
// status still gives it once the host is no longer probed. It is pure.
func withdrawals(v mesh.View, prev, kept map[string]keptRoute, paths map[netip.Addr]probe.Verdict, silent map[string]bool, before map[string]string) map[string]string {
	why := make(map[string]string)
	for _, m := range v.Members {
		key := memberKey(m)
		if _, ok := kept[key]; ok || !(gone(m.State) || silent[key]) {
			continue
		}
		r, had := prev[key]
		switch {
		case silent[key] && had:
			why[key] = "withdrawn: host not answering, nor its agent"
		case silent[key]:
			if before[key] != "" {
				why[key] = before[key]
			}
		case had && m.Held != r.Block:
			why[key] = "withdrawn: the ledger no longer assigns it " + r.Block.String()
		case had && paths == nil:
			why[key] = "withdrawn: data-path probes are off"
		case had && !paths[r.HostIP].Up:
			why[key] = "withdrawn: host not answering"
		case had:
			why[key] = "withdrawn: " + r.Block.String() + " is routed elsewhere"
		case before[key] != "":
			why[key] = before[key]
		case m.Held.IsValid():
			why[key] = "not routed: gone before this agent routed it"
		}
	}
	return why
}

// routable reports whether gossip alone gives a member a route: it holds a
// block and is alive or suspect. Suspect members keep their route:
// withdrawing on suspicion alone would flap routes on every lost probe,
// while a dead verdict follows within seconds.
func routable(m mesh.Member) bool {
	return m.Block.IsValid() && m.HostIP.IsValid() && m.State.Live()
}

// gone reports whether memberlist counts a member out: its agent failed
// (dead) or stopped gracefully (left). Either way only its host's data path
// can keep its route.
func gone(s mesh.MemberState) bool { return s == mesh.Dead || s == mesh.Left }

// probeTargets is the host addresses whose data path is watched: every live
// member with a block, so a verdict is ready by the time memberlist calls
// one dead, and every host a route is kept to.
func probeTargets(v mesh.View, kept map[string]keptRoute) []netip.Addr {
	var hosts []netip.Addr
	for _, m := range v.Members {
		if routable(m) {
			hosts = append(hosts, m.HostIP)
		}
	}
	for _, r := range kept {
		hosts = append(hosts, r.HostIP)
	}
	slices.SortFunc(hosts, netip.Addr.Compare)
	return slices.Compact(hosts)
}

// probeTargets6 is the IPv6 host addresses whose data path is watched on a
// dual-stack host with an IPv6 address: those of the members and kept
// routes probeTargets watches, where they advertise one, so that the
// direct IPv6 routes are kept and withdrawn on their own data path.
func probeTargets6(v mesh.View, kept map[string]keptRoute, o agentOptions) []netip.Addr {
	if !o.Pool6.IsValid() || !o.HostIP6.IsValid() {
		return nil
	}
	var hosts []netip.Addr
	for _, m := range v.Members {
		if routable(m) && m.HostIP6.IsValid() {
			hosts = append(hosts, m.HostIP6)
		}
	}
	for _, r := range kept {
		if r.HostIP6.IsValid() {
			hosts = append(hosts, r.HostIP6)
		}
	}
	slices.SortFunc(hosts, netip.Addr.Compare)
	return slices.Compact(hosts)
}

// desiredState turns the kept routes into what this host's kernel should
// hold, each peer route named by the member's node ID. It is pure.
func desiredState(v mesh.View, kept map[string]keptRoute, o agentOptions) node.Desired {
	d := node.Desired{
		Iface:      o.Iface,
		OwnBlock:   v.Block,
		Pool:       o.Pool,
		Pool6:      o.Pool6,
		Masquerade: o.Masquerade,
		// The path to each peer (direct or VXLAN) is node's choice, from
		// the peer's host IP and the interface's networks.
		Encapsulation: o.Encapsulation,
		HostIP:        o.HostIP,
	}
	d.OwnBlock6, _ = ownBlock6(v, o)
	for key, r := range kept {
		d.Peers = append(d.Peers, node.PeerRoute{Peer: key, Block: r.Block, Via: r.HostIP})
		if p6, ok := peerRoute6(key, r, o); ok {
			d.Peers6 = append(d.Peers6, p6)
		}
	}
	byPeer := func(a, b node.PeerRoute) int { return strings.Compare(a.Peer, b.Peer) }
	slices.SortFunc(d.Peers, byPeer)
	slices.SortFunc(d.Peers6, byPeer)
	return d
}

// peerRoute6 is the route to a kept peer's IPv6 block when this node has an
// IPv6 pool: via the peer's IPv6 host address when both this host and the
// peer have one (node routes it only if the address is on a network of the
// interface), with no next hop otherwise (node says why it is not routed).
// The keep and withdraw rule of the IPv4 route applies to the direct IPv6
// route alike, on the IPv6 data path: once gossip no longer keeps the
// peer, its IPv6 route stays only while its IPv6 host address answers.
func peerRoute6(key string, r keptRoute, o agentOptions) (node.PeerRoute, bool) {
	direct := o.HostIP6.IsValid() && r.HostIP6.IsValid()
	if !o.Pool6.IsValid() || direct && !r.Gossip && !r.DataPath6 {
		return node.PeerRoute{}, false
	}
	b6, err := mesh.Block6(o.Pool, r.Block, o.Pool6, o.BlockSize6)
	if err != nil {
		return node.PeerRoute{}, false
	}
	p := node.PeerRoute{Peer: key, Block: b6}
	if direct {
		p.Via = r.HostIP6
	}
	return p, true
}

// handoffState is what node.json should say, and false when this node
// holds no block or has had no lease on it in this run (the plugin must then
// answer "try again later"). A block whose lease has ended stays handed off
// with that lease: the plugin refuses ADD by itself, and the runtime, which
// needs the conflist for every CNI call, can still tear pods down.
func handoffState(v mesh.View, o agentOptions) (nodestate.State, bool) {
	if !v.Block.IsValid() || v.Lease.IsZero() {
		return nodestate.State{}, false
	}
	st := nodestate.State{
		Node:   o.NodeName,
		Block:  v.Block,
		Pool:   o.Pool,
		HostIP: o.HostIP,
		MTU:    o.MTU,
		Lease:  handoffLease(v),
		// The plugin waits on grapevine-policy for each new pod only
		// while network policy is on.
		PolicySocket: o.PolicySocket,
	}
	st.Block6, st.Pool6 = ownBlock6(v, o)
	return st, true
}

// ownBlock6 is this node's IPv6 block and pool, both zero without --pool6.
// The block follows from the IPv4 block the ledger assigned (mesh.Block6),
// whenever that is computed: an agent restarted with --pool6 in a running
// cluster derives it from the block it already holds, with no ledger
// change. The flags were checked against the pool, so only a block of
// another size than --block-size (a ledger founded with another) can fail
// the mapping; the node then stays IPv4-only rather than guess.
func ownBlock6(v mesh.View, o agentOptions) (block6, pool6 netip.Prefix) {
	if !o.Pool6.IsValid() || !v.Block.IsValid() {
		return netip.Prefix{}, netip.Prefix{}
	}
	b6, err := mesh.Block6(o.Pool, v.Block, o.Pool6, o.BlockSize6)
	if err != nil {
		return netip.Prefix{}, netip.Prefix{}
	}
	return b6, o.Pool6
}

// handoffLease is the lease node.json carries: the plugin hands out
// addresses only until it ends, whether or not the agent still runs.
func handoffLease(v mesh.View) nodestate.Lease {
	return nodestate.Lease{Ends: v.Lease, Renewed: v.LeaseRenewed.UTC().Round(0), EndsAt: v.LeaseEndsAt.UTC().Round(0)}
}

// staleHandoff says why the hand-off a previous run left must be withdrawn
// before this run first reconciles, or "" while it may stay. handedOff is
// the block the previous run's node.json names (zero: none usable). It may
// stay while the mesh has not applied the restart rule yet, and then only
// for the block the rule restored, while the rule covers it, or once the
// ledger has confirmed it. Otherwise the plugin would hand out addresses
// from a block that may be another node's by now, for as long as the
// ledger does not answer.
func staleHandoff(v mesh.View, handedOff netip.Prefix) string {
	if !handedOff.IsValid() || v.Restart == mesh.RestartUndecided || (v.Ready && v.Block == handedOff) {
		return ""
	}
	switch v.Restart {
	case mesh.RestartNoBlock:
		return fmt.Sprintf("node.json names block %s, but the previous run saved no block this run can use", handedOff)
	case mesh.RestartRefused:
		return fmt.Sprintf("the restart rule does not apply to block %s: %s", handedOff, v.RestartReason)
	}
	if !v.Ready {
		return fmt.Sprintf("the restart rule no longer covers block %s: %s", handedOff, v.Reason)
	}
	return fmt.Sprintf("node.json names block %s, but this node holds block %s", handedOff, v.Block)
}
