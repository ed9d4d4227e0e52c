package mesh

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/grapevine-net/grapevine/mesh/ledger"
)

// ownMetaLocked encodes this node's metadata.
func (m *Mesh) ownMetaLocked() ([]byte, error) {
	return Meta{
		Name:       m.cfg.NodeName,
		Block:      m.metaBlock,
		HostIP:     m.cfg.AdvertiseAddr,
		HostIP6:    m.cfg.AdvertiseAddr6,
		Pool:       m.cfg.Pool,
		BlockBits:  m.cfg.BlockBits,
		LedgerPort: uint16(m.cfg.LedgerPort),
		ID:         m.id,
		ClusterID:  m.clusterID,
		Leaving:    m.leaving,

		LedgerState:     m.ledgerState,
		BootstrapExpect: m.cfg.BootstrapExpect,
		FoundsByRecord:  m.cfg.LedgerRecord != nil,
	}.AppendBinary(nil)
}

// observe records a member's state and metadata from a memberlist event.
// memberlist knows every node by its node ID (see gossipName); a member
// whose metadata names another ID is rejected like any bad metadata.
func (m *Mesh) observe(n *memberlist.Node) {
	if n.Name == gossipName(m.id) {
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
	if metaErr == nil && gossipName(meta.ID) != n.Name {
		meta, metaErr = Meta{}, reject("node_id_mismatch", "member %s advertises node ID %s", n.Name, meta.ID)
	}

	m.mu.Lock()
	p, known := m.peers[n.Name]
	if !known {
		p = &peer{name: n.Name}
		m.peers[n.Name] = p
	}
	if state == Dead && known && p.metaErr == nil && p.meta.Leaving {
		state = Left // it announced its leave before going
	}
	stateChanged := !known || p.state != state
	if stateChanged {
		p.since = time.Now()
	}
	rejectedNow := metaErr != nil && (p.metaErr == nil || string(n.Meta) != string(p.metaRaw))
	p.addr, p.state = addr, state
	p.metaRaw = append(p.metaRaw[:0], n.Meta...)
	// A member that now advertises a ledger (its founder, or a node just
	// added) is what a node still waiting to join is waiting for.
	ledgerAppeared := state.Live() && metaErr == nil && !meta.ClusterID.IsZero() && meta.ClusterID != p.meta.ClusterID
	if state.Live() {
		// Metadata is only meaningful from a live member: memberlist keeps
		// the last value of a dead one.
		p.meta, p.metaErr = meta, metaErr
	}
	m.indexPeerLocked(p)
	if stateChanged {
		m.countMembersLocked()
	}
	m.mu.Unlock()

	if rejectedNow {
		m.metrics.rejectedMetadata.WithLabelValues(rejectReason(metaErr)).Inc()
		m.log.Warn("rejected member metadata; the member gets no route", "member", n.Name, "addr", addr, "err", metaErr)
	}
	signal(m.peersChanged)
	signal(m.wake)
	if ledgerAppeared {
		signal(m.ledgerChanged)
	}
	m.notify()
}

// gossipName is the name memberlist knows a node by: its node ID, which
// two hosts share only when one copied the other's state directory. The
// node's name (Config.NodeName) travels in metadata, so a second host with
// a live host's name is a second member, never a replacement (trace 10).
func gossipName(id ledger.NodeID) string { return id.String() }

// peerIndex is what the Mesh's indexes hold of one peer.
type peerIndex struct {
	in      bool // counted in states
	usable  bool // listed in byName and counted in clusters
	state   MemberState
	name    string
	cluster ledger.ClusterID
}

// indexPeerLocked brings the indexes (byName, shared, clusters, states) up
// to date with peer p after a change, and takes a peer that is no longer in
// peers out of them. They spare the checks that run on every membership
// event (name conflicts, foreign ledgers, the gauges) a walk over every
// member: in a cluster of a thousand, each node sees thousands of events.
func (m *Mesh) indexPeerLocked(p *peer) {
	old := p.indexed
	var now peerIndex
	if m.peers[p.name] == p {
		now = peerIndex{in: true, state: p.state}
		if p.usable() {
			now.usable, now.name, now.cluster = true, p.meta.Name, p.meta.ClusterID
		}
	}
	if old == now {
		return
	}
	if m.byName == nil {
		m.byName, m.shared, m.clusters = make(map[string][]*peer), make(map[string]bool), make(map[ledger.ClusterID]int)
	}
	if old.in {
		m.states[old.state]--
	}
	if now.in {
		m.states[now.state]++
	}
	if old.usable {
		if rest := slices.DeleteFunc(m.byName[old.name], func(q *peer) bool { return q == p }); len(rest) > 0 {
			m.byName[old.name] = rest
		} else {
			delete(m.byName, old.name)
		}
		m.noteSharedLocked(old.name)
		if !old.cluster.IsZero() {
			if m.clusters[old.cluster]--; m.clusters[old.cluster] <= 0 {
				delete(m.clusters, old.cluster)
			}
		}
	}
	if now.usable {
		m.byName[now.name] = append(m.byName[now.name], p)
		m.noteSharedLocked(now.name)
		if !now.cluster.IsZero() {
			m.clusters[now.cluster]++
		}
	}
	p.indexed = now
	if old.usable != now.usable || old.cluster != now.cluster {
		signal(m.foreignCheck) // clusters may have changed
	}
}

// noteSharedLocked records whether name is advertised by several nodes,
// this one included.
func (m *Mesh) noteSharedLocked(name string) {
	n := len(m.byName[name])
	if name == m.cfg.NodeName {
		n++
	}
	if n >= 2 {
		m.shared[name] = true
	} else {
		delete(m.shared, name)
	}
}

// countMembersLocked refreshes the members-by-state and foreign gauges.
func (m *Mesh) countMembersLocked() {
	counts := m.states
	foreign := 0
	if !m.clusterID.IsZero() {
		for c, n := range m.clusters {
			if c != m.clusterID {
				foreign += n
			}
		}
	}
	for s, n := range counts {
		m.metrics.members.WithLabelValues(MemberState(s).String()).Set(float64(n))
	}
	m.metrics.foreignMembers.Set(float64(foreign))
}

// ledgerPeers is gossip's view handed to the ledger: every member, live or
// not (the leader counts how long an owner has been gone); those with valid
// metadata at their gossip address and ledger port. A member whose metadata
// this node rejects is still handed over, by the node ID gossip knows it
// by, for its liveness alone: whether a host is alive must not depend on
// rules that only this node applies (another --pool here, say), or a
// leader would count healthy members dead and replace its voters.
func (m *Mesh) ledgerPeers() []ledger.Peer {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]ledger.Peer, 0, len(m.peers))
	for _, p := range m.peers {
		if p.metaErr != nil || p.meta.ID.IsZero() {
			if id, err := ledger.ParseNodeID(p.name); err == nil {
				out = append(out, ledger.Peer{ID: id, Alive: p.state.Live()})
			}
			continue
		}
		out = append(out, ledger.Peer{
			ID:          p.meta.ID,
			Name:        p.meta.Name,
			Addr:        netip.AddrPortFrom(p.addr.Addr(), p.meta.LedgerPort),
			HostIP:      p.meta.HostIP,
			ClusterID:   p.meta.ClusterID,
			Alive:       p.state.Live(),
			LedgerState: p.meta.LedgerState,
		})
	}
	return out
}

