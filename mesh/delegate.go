package mesh

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/hashicorp/memberlist"
)

// delegate receives memberlist's callbacks. Several of them run while
// memberlist holds its own node lock, so none may call back into memberlist;
// they only touch the Mesh under its mutex.
type delegate struct{ m *Mesh }

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*delegate)(nil)
	_ memberlist.AliveDelegate = (*delegate)(nil)
)

// NodeMeta advertises this node's host IP and current claim.
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

// NotifyAlive refuses members whose names the claim table cannot carry;
// everything else is admitted and judged by its metadata, so an invalid
// member is visible (and counted) but never routed.
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

// NotifyMsg handles claim records and votes sent directly or gossiped.
func (d *delegate) NotifyMsg(b []byte) { d.m.handleMessage(b) }

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	d.m.mu.Lock()
	q := d.m.queue
	d.m.mu.Unlock()
	if q == nil {
		return nil
	}
	return q.GetBroadcasts(overhead, limit)
}

// LocalState sends the whole claim table, tombstones included, in push/pull.
func (d *delegate) LocalState(join bool) []byte {
	m := d.m
	m.mu.Lock()
	recs := make([]Record, 0, len(m.table))
	for _, r := range m.table {
		recs = append(recs, r)
	}
	m.mu.Unlock()
	slices.SortFunc(recs, func(a, b Record) int { return cmp.Compare(a.Node, b.Node) })
	return encodeRecords(recs)
}

func (d *delegate) MergeRemoteState(b []byte, join bool) { d.m.handleMessage(b) }

// ownMetaLocked encodes this node's metadata.
func (m *Mesh) ownMetaLocked() ([]byte, error) {
	meta := Meta{HostIP: m.cfg.AdvertiseAddr, Pool: m.cfg.Pool, BlockBits: m.cfg.BlockBits, Block: m.own.Block, Gen: m.own.Gen, Leaving: m.leaving}
	if meta.Block.IsValid() {
		meta.Since = m.own.Since
	}
	return meta.AppendBinary(nil)
}

// observe records a member's state and metadata from a memberlist event.
func (m *Mesh) observe(n *memberlist.Node) {
	if n.Name == m.cfg.NodeName {
		// What memberlist really advertises for this node: an update can
		// lose a race with a refutation that re-sends the old value.
		m.mu.Lock()
		m.advertised = append(m.advertised[:0], n.Meta...)
		m.mu.Unlock()
		return
	}
	state := Alive
	switch n.State {
	case memberlist.StateDead:
		state = Dead
	case memberlist.StateLeft:
		state = Left
	case memberlist.StateSuspect:
		state = Suspect
	}
	addr := nodeAddr(n)
	meta, metaErr := DecodeMeta(n.Meta, m.rules, addr.Addr())

	m.mu.Lock()
	now := m.now()
	p, known := m.peers[n.Name]
	if !known {
		p = &peer{name: n.Name}
		m.peers[n.Name] = p
	}
	if state == Dead && known && p.metaErr == nil && p.meta.Leaving {
		state = Left // it announced its leave before going
	}
	wasLive, liveSince := known && p.state.live(), p.since
	stateChanged := !known || p.state != state
	if stateChanged {
		p.since = now
		if state.live() && !m.joining {
			m.grewAt = time.Now()
		}
	}
	rejectedNow := metaErr != nil && (p.metaErr == nil || string(n.Meta) != string(p.metaRaw))
	p.addr, p.state = addr, state
	p.metaRaw = append(p.metaRaw[:0], n.Meta...)
	if state.live() {
		// Metadata is only meaningful from a live member: memberlist keeps
		// the last value of a dead one.
		p.meta, p.metaErr = meta, metaErr
	}
	if metaErr == nil && meta.Block.IsValid() {
		m.mergeLocked(Record{Node: n.Name, Block: meta.Block, HostIP: meta.HostIP, Since: meta.Since, Gen: meta.Gen})
	}
	if !state.live() {
		if r, ok := m.table[n.Name]; ok && !r.Released {
			switch {
			case r.DeadAt.IsZero():
				r.DeadAt = now
			case wasLive && r.DeadAt.Before(liveSince):
				// The recorded death is from before the owner was last
				// seen alive (it came back without a new claim): this is
				// a new death, and ReclaimAfter starts again.
				r.Gen++
				r.DeadAt = now
			}
			// Otherwise this death is recorded already; the earliest
			// observation stands, so a node that hears of it late cannot
			// push ReclaimAfter out.
			m.table[n.Name] = r
		}
	}
	lost := m.own.Block.IsValid() && metaErr == nil && state.live() && meta.Block == m.own.Block
	if stateChanged {
		m.countMembersLocked()
	}
	m.mu.Unlock()

	if rejectedNow {
		m.metrics.rejectedMetadata.WithLabelValues(rejectReason(metaErr)).Inc()
		m.log.Warn("rejected member metadata; the member gets no route", "member", n.Name, "addr", addr, "err", metaErr)
	}
	if lost {
		m.metrics.conflicts.Inc()
		m.log.Warn("a member advertises this node's block", "member", n.Name, "block", meta.Block)
	}
	m.nudge()
	m.notify()
}

// handleMessage dispatches a message from the network. Anything malformed
// is counted and dropped.
func (m *Mesh) handleMessage(b []byte) {
	msg, err := decodeMessage(b)
	if err != nil {
		m.metrics.rejectedRecords.WithLabelValues(rejectReason(err)).Inc()
		m.log.Warn("rejected gossip message", "err", err)
		return
	}
	switch {
	case msg.Records != nil:
		m.mergeRecords(msg.Records)
	case msg.Request != nil:
		m.handleVoteRequest(*msg.Request)
	case msg.Response != nil:
		m.handleVoteResponse(*msg.Response)
	case msg.Abort != nil:
		m.handleVoteAbort(*msg.Abort)
	}
}

// mergeRecords validates records from the network and joins them into the
// table. A record about this node never changes this node's claim directly;
// the claim loop reads it (a release or a newer claim elsewhere).
func (m *Mesh) mergeRecords(recs []Record) {
	changed := false
	m.mu.Lock()
	var rejected []error
	for _, r := range recs {
		// A record made at another address (a tombstone, a node that
		// moved) is history, not a route; only a record that claims to be
		// a live member's current one must match its gossip address.
		var from netip.Addr
		if p, ok := m.peers[r.Node]; ok && p.usable() && r.Gen >= p.meta.Gen {
			from = p.addr.Addr()
		}
		if err := m.rules.checkRecord(r, from); err != nil {
			rejected = append(rejected, err)
			continue
		}
		if _, known := m.table[r.Node]; !known && !m.joining {
			m.grewAt = time.Now()
		}
		if m.mergeLocked(r) {
			changed = true
		}
	}
	m.mu.Unlock()
	for _, err := range rejected {
		m.metrics.rejectedRecords.WithLabelValues(rejectReason(err)).Inc()
		m.log.Warn("rejected claim record", "err", err)
	}
	if changed {
		m.nudge()
		m.notify()
	}
}

// mergeLocked joins r into the table and reports whether it changed it.
func (m *Mesh) mergeLocked(r Record) bool {
	if old, ok := m.table[r.Node]; ok && !r.newer(old) {
		return false
	}
	m.table[r.Node] = r
	// A record proves its block is taken: drop promises of it to others.
	if p, ok := m.promises[r.Block]; ok && p.claimant != r.Node && !r.Released {
		delete(m.promises, r.Block)
	}
	return true
}
