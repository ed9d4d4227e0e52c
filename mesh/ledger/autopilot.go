package ledger

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/hashicorp/raft"
)

// leaderState is what a leader observed itself, on its own monotonic clock,
// since it became leader. A new term (a new leadership) starts from nothing,
// so a new leader starts counting again.
type leaderState struct {
	term       uint64
	ownerDead  map[NodeID]time.Time        // block owners not alive in gossip since
	serverDead map[raft.ServerID]time.Time // raft servers not alive in gossip since
	aliveSince map[raft.ServerID]time.Time // raft servers alive in gossip since
	founding   bool
}

func (l *Ledger) tick() time.Duration {
	t := min(time.Second, l.cfg.DeadVoterGrace/4, l.cfg.StableAfter/4, l.cfg.Lease/8)
	return max(t, 20*time.Millisecond)
}

// leaderLoop runs the leader's duties each tick: write the Found entry of a
// new ledger, manage voters (autopilot) and reclaim dead owners' blocks. A
// follower's duty is to stand for election when gossip says its leader is
// dead (standing).
func (l *Ledger) leaderLoop(ctx context.Context, r *raft.Raft) {
	t := time.NewTicker(l.tick())
	defer t.Stop()
	stand := newStanding(l.raftConfig())
	var ls *leaderState
	var lastView string
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-l.wake:
		}
		// Changes raft does not report to observers on every node (a
		// follower's role, the voters, the lease lapsing) still signal.
		if view := l.viewKey(); view != lastView {
			lastView = view
			l.notify()
		}
		peers, seen := l.peerView()
		stand.step(l, r, peers)
		if r.State() != raft.Leader {
			ls = nil
			continue
		}
		if term := r.CurrentTerm(); ls == nil || ls.term != term {
			ls = &leaderState{term: term, ownerDead: map[NodeID]time.Time{}, serverDead: map[raft.ServerID]time.Time{}, aliveSince: map[raft.ServerID]time.Time{}}
			l.log.Info("ledger: this node leads", "term", term)
		}
		st, _ := l.State()
		if !st.Founded() {
			l.found(r)
			continue
		}
		if !seen {
			continue // no gossip view yet: nobody can be judged dead
		}
		now := time.Now()
		l.autopilot(r, ls, &st, peers, now)
		l.reclaim(r, ls, peers, now)
	}
}

// found writes the Found entry of a new ledger: with the cluster ID this
// node promised to found with (see Bootstrap), else a random one. Founders
// that bootstrapped together each write it when they lead; the state
// machine applies only the first.
func (l *Ledger) found(r *raft.Raft) {
	id := l.foundCluster()
	if id.IsZero() {
		id = newClusterID()
	}
	c := Found{ClusterID: id, Pool: l.cfg.Pool, BlockBits: l.cfg.BlockBits}
	res, _, err := l.apply(r, c)
	switch {
	case err != nil:
		l.log.Warn("ledger: writing the Found entry failed; retrying", "err", err)
	case res.Err != nil:
		l.log.Warn("ledger: Found entry refused", "err", res.Err)
	default:
		l.log.Info("ledger founded", "cluster", c.ClusterID, "pool", c.Pool, "block_bits", c.BlockBits)
	}
}

// reclaim frees the block of every owner that gossip shows not alive and
// whose lease has ended by this leader's clock (see LeaseMargin). The
// entry carries the owner's ID and assignment index, so it frees nothing
// assigned since. An owner that gossip cannot see but that still renews
// its lease (gossip cut, the ledger port open) keeps its block.
func (l *Ledger) reclaim(r *raft.Raft, ls *leaderState, peers []Peer, now time.Time) {
	l.leases.mu.Lock()
	defer l.leases.mu.Unlock()
	// Read under the lock: every claim committed so far is in it, with
	// its grant recorded.
	st, _ := l.State()
	term := r.CurrentTerm()
	owners := make(map[NodeID]bool, len(st.Blocks))
	for b, o := range st.Blocks {
		owners[o.ID] = true
		if l.alive(peers, o.ID) {
			delete(ls.ownerDead, o.ID)
			continue
		}
		ends := l.leases.endsLocked(term, o.ID, now, l.cfg.Lease)
		if _, ok := ls.ownerDead[o.ID]; !ok {
			ls.ownerDead[o.ID] = now
			l.log.Info("ledger: block owner not alive; its block is reclaimed if it stays so until its lease has ended",
				"node", o.Name, "block", b, "in", ends.Sub(now).Round(time.Second))
		}
		if now.Before(ends) {
			continue
		}
		res, _, err := l.apply(r, Reclaim{Block: b, OwnerID: o.ID, OwnerIndex: o.Index})
		switch {
		case err != nil:
			l.log.Warn("ledger: reclaim failed", "node", o.Name, "block", b, "err", err)
			return
		case res.Err != nil:
			l.log.Info("ledger: reclaim skipped", "node", o.Name, "block", b, "reason", res.Err)
		default:
			l.metrics.reclaims.Inc()
			l.log.Warn("ledger: reclaimed the block of a node not alive whose lease has ended", "node", o.Name, "id", o.ID, "block", b,
				"dead_for", now.Sub(ls.ownerDead[o.ID]).Round(time.Second))
		}
		delete(ls.ownerDead, o.ID)
	}
	for id := range ls.ownerDead {
		if !owners[id] {
			delete(ls.ownerDead, id)
		}
	}
	l.leases.forgetLocked(func(id NodeID) bool { return owners[id] })
}

