package ledger

import (
	"time"

	"github.com/hashicorp/raft"
)

// A follower learns that its leader is gone from gossip long before raft's
// heartbeat timeout would tell it (10-20 s with the ledger's timers):
// memberlist declares a crashed host dead in about 5 s in a small cluster.
// Then every voter that hears it shortens its timeouts (standing), so the
// ledger fails over about as fast as with raft's own timeout at 3 s, while
// its heartbeats cost a third as much. A voter votes for no one while it
// still knows a leader, so all voters forget the dead one, not only one
// of them; pre-voting keeps the first to stand from splitting the vote.
// A voter that knows no leader (its leader stepped down) stands as soon.

// shouldStand reports whether the voter self should stand for election
// soon: the leader it follows is dead in gossip, or it knows no leader (a
// leader that stepped down, say, whose followers would otherwise wait out
// the whole timeout), and a majority of the voters is alive in gossip. A
// leader gossip does not know (not heard of yet, or forgotten) is not
// taken for dead. Standing only shortens the timeout: a voter that hears
// from a leader never stands.
func shouldStand(self, leader raft.ServerID, servers []raft.Server, peers []Peer) bool {
	if leader == self {
		return false
	}
	if known, alive := inGossip(peers, leader); leader != "" && (!known || alive) {
		return false
	}
	return isVoter(self, servers) && quorumAlive(self, servers, peers)
}

func isVoter(id raft.ServerID, servers []raft.Server) bool {
	for _, s := range servers {
		if s.ID == id {
			return s.Suffrage == raft.Voter
		}
	}
	return false
}

// quorumAlive reports whether a majority of the voters are self or alive in
// gossip with ledger state (a founder that has not founded yet has no
// raft to vote with): only then can an election be won. A voter that
// stands without one fails its pre-vote and waits out its election
// timeout (10-20 s) before it tries again, however soon the others come
// up.
func quorumAlive(self raft.ServerID, servers []raft.Server, peers []Peer) bool {
	voters, alive := 0, 0
	for _, s := range servers {
		if s.Suffrage != raft.Voter {
			continue
		}
		voters++
		if s.ID == self || canVote(peers, s.ID) {
			alive++
		}
	}
	return voters > 0 && alive > voters/2
}

// canVote says whether gossip shows the raft server id alive with ledger
// state.
func canVote(peers []Peer, id raft.ServerID) bool {
	for _, p := range peers {
		if p.ID.String() == string(id) {
			return p.Alive && (p.LedgerState || !p.ClusterID.IsZero())
		}
	}
	return false
}

// inGossip says whether gossip knows the raft server id, and whether alive.
func inGossip(peers []Peer, id raft.ServerID) (known, alive bool) {
	for _, p := range peers {
		if p.ID.String() == string(id) {
			return true, p.Alive
		}
	}
	return false, false
}

// standing is a voter's part of the leader loop. While its leader is dead
// in gossip it lowers raft's heartbeat and election timeouts to the leader
// lease (raft's lower bound for them): raft's follower re-checks at once,
// and stands when it has not heard from its leader for that long. Once a
// leader is known again the timeouts are put back.
type standing struct {
	heartbeat, election, lease time.Duration // raft's, as configured
	lowered                    bool
}

func newStanding(c *raft.Config) *standing {
	return &standing{heartbeat: c.HeartbeatTimeout, election: c.ElectionTimeout, lease: c.LeaderLeaseTimeout}
}

func (s *standing) step(l *Ledger, r *raft.Raft, peers []Peer) {
	_, leader := r.LeaderWithID()
	if s.lowered {
		if _, alive := inGossip(peers, leader); r.State() == raft.Leader || alive {
			s.setTimeouts(l, r, s.heartbeat, s.election)
		}
		return
	}
	if r.State() != raft.Follower {
		return
	}
	f := r.GetConfiguration()
	if f.Error() != nil {
		return
	}
	self, servers := raft.ServerID(l.cfg.ID.String()), f.Configuration().Servers
	if leader != "" {
		l.founderStands.Store(false)
	}
	if leader == "" && l.founderStands.Load() && quorumAlive(self, servers, peers) {
		// The first of a new ledger's founders stands at once, but only
		// once it can win (quorumAlive).
		l.founderStands.Store(false)
		if err := electNow(r); err != nil {
			l.log.Warn("founding: cannot stand for election at once; waiting for the heartbeat timeout", "err", err)
		}
		return
	}
	if !shouldStand(self, leader, servers, peers) {
		return
	}
	st, _ := l.State()
	if leader == "" {
		l.log.Info("ledger: no leader known; standing for election unless one is heard from within the leader lease")
	} else {
		l.log.Info("ledger: the leader is dead in gossip; standing for election", "leader", l.nameOf(peers, &st, string(leader)))
	}
	s.setTimeouts(l, r, s.lease, s.lease)
}

func (s *standing) setTimeouts(l *Ledger, r *raft.Raft, heartbeat, election time.Duration) {
	rc := r.ReloadableConfig()
	rc.HeartbeatTimeout, rc.ElectionTimeout = heartbeat, election
	if err := r.ReloadConfig(rc); err != nil {
		l.log.Warn("ledger: cannot change raft's timeouts", "heartbeat", heartbeat, "election", election, "err", err)
		return
	}
	s.lowered = heartbeat < s.heartbeat
}
