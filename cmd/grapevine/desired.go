package main

import (
	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/node"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// desiredState turns what the mesh knows into what this host's kernel should
// hold. It is the only place where gossip meets routing, and it is pure.
func desiredState(v mesh.View, o agentOptions) node.Desired {
	d := node.Desired{
		Iface:      o.Iface,
		OwnBlock:   v.Block,
		Pool:       o.Pool,
		Masquerade: o.Masquerade,
		// The path to each peer (direct or VXLAN) is node's choice, from
		// the peer's host IP and the interface's networks.
		Encapsulation: o.Encapsulation,
		HostIP:        o.HostIP,
	}
	for _, m := range v.Members {
		if routable(m) {
			d.Peers = append(d.Peers, node.PeerRoute{Peer: m.Name, Block: m.Block, Via: m.HostIP})
		}
	}
	return d
}

// routable reports whether a member's block should be routed to it. Suspect
// members keep their route: withdrawing on suspicion alone would flap routes
// on every lost probe, while a dead verdict follows within seconds.
func routable(m mesh.Member) bool {
	if !m.Block.IsValid() || !m.HostIP.IsValid() {
		return false
	}
	return m.State == mesh.Alive || m.State == mesh.Suspect
}

// handoffState is what node.json should say, and false when this node holds
// no block (the plugin must then answer "try again later").
func handoffState(v mesh.View, o agentOptions) (nodestate.State, bool) {
	if !v.Block.IsValid() {
		return nodestate.State{}, false
	}
	return nodestate.State{
		Node:   o.NodeName,
		Block:  v.Block,
		Pool:   o.Pool,
		HostIP: o.HostIP,
		MTU:    o.MTU,
	}, true
}