// peersLoop hands gossip's view to the ledger at once (the leader judges
// nobody dead before it has one) and whenever it changes, off memberlist's
// goroutines.
func (m *Mesh) peersLoop(ctx context.Context) {
	for {
		m.led.SetPeers(m.ledgerPeers())
		m.noteNameConflicts()
		select {
		case <-ctx.Done():
			return
		case <-m.peersChanged:
		}
	}
}

// ledgerToJoin picks the ledger this node should join: its own if it
// belongs to one, else the one the live seed members advertise, else the
// one most live members advertise (ties: the smaller cluster ID). ok is
// false when no live member belongs to any.
func (m *Mesh) ledgerToJoin() (ledger.ClusterID, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.clusterID.IsZero() {
		return m.clusterID, true
	}
	if !m.recorded.IsZero() {
		return m.recorded, true // the record outranks what gossip shows
	}
	seeds := make(map[string]bool, len(m.seeds))
	for _, s := range m.seeds {
		seeds[withPort(s, m.cfg.Port)] = true
	}
	count := make(map[ledger.ClusterID]int)
	for _, p := range m.peers {
		if p.usable() && !p.meta.ClusterID.IsZero() {
			// A seed the operator named outweighs any number of others.
			w := 1
			if seeds[p.addr.String()] {
				w = 1 << 20
			}
			count[p.meta.ClusterID] += w
		}
	}
	var best ledger.ClusterID
	found := false
	for c, n := range count {
		if !found || n > count[best] || (n == count[best] && string(c[:]) < string(best[:])) {
			best, found = c, true
		}
	}
	return best, found
}

// ledgerAddrs returns the ledger addresses of live members of cluster,
// at most limit.
func (m *Mesh) ledgerAddrs(cluster ledger.ClusterID, limit int) []netip.AddrPort {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []netip.AddrPort
	for _, p := range m.peers {
		if p.usable() && p.meta.ClusterID == cluster && len(out) < limit {
			out = append(out, netip.AddrPortFrom(p.addr.Addr(), p.meta.LedgerPort))
		}
	}
	return out
}

// nodeAddr converts memberlist's address of n.
func nodeAddr(n *memberlist.Node) netip.AddrPort {
	a, ok := netip.AddrFromSlice(n.Addr)
	if !ok {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a.Unmap(), n.Port)
}