// autopilot keeps up to Voters live voters, as Consul's autopilot does:
// it re-adds live members of this ledger missing from the configuration,
// promotes non-voters alive for StableAfter, replaces a voter dead for
// DeadVoterGrace by adding the replacement first and removing the dead one
// after (never below the quorum of the current configuration), demotes
// surplus voters, and removes non-voters dead for DeadNonvoterAfter. One
// configuration change per tick, but promotions, which come in pairs to
// keep the count of voters odd (see promotions).
func (l *Ledger) autopilot(r *raft.Raft, ls *leaderState, st *State, peers []Peer, now time.Time) {
	f := r.GetConfiguration()
	if f.Error() != nil {
		return
	}
	servers := f.Configuration().Servers
	self := raft.ServerID(l.cfg.ID.String())
	inConfig := make(map[raft.ServerID]bool, len(servers))
	var liveVoters, deadVoters, candidates, deadNonvoters []raft.Server
	voters := 0
	for _, s := range servers {
		inConfig[s.ID] = true
		id, err := ParseNodeID(string(s.ID))
		alive := err == nil && l.alive(peers, id)
		if alive {
			delete(ls.serverDead, s.ID)
			if _, ok := ls.aliveSince[s.ID]; !ok {
				ls.aliveSince[s.ID] = now
			}
		} else {
			delete(ls.aliveSince, s.ID)
			if _, ok := ls.serverDead[s.ID]; !ok {
				ls.serverDead[s.ID] = now
			}
		}
		switch {
		case s.Suffrage == raft.Voter && alive:
			voters++
			liveVoters = append(liveVoters, s)
		case s.Suffrage == raft.Voter:
			voters++
			if now.Sub(ls.serverDead[s.ID]) >= l.cfg.DeadVoterGrace && s.ID != self {
				deadVoters = append(deadVoters, s)
			}
		case alive:
			if now.Sub(ls.aliveSince[s.ID]) >= l.cfg.StableAfter {
				candidates = append(candidates, s)
			}
		default:
			if now.Sub(ls.serverDead[s.ID]) >= l.cfg.DeadNonvoterAfter {
				deadNonvoters = append(deadNonvoters, s)
			}
		}
	}
	for id := range ls.aliveSince {
		if !inConfig[id] {
			delete(ls.aliveSince, id)
		}
	}
	for id := range ls.serverDead {
		if !inConfig[id] {
			delete(ls.serverDead, id)
		}
	}
	// Longest alive first, then by ID: a stable, deterministic choice.
	slices.SortFunc(candidates, func(a, b raft.Server) int {
		if c := ls.aliveSince[a.ID].Compare(ls.aliveSince[b.ID]); c != 0 {
			return c
		}
		return compareIDs(a.ID, b.ID)
	})

	// Raft refuses two servers at one address. A server whose address
	// another ID now uses (a host reinstalled under a new ID) leaves by the
	// dead-voter and dead-non-voter rules below; until then the changes
	// that need its address wait, and the rest of the tick goes on.
	heldBy := make(map[raft.ServerAddress]raft.ServerID, len(servers))
	for _, s := range servers {
		heldBy[s.Address] = s.ID
	}
	addressFree := func(id raft.ServerID, addr raft.ServerAddress) bool {
		holder, held := heldBy[addr]
		return !held || holder == id
	}

	// Members of this ledger that gossip sees alive but the configuration
	// lacks (removed while dead, or after a recovery) come back as non-voters.
	for _, p := range peers {
		if !p.Alive || p.ClusterID != st.ClusterID || !p.Addr.IsValid() || inConfig[raft.ServerID(p.ID.String())] || p.ID.IsZero() {
			continue
		}
		if !addressFree(raft.ServerID(p.ID.String()), raft.ServerAddress(p.Addr.String())) {
			continue
		}
		l.change(r, "re-add member as non-voter", p.Name, r.AddNonvoter(raft.ServerID(p.ID.String()), raft.ServerAddress(p.Addr.String()), 0, applyTimeout))
		return
	}
	// A member whose address changed (new host IP): raft must dial the new
	// one. Only when gossip shows that ID alive at exactly one address.
	for _, s := range servers {
		id, err := ParseNodeID(string(s.ID))
		if err != nil || s.ID == self {
			continue
		}
		var at []netip.AddrPort
		for _, p := range peers {
			if p.ID == id && p.Alive && p.Addr.IsValid() && !slices.Contains(at, p.Addr) {
				at = append(at, p.Addr)
			}
		}
		if len(at) != 1 || raft.ServerAddress(at[0].String()) == s.Address || !addressFree(s.ID, raft.ServerAddress(at[0].String())) {
			continue
		}
		name := l.serverName(peers, st, s.ID)
		if s.Suffrage == raft.Voter {
			l.change(r, "update voter address to "+at[0].String(), name, r.AddVoter(s.ID, raft.ServerAddress(at[0].String()), 0, applyTimeout))
		} else {
			l.change(r, "update non-voter address to "+at[0].String(), name, r.AddNonvoter(s.ID, raft.ServerAddress(at[0].String()), 0, applyTimeout))
		}
		return
	}
	quorum := voters/2 + 1
	if len(deadVoters) > 0 {
		if len(liveVoters) < l.cfg.Voters && len(candidates) > 0 {
			c := candidates[0]
			l.change(r, "promote non-voter to replace a dead voter", l.serverName(peers, st, c.ID), r.AddVoter(c.ID, c.Address, 0, applyTimeout))
			return
		}
		// Remove one dead voter if what remains still holds the quorum of
		// the current configuration, so no removal can cost a majority.
		if voters-1 >= quorum {
			d := deadVoters[0]
			l.change(r, "remove dead voter", l.serverName(peers, st, d.ID), r.RemoveServer(d.ID, 0, applyTimeout))
			return
		}
	}
	if n := promotions(voters, l.cfg.Voters, len(candidates)); n > 0 {
		for _, c := range candidates[:n] {
			l.change(r, "promote non-voter", l.serverName(peers, st, c.ID), r.AddVoter(c.ID, c.Address, 0, applyTimeout))
		}
		return
	}
	if voters > l.cfg.Voters && len(deadVoters) == 0 && len(liveVoters) > l.cfg.Voters {
		// Surplus live voters (a dead voter came back after its
		// replacement): demote the most recently alive one, never the leader.
		slices.SortFunc(liveVoters, func(a, b raft.Server) int { return ls.aliveSince[b.ID].Compare(ls.aliveSince[a.ID]) })
		for _, v := range liveVoters {
			if v.ID != self {
				l.change(r, "demote surplus voter", l.serverName(peers, st, v.ID), r.DemoteVoter(v.ID, 0, applyTimeout))
				return
			}
		}
	}
	if len(deadNonvoters) > 0 {
		d := deadNonvoters[0]
		l.change(r, "remove long-dead non-voter", l.serverName(peers, st, d.ID), r.RemoveServer(d.ID, 0, applyTimeout))
	}
}

