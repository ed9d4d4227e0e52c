package mesh

import (
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/grapevine-net/grapevine/mesh/ledger"
)

// TestPeerIndexFollowsPeers: after every change of a peer (joins, renames,
// another ledger, rejected metadata, death, being forgotten) the indexes
// give what a walk over every peer gives: the names several nodes
// advertise, the live members per ledger, and the members per state.
func TestPeerIndexFollowsPeers(t *testing.T) {
	x, y := ledger.ClusterID{1}, ledger.ClusterID{2}
	ids := []ledger.NodeID{{1}, {2}, {3}}
	usable := func(id ledger.NodeID, name string, c ledger.ClusterID) *peer {
		return &peer{name: gossipName(id), state: Alive, meta: Meta{ID: id, Name: name, ClusterID: c, HostIP: netip.AddrFrom4([4]byte{10, 0, 0, id[0]})}}
	}
	m := &Mesh{cfg: Config{NodeName: "self"}, id: ledger.NodeID{9}, peers: map[string]*peer{}}
	for _, step := range []struct {
		name   string
		change func()
	}{
		{"a member joins", func() { m.peers[gossipName(ids[0])] = usable(ids[0], "a", x) }},
		{"a second member with its name", func() { m.peers[gossipName(ids[1])] = usable(ids[1], "a", y) }},
		{"a third with this node's name", func() { m.peers[gossipName(ids[2])] = usable(ids[2], "self", x) }},
		{"the second renamed", func() { m.peers[gossipName(ids[1])].meta.Name = "b" }},
		{"the first's metadata rejected", func() { m.peers[gossipName(ids[0])].metaErr = reject("pool", "another pool") }},
		{"the third suspect", func() { m.peers[gossipName(ids[2])].state = Suspect }},
		{"the third dead", func() { m.peers[gossipName(ids[2])].state = Dead }},
		{"the third forgotten", func() { delete(m.peers, gossipName(ids[2])) }},
		{"the second in no ledger", func() { m.peers[gossipName(ids[1])].meta.ClusterID = ledger.ClusterID{} }},
	} {
		var touched []*peer
		for _, p := range m.peers {
			touched = append(touched, p)
		}
		for _, p := range m.byName {
			touched = append(touched, p...)
		}
		step.change()
		for _, p := range touched {
			m.indexPeerLocked(p)
		}
		for _, p := range m.peers {
			m.indexPeerLocked(p)
		}

		names := map[string]int{m.cfg.NodeName: 1}
		clusters := map[ledger.ClusterID]int{}
		var states [Left + 1]int
		for _, p := range m.peers {
			states[p.state]++
			if p.usable() {
				names[p.meta.Name]++
				if !p.meta.ClusterID.IsZero() {
					clusters[p.meta.ClusterID]++
				}
			}
		}
		var shared []string
		for n, c := range names {
			if c > 1 {
				shared = append(shared, n)
			}
		}
		slices.Sort(shared)
		var got []string
		for _, c := range m.nameConflictsLocked(nil) {
			got = append(got, c.Name)
		}
		if !slices.Equal(got, shared) {
			t.Errorf("%s: name conflicts %q, want %q", step.name, got, shared)
		}
		if !maps.Equal(m.clusters, clusters) {
			t.Errorf("%s: members per ledger %v, want %v", step.name, m.clusters, clusters)
		}
		if m.states != states {
			t.Errorf("%s: members per state %v, want %v", step.name, m.states, states)
		}
	}
}
