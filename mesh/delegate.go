package mesh

import (
	"github.com/hashicorp/memberlist"
)

// delegate receives memberlist's callbacks. Several of them run while
// memberlist holds its own node lock, so none may call back into memberlist
// or wait for the ledger; they only touch the Mesh under its mutex and
// nudge the loops that do the rest.
type delegate struct{ m *Mesh }

var (
	_ memberlist.Delegate         = (*delegate)(nil)
	_ memberlist.EventDelegate    = (*delegate)(nil)
	_ memberlist.AliveDelegate    = (*delegate)(nil)
	_ memberlist.ConflictDelegate = (*delegate)(nil)
)

// maxNameLen bounds member names: a DNS name, as node names are host names.
const maxNameLen = 253

// NodeMeta advertises this node's host IP, identity and ledger.
func (d *delegate) NodeMeta(limit int) []byte {
	m := d.m
	m.mu.Lock()
	b, err := m.ownMetaLocked()
	m.mu.Unlock()
	if err != nil || len(b) > limit {
		// Config validation makes this unreachable; advertising nothing is
		// safe (no route), a panic in memberlist is not.
		m.log.Error("encode own metadata", "err", err, "len", len(b), "limit", limit)
		return nil
	}
	return b
}

// NotifyAlive refuses members with unprintable or overlong gossip names;
// everything else is admitted and judged by its metadata (which must name
// the node ID the member gossips under), so an invalid member is visible
// (and counted) but never routed.
func (d *delegate) NotifyAlive(n *memberlist.Node) error {
	if n.Name == "" || len(n.Name) > maxNameLen || !validName(n.Name) {
		return reject("name", "member name %q is not a 1-%d character printable name", n.Name, maxNameLen)
	}
	return nil
}

func (d *delegate) NotifyJoin(n *memberlist.Node)   { d.m.observe(n) }
func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.m.observe(n) }

// NotifyLeave marks the member gone. memberlist hands over the node with its
// State field unset (the real state lives in its private nodeState), so a
// member reported here would otherwise still look alive and keep its route.
func (d *delegate) NotifyLeave(n *memberlist.Node) {
	gone := *n
	if gone.State != memberlist.StateLeft {
		gone.State = memberlist.StateDead
	}
	d.m.observe(&gone)
}

// NotifyConflict reports a second host gossiping under a live member's
// node ID: a copied state directory. memberlist keeps the member it knew;
// the ledger refuses the copy's claims (its ID is live at another host
// IP), so this only tells the operator. Two hosts with one name are not a
// conflict here: memberlist knows nodes by ID (see View.NameConflicts).
func (d *delegate) NotifyConflict(existing, other *memberlist.Node) {
	m := d.m
	m.metrics.idConflicts.Inc()
	m.log.Error("two hosts use one node ID (a copied state directory?); the ledger keeps the block with the node that holds it and refuses the other",
		"id", existing.Name, "known_addr", nodeAddr(existing), "other_addr", nodeAddr(other))
}

// The mesh gossips no messages and no state of its own: ownership travels
// in the ledger, identity in metadata.
func (d *delegate) NotifyMsg([]byte)                  {}
func (d *delegate) GetBroadcasts(int, int) [][]byte   { return nil }
func (d *delegate) LocalState(bool) []byte            { return nil }
func (d *delegate) MergeRemoteState(b []byte, _ bool) {}
