package ledger

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func TestShouldStand(t *testing.T) {
	ids := []NodeID{{1}, {2}, {3}, {4}}
	sid := func(i int) raft.ServerID { return raft.ServerID(ids[i].String()) }
	voters := []raft.Server{{ID: sid(0), Suffrage: raft.Voter}, {ID: sid(1), Suffrage: raft.Voter}, {ID: sid(2), Suffrage: raft.Voter}, {ID: sid(3), Suffrage: raft.Nonvoter}}
	gossip := func(alive ...bool) []Peer {
		var ps []Peer
		for i, a := range alive {
			ps = append(ps, Peer{ID: ids[i], Alive: a, LedgerState: true})
		}
		return ps
	}
	for _, tc := range []struct {
		name         string
		self, leader int // -1: no leader known
		peers        []Peer
		want         bool
	}{
		{"leader alive", 1, 0, gossip(true, true, true, true), false},
		{"leader dead", 1, 0, gossip(false, true, true, true), true},
		{"leader dead, every voter stands", 2, 0, gossip(false, true, true, true), true},
		{"leader dead, non-voters never stand", 3, 0, gossip(false, true, true, true), false},
		{"leader unknown to gossip is not dead", 1, 0, gossip(), false},
		{"no leader known", 1, -1, gossip(false, true, true, true), true},
		{"no leader known, non-voter", 3, -1, gossip(false, true, true, true), false},
		{"the leader itself", 0, 0, gossip(false, true, true, true), false},
		{"leader suspect (alive to the ledger)", 2, 1, gossip(true, true, true, true), false},
		{"leader dead, no majority alive", 1, 0, gossip(false, true, false, true), false},
		{"no leader known, no majority alive", 1, -1, gossip(false, true, false, true), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var leader raft.ServerID
			if tc.leader >= 0 {
				leader = sid(tc.leader)
			}
			if got := shouldStand(sid(tc.self), leader, voters, tc.peers); got != tc.want {
				t.Errorf("shouldStand(self %d, leader %d) = %v, want %v", tc.self, tc.leader, got, tc.want)
			}
		})
	}
}

func TestQuorumAlive(t *testing.T) {
	ids := []NodeID{{1}, {2}, {3}, {4}}
	sid := func(i int) raft.ServerID { return raft.ServerID(ids[i].String()) }
	three := []raft.Server{{ID: sid(0), Suffrage: raft.Voter}, {ID: sid(1), Suffrage: raft.Voter}, {ID: sid(2), Suffrage: raft.Voter}, {ID: sid(3), Suffrage: raft.Nonvoter}}
	for _, tc := range []struct {
		name    string
		servers []raft.Server
		peers   []Peer
		want    bool
	}{
		{"alone, the only voter", three[:1], nil, true},
		{"one of three, others unknown", three, nil, false},
		{"two of three", three, []Peer{{ID: ids[1], Alive: true, LedgerState: true}}, true},
		{"two of three, in a ledger", three, []Peer{{ID: ids[1], Alive: true, ClusterID: ClusterID{1}}}, true},
		{"the other alive but not founded yet", three, []Peer{{ID: ids[1], Alive: true}}, false},
		{"one of three, one dead", three, []Peer{{ID: ids[1], Alive: false}, {ID: ids[2], Alive: false}}, false},
		{"non-voters do not count", three, []Peer{{ID: ids[3], Alive: true, LedgerState: true}}, false},
		{"no voters", nil, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := quorumAlive(sid(0), tc.servers, tc.peers); got != tc.want {
				t.Errorf("quorumAlive = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestDeadLeaderReplacedThroughGossip: with heartbeat and election
// timeouts of an hour raft alone would never replace a crashed leader
// within the test; the voters gossip makes stand do, and their timeouts
// are put back once a leader is known.
func TestDeadLeaderReplacedThroughGossip(t *testing.T) {
	c := newCluster(t, nil)
	c.tune = func(rc *raft.Config) {
		fastRaft(rc)
		rc.HeartbeatTimeout, rc.ElectionTimeout = time.Hour, time.Hour
	}
	nodes := c.startNodes("n1", "n2", "n3", "n4")
	c.converged()
	old := c.leader()
	waitFor(t, waitLong, "three voters", func() bool { return len(voterSet(old)) == 3 })
	// A crash, as the others see it: no raft traffic from or to the
	// leader, and gossip calls it dead.
	for _, n := range nodes {
		if n != old {
			c.net.Block(old.hostIP, n.hostIP)
			c.net.Block(n.hostIP, old.hostIP)
		}
	}
	c.setDead(old, true)
	var lead *tnode
	waitFor(t, waitLong, "a new leader among the others", func() bool {
		for _, n := range nodes {
			if n != old && n.l.Info().Role == "leader" {
				lead = n
				return true
			}
		}
		return false
	})
	waitFor(t, waitLong, "every voter's timeouts put back", func() bool {
		for _, n := range nodes {
			if rc := n.l.raft.Load().ReloadableConfig(); n != old && (rc.HeartbeatTimeout != time.Hour || rc.ElectionTimeout != time.Hour) {
				return false
			}
		}
		return true
	})
	if lead.l.Info().Role != "leader" {
		t.Errorf("%s no longer leads", lead.name)
	}
}