// promotions says how many of the stable non-voters to promote now, with
// voters voters of the wanted target. The count of voters stays odd: an
// even count survives no more failures than the odd count below it but
// needs one more voter to agree, and two voters lose the quorum with
// either. So a single voter with one candidate stays alone, and a single
// voter with two candidates promotes both back to back, rather than leave
// the ledger a tick with two voters.
func promotions(voters, target, candidates int) int {
	n := 2
	if voters%2 == 0 {
		n = 1 // after a removal: one more makes the count odd again
	}
	if voters >= target || candidates < n || voters+n > target {
		return 0
	}
	return n
}

func compareIDs(a, b raft.ServerID) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (l *Ledger) serverName(peers []Peer, st *State, id raft.ServerID) string {
	return l.nameOf(peers, st, string(id))
}

func (l *Ledger) change(r *raft.Raft, what, node string, f raft.IndexFuture) {
	if err := f.Error(); err != nil {
		l.log.Warn("ledger autopilot: "+what+" failed", "node", node, "err", err)
		return
	}
	announceCommit(r)
	l.log.Info("ledger autopilot: "+what, "node", node)
	l.notify()
}

// viewKey summarizes what Changed promises to signal besides the state.
func (l *Ledger) viewKey() string {
	info := l.Info()
	return fmt.Sprint(info.ClusterID, info.Role, info.Leader, info.Voters)
}
