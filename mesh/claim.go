package mesh

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// claimResult is the outcome of one claim attempt.
type claimResult int

const (
	claimSucceeded claimResult = iota
	claimNoQuorum
	claimContended
	claimExhausted
	claimError
)

func (r claimResult) String() string {
	return [...]string{"succeeded", "no_quorum", "contended", "exhausted", "error"}[r]
}

// claimLoop restores or claims this node's block and claims a new one
// whenever it loses it (a conflict, a release). Between attempts it backs off
// with jitter; membership changes wake it early, but never sooner than the
// minimum backoff, so a busy cluster cannot spin it.
func (m *Mesh) claimLoop(ctx context.Context, saved *savedClaim) {
	if saved != nil {
		m.restore(ctx, saved)
	}
	failures := 0
	for {
		var wait time.Duration
		if m.holdsBlock(ctx) {
			failures = 0
			wait = -1 // until woken
		} else {
			res := m.claimOnce(ctx)
			m.metrics.claims.WithLabelValues(res.String()).Inc()
			if ctx.Err() != nil {
				return
			}
			if res == claimSucceeded {
				failures = 0
				continue
			}
			failures++
			wait = claimBackoff(res, failures)
		}
		if !m.sleep(ctx, wait) {
			return
		}
	}
}

// claimBackoff is the pause after a failed attempt: short for a lost race
// (another candidate is likely free), longer and growing when the cluster
// cannot decide (no quorum) or has nothing to give (pool exhausted).
func claimBackoff(res claimResult, failures int) time.Duration {
	var base, ceiling time.Duration
	switch res {
	case claimContended:
		base, ceiling = 20*time.Millisecond, time.Second
	case claimExhausted:
		base, ceiling = time.Second, 5*time.Second
	default:
		base, ceiling = 200*time.Millisecond, 10*time.Second
	}
	d := base << min(failures-1, 10)
	d = min(d, ceiling)
	return d/2 + rand.N(d/2+1)
}

// sleep waits d (forever if negative) or until woken; a wake-up before the
// minimum pause still waits that long. It returns false when ctx ends.
func (m *Mesh) sleep(ctx context.Context, d time.Duration) bool {
	var timer <-chan time.Time
	if d >= 0 {
		timer = time.After(d)
	}
	start := time.Now()
	select {
	case <-ctx.Done():
		return false
	case <-timer:
		return true
	case <-m.wake:
	}
	if rest := min(d, 50*time.Millisecond) - time.Since(start); d >= 0 && rest > 0 {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(rest):
		}
	}
	return true
}

// holdsBlock reports whether this node still holds a block nobody took
// from it. When it has lost it (an older claim advertises it, or the table
// says it was released or superseded) it withdraws the block, marks the node
// degraded, and returns false.
func (m *Mesh) holdsBlock(ctx context.Context) bool {
	m.mu.Lock()
	b := m.own.Block
	if !b.IsValid() {
		m.mu.Unlock()
		return false
	}
	winner := m.blockWinnersLocked()[b].name
	var why string
	if winner != m.cfg.NodeName {
		why = fmt.Sprintf("lost block %s to %s (older claim); restart pods created before", b, winner)
	} else if r, ok := m.table[m.cfg.NodeName]; ok && r.Gen >= m.own.Gen && (r.Released || r.Block != b) {
		why = fmt.Sprintf("block %s was released or reassigned while this node was away; restart pods created before", b)
	}
	if why == "" {
		m.mu.Unlock()
		return true
	}
	m.own = ownClaim{Gen: max(m.own.Gen, m.table[m.cfg.NodeName].Gen)}
	m.degraded = why
	m.reason = "lost its block; claiming a new one"
	m.mu.Unlock()
	m.metrics.conflicts.Inc()
	m.log.Error("this node lost its block; pods created with addresses from it must be restarted", "block", b, "reason", why)
	m.advertise()
	m.notify()
	return false
}

// restore takes back the saved claim without a vote, after the join's
// push/pull showed the cluster's table, unless that table says the claim
// was released or superseded.
func (m *Mesh) restore(ctx context.Context, saved *savedClaim) {
	m.mu.Lock()
	rec, known := m.table[m.cfg.NodeName]
	if known && rec.Gen >= saved.Gen && (rec.Released || rec.Block != saved.Block) {
		m.own.Gen = rec.Gen
		m.degraded = fmt.Sprintf("saved block %s was released or reassigned while this node was away; restart pods created before", saved.Block)
		m.mu.Unlock()
		m.log.Error("the saved block is no longer this node's; claiming a new one", "block", saved.Block, "record", rec.Block, "released", rec.Released)
		return
	}
	gen := max(saved.Gen, rec.Gen) + 1
	m.own = ownClaim{Block: saved.Block, Since: saved.Since, Gen: gen}
	r := Record{Node: m.cfg.NodeName, Block: saved.Block, HostIP: m.cfg.AdvertiseAddr, Since: saved.Since, Gen: gen}
	m.table[m.cfg.NodeName] = r
	m.mu.Unlock()
	m.metrics.claims.WithLabelValues("restored").Inc()
	m.log.Info("restored the saved block", "block", saved.Block, "since", saved.Since)
	if err := saveClaim(m.cfg.StateDir, savedClaim{Node: m.cfg.NodeName, Block: r.Block, Since: r.Since, Gen: r.Gen}); err != nil {
		m.log.Error("update the saved claim", "err", err)
	}
	m.advertise()
	m.broadcast(r)
	m.tellLive(r)
	m.notify()
	m.pushStateToLive()
}

// maxStatePushes bounds how many members a restarted node exchanges full
// state with directly.
const maxStatePushes = 16

// pushStateToLive exchanges full state (memberlist's push/pull) with up to
// maxStatePushes live members. Peers still hold a restarted node as left or
// dead, at a higher incarnation than the one it started with, and ignore it
// until its refutation reaches them. memberlist refutes during the join's
// push/pull with the seed, but then spreads the refutation by gossip; a direct
// exchange puts it, with the restored block, on every peer at once.
func (m *Mesh) pushStateToLive() {
	m.mu.Lock()
	var addrs []string
	for _, p := range m.peers {
		if p.usable() && len(addrs) < maxStatePushes {
			addrs = append(addrs, p.addr.String())
		}
	}
	m.mu.Unlock()
	if len(addrs) == 0 {
		return
	}
	if _, err := m.ml.Join(addrs); err != nil {
		m.log.Debug("state exchange after restore", "err", err)
	}
}

// tellLive sends records straight to every live member, so they route a new
// claim without waiting for the metadata update to be gossiped.
func (m *Mesh) tellLive(recs ...Record) {
	m.mu.Lock()
	addrs := make(map[string]netip.AddrPort, len(m.peers))
	names := make([]string, 0, len(m.peers))
	for _, p := range m.peers {
		if p.usable() {
			addrs[p.name] = p.addr
			names = append(names, p.name)
		}
	}
	m.mu.Unlock()
	m.sendAll(names, addrs, encodeRecords(recs))
}

// advertise pushes this node's metadata to the cluster. memberlist drops an
// update whose incarnation a concurrent refutation (carrying the old
// metadata) overtook, so it checks what was applied and tries again.
func (m *Mesh) advertise() {
	for range 5 {
		// The new metadata is applied locally at once and gossiped from
		// there; waiting for the first transmission would only delay
		// shutdown when the network is gone, so the wait is minimal and
		// its timeout expected.
		_ = m.ml.UpdateNode(time.Nanosecond)
		m.mu.Lock()
		want, _ := m.ownMetaLocked()
		applied := string(want) == string(m.advertised)
		m.mu.Unlock()
		if applied {
			return
		}
	}
	m.log.Error("metadata update did not take; peers see the previous claim until the next update")
}

// claimOnce runs one vote for the best free block.
func (m *Mesh) claimOnce(ctx context.Context) claimResult {
	m.mu.Lock()
	for quiet := time.Since(m.grewAt); quiet < m.settle; quiet = time.Since(m.grewAt) {
		m.mu.Unlock()
		select {
		case <-ctx.Done():
			return claimError
		case <-time.After(m.settle - quiet):
		}
		m.mu.Lock()
	}
	block, free, total := m.candidateLocked()
	if !block.IsValid() {
		m.reason = fmt.Sprintf("pool %s exhausted: %d blocks of /%d all held", m.cfg.Pool, total, m.cfg.BlockBits)
		m.mu.Unlock()
		m.log.Warn("cannot claim a block", "reason", m.reasonSnapshot())
		m.notify()
		return claimExhausted
	}
	electorate := m.electorateLocked()
	m.mu.Unlock()
	m.metrics.claimAttempts.Inc()
	m.log.Debug("claiming", "block", block, "free", free, "electorate", len(electorate))

	out := m.vote(ctx, block, electorate)
	if out.result == claimSucceeded {
		return m.commit(block, len(out.granters))
	}
	m.mu.Lock()
	if out.result == claimContended {
		m.contested[block] = m.now().Add(contestedFor)
	}
	if out.reason != "" {
		m.reason = out.reason
	}
	m.mu.Unlock()
	return out.result
}

func (m *Mesh) reasonSnapshot() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.reason
}

// voteOutcome is the result of asking an electorate for one block.
type voteOutcome struct {
	result   claimResult
	reason   string
	granters []string
}

// ballot collects the answers to one vote request.
type ballot struct {
	replies chan voteResponse
	done    chan struct{} // closed when the vote is over
}

// maxExpansions bounds how often one vote grows its electorate.
const maxExpansions = 16

// vote asks every member of the electorate to promise block to this node.
// A voter that counts members this node did not refuses and names them;
// they join the electorate, are asked too, and the refuser is asked again.
// Grants already given stay valid: a voter's electorate that was inside the
// smaller one is inside the larger one. The vote waits for every answer, not
// just a majority: a single refusal means some member knows a competing
// claim or promise, and waiting for all makes two claims of one block need
// disjoint sets of responders, which overlapping views do not give. Members
// that stay silent until the timeout are presumed dead; a majority may still
// carry.
func (m *Mesh) vote(ctx context.Context, block netip.Prefix, electorate map[string]netip.AddrPort) voteOutcome {
	self := m.cfg.NodeName
	reachable := 0
	for _, addr := range electorate {
		if addr.IsValid() {
			reachable++
		}
	}
	if quorum := len(electorate)/2 + 1; reachable < quorum {
		return voteOutcome{result: claimNoQuorum, reason: noQuorum(reachable, quorum, len(electorate))}
	}

	m.mu.Lock()
	now := m.now()
	if p, ok := m.promises[block]; ok && p.claimant != self && now.Before(p.expires) {
		m.mu.Unlock()
		return voteOutcome{result: claimContended}
	}
	m.voteID++
	id := m.voteID
	m.promises[block] = promise{claimant: self, id: id, expires: now.Add(promiseTTL)}
	b := &ballot{replies: make(chan voteResponse, 64), done: make(chan struct{})}
	m.votes[id] = b
	m.mu.Unlock()
	var sends sync.WaitGroup
	defer sends.Wait()
	defer func() {
		m.mu.Lock()
		delete(m.votes, id)
		m.mu.Unlock()
		close(b.done)
	}()

	from := netip.AddrPortFrom(m.cfg.AdvertiseAddr, uint16(m.cfg.Port))
	asked := map[string]bool{self: true}
	outstanding := 0
	// ask sends the request, with the electorate as it stands, to names.
	ask := func(names []string) {
		all := make([]string, 0, len(electorate))
		for name := range electorate {
			all = append(all, name)
		}
		slices.Sort(all)
		msg := voteRequest{ID: id, Claimant: self, From: from, Block: block, Electorate: all}.encode()
		addrs := make(map[string]netip.AddrPort, len(names))
		for _, n := range names {
			addrs[n] = electorate[n]
			asked[n] = true
		}
		outstanding += len(names)
		sends.Go(func() { m.sendAll(names, addrs, msg) })
	}
	var first []string
	for name, addr := range electorate {
		if name != self && addr.IsValid() {
			first = append(first, name)
		}
	}
	ask(first)

	granted := map[string]bool{self: true}
	answered := map[string]bool{self: true}
	conflict := false
	expansions := 0
	timeout := time.NewTimer(voteTimeout)
	defer timeout.Stop()
wait:
	for outstanding > 0 && !conflict {
		select {
		case <-ctx.Done():
			return m.abortVote(id, block, granted, electorate, voteOutcome{result: claimError})
		case <-timeout.C:
			break wait
		case r := <-b.replies:
			if !asked[r.Voter] {
				continue // not a member this vote asked
			}
			outstanding--
			answered[r.Voter] = true
			switch {
			case r.Granted:
				granted[r.Voter] = true
			case len(r.Missing) > 0:
				if expansions++; expansions > maxExpansions {
					conflict = true // membership changes faster than the vote
					break
				}
				again := []string{r.Voter}
				for _, p := range r.Missing {
					if cur, ok := electorate[p.Name]; ok && cur.IsValid() {
						continue
					}
					electorate[p.Name] = p.Addr
					if p.Addr.IsValid() && !asked[p.Name] {
						again = append(again, p.Name)
					}
				}
				ask(again)
			default:
				conflict = true
			}
		}
	}
	quorum := len(electorate)/2 + 1
	switch {
	case conflict:
		return m.abortVote(id, block, granted, electorate, voteOutcome{result: claimContended})
	case len(answered) < quorum:
		return m.abortVote(id, block, granted, electorate, voteOutcome{result: claimNoQuorum, reason: noQuorum(len(answered), quorum, len(electorate))})
	case len(granted) < quorum:
		return m.abortVote(id, block, granted, electorate, voteOutcome{result: claimContended})
	}
	names := make([]string, 0, len(granted))
	for n := range granted {
		names = append(names, n)
	}
	return voteOutcome{result: claimSucceeded, granters: names}
}

func noQuorum(reached, needed, electorate int) string {
	return fmt.Sprintf("no quorum: reached %d of needed %d (electorate %d)", reached, needed, electorate)
}

// abortVote tells the granters to drop their promises and drops this node's
// own.
func (m *Mesh) abortVote(id uint64, block netip.Prefix, granted map[string]bool, electorate map[string]netip.AddrPort, out voteOutcome) voteOutcome {
	m.mu.Lock()
	if p, ok := m.promises[block]; ok && p.claimant == m.cfg.NodeName && p.id == id {
		delete(m.promises, block)
	}
	m.mu.Unlock()
	others := make([]string, 0, len(granted))
	for n := range granted {
		if n != m.cfg.NodeName {
			others = append(others, n)
		}
	}
	m.sendAll(others, electorate, voteAbort{ID: id, Claimant: m.cfg.NodeName, Block: block}.encode())
	return out
}

// sendAll sends msg reliably to the named members in parallel and waits for
// the sends, so one unreachable member costs one TCP timeout, not many.
func (m *Mesh) sendAll(names []string, addrs map[string]netip.AddrPort, msg []byte) {
	var wg sync.WaitGroup
	for _, name := range names {
		addr := addrs[name]
		if !addr.IsValid() {
			continue
		}
		wg.Go(func() {
			if err := m.ml.SendReliable(memberNode(name, addr), msg); err != nil {
				m.log.Debug("send to member", "member", name, "err", err)
			}
		})
	}
	wg.Wait()
}

// commit makes a won vote this node's claim: saved to disk first (so a
// crash cannot advertise a block the restart forgets), then advertised in
// metadata, gossiped as a record, and sent to every live member so granters
// drop their promises, every voter refuses the block, and every peer routes
// it at once.
func (m *Mesh) commit(block netip.Prefix, votes int) claimResult {
	m.mu.Lock()
	delete(m.promises, block) // this node's own promise: the vote is over
	if m.isHeldLocked(block, m.cfg.NodeName) {
		// A competing claim arrived while the vote ran: keep out of it.
		m.contested[block] = m.now().Add(contestedFor)
		m.mu.Unlock()
		m.log.Warn("block was claimed by another node during the vote; trying another", "block", block)
		return claimContended
	}
	now := m.now().Truncate(time.Millisecond)
	gen := max(m.own.Gen, m.table[m.cfg.NodeName].Gen) + 1
	rec := Record{Node: m.cfg.NodeName, Block: block, HostIP: m.cfg.AdvertiseAddr, Since: now, Gen: gen}
	m.mu.Unlock()

	if err := saveClaim(m.cfg.StateDir, savedClaim{Node: rec.Node, Block: block, Since: now, Gen: gen}); err != nil {
		m.mu.Lock()
		m.reason = "cannot save the claim: " + err.Error()
		m.mu.Unlock()
		m.log.Error("claim won but not saved; retrying", "block", block, "err", err)
		return claimError
	}

	// A competing claim arriving from here on is a conflict like any
	// other: the older claim keeps the block on every node.
	m.mu.Lock()
	m.own = ownClaim{Block: block, Since: now, Gen: gen}
	m.table[rec.Node] = rec
	m.reason = ""
	changed := []Record{rec}
	// A dead owner's block taken after ReclaimAfter: its record is marked
	// released, so the owner claims anew if it ever comes back.
	for name, r := range m.table {
		if name != rec.Node && r.Block == block && !r.Released {
			r.Released = true
			r.Gen++
			m.table[name] = r
			changed = append(changed, r)
		}
	}
	m.mu.Unlock()

	m.log.Info("claimed a block", "block", block, "votes", votes)
	m.advertise()
	m.broadcast(changed...)
	m.tellLive(changed...)
	m.notify()
	return claimSucceeded
}

// candidateLocked picks the free block this node prefers: the highest
// rendezvous hash of (node, block), so nodes claiming at once mostly want
// different blocks. It returns the number of free blocks and of all blocks.
func (m *Mesh) candidateLocked() (best netip.Prefix, free, total int) {
	held := m.heldLocked(m.cfg.NodeName)
	now := m.now()
	base := m.cfg.Pool.Addr().As4()
	start := binary.BigEndian.Uint32(base[:])
	total = 1 << (m.cfg.BlockBits - m.cfg.Pool.Bits())
	step := uint64(1) << (32 - m.cfg.BlockBits)
	var bestScore uint64
	var fallback netip.Prefix
	var fallbackScore uint64
	for i := range total {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], uint32(uint64(start)+uint64(i)*step))
		b := netip.PrefixFrom(netip.AddrFrom4(a), m.cfg.BlockBits)
		if held[b] {
			continue
		}
		free++
		score := rendezvous(m.cfg.NodeName, a)
		if until, ok := m.contested[b]; ok && now.Before(until) {
			if !fallback.IsValid() || score > fallbackScore {
				fallback, fallbackScore = b, score
			}
			continue
		}
		if !best.IsValid() || score > bestScore {
			best, bestScore = b, score
		}
	}
	if !best.IsValid() {
		best = fallback
	}
	return best, free, total
}

func rendezvous(node string, block [4]byte) uint64 {
	h := fnv.New64a()
	h.Write([]byte(node))
	h.Write(block[:])
	return h.Sum64()
}

// heldLocked returns the blocks that are not free for claimant (see
// eachHeldLocked).
func (m *Mesh) heldLocked(claimant string) map[netip.Prefix]bool {
	held := make(map[netip.Prefix]bool)
	m.eachHeldLocked(claimant, func(b netip.Prefix) bool {
		held[b] = true
		return true
	})
	return held
}

// isHeldLocked reports whether block is not free for claimant, without
// allocating: voters answer many requests.
func (m *Mesh) isHeldLocked(block netip.Prefix, claimant string) bool {
	found := false
	m.eachHeldLocked(claimant, func(b netip.Prefix) bool {
		found = b == block
		return !found
	})
	return found
}

// eachHeldLocked calls yield with every block that is not free for
// claimant, possibly more than once, until yield returns false: blocks
// advertised by a live member, recorded for an owner that is alive or died
// less than ReclaimAfter ago (or whose fate is unknown), or promised to
// another claimant.
func (m *Mesh) eachHeldLocked(claimant string, yield func(netip.Prefix) bool) {
	now := m.now()
	if m.own.Block.IsValid() && claimant != m.cfg.NodeName && !yield(m.own.Block) {
		return
	}
	for _, p := range m.peers {
		if b, _ := m.claimOfLocked(p); b.IsValid() && p.name != claimant && !yield(b) {
			return
		}
	}
	for name, r := range m.table {
		if name == claimant || r.Released {
			continue
		}
		if m.isLiveLocked(name) || r.DeadAt.IsZero() || now.Sub(r.DeadAt) < m.cfg.ReclaimAfter {
			if !yield(r.Block) {
				return
			}
		}
	}
	for b, p := range m.promises {
		if p.claimant != claimant && now.Before(p.expires) && !yield(b) {
			return
		}
	}
}

// electorateLocked returns the members whose votes count, with their gossip
// addresses (see eachElectorLocked).
func (m *Mesh) electorateLocked() map[string]netip.AddrPort {
	e := make(map[string]netip.AddrPort, len(m.peers)+1)
	m.eachElectorLocked(func(name string, addr netip.AddrPort) { e[name] = addr })
	return e
}

// eachElectorLocked calls fn once for every member whose vote counts, with
// its gossip address (zero for those that cannot be asked): this node, every
// live member with valid metadata (a member whose metadata is rejected holds
// nothing here and gets no say either), and every owner of an unreleased
// claim that is alive or died less than ReclaimAfter ago. Counting the
// recently dead keeps a minority side of a partition from claiming.
func (m *Mesh) eachElectorLocked(fn func(string, netip.AddrPort)) {
	now := m.now()
	fn(m.cfg.NodeName, netip.AddrPortFrom(m.cfg.AdvertiseAddr, uint16(m.cfg.Port)))
	for _, p := range m.peers {
		if p.usable() {
			fn(p.name, p.addr)
		}
	}
	for name, r := range m.table {
		if name == m.cfg.NodeName || r.Released {
			continue
		}
		if p, ok := m.peers[name]; ok && p.usable() {
			continue
		}
		if r.DeadAt.IsZero() || now.Sub(r.DeadAt) < m.cfg.ReclaimAfter {
			fn(name, netip.AddrPort{})
		}
	}
}

// handleVoteRequest answers a claimant: grant (and promise) only if the
// block is free here, nobody else holds a promise of it, and the claimant's
// electorate includes every member this node counts.
func (m *Mesh) handleVoteRequest(req voteRequest) {
	if err := m.rules.checkBlock(req.Block); err != nil || !req.From.IsValid() {
		m.metrics.rejectedRecords.WithLabelValues(rejectReason(err)).Inc()
		m.log.Warn("rejected vote request", "claimant", req.Claimant, "block", req.Block, "err", err)
		return
	}
	resp := voteResponse{ID: req.ID, Voter: m.cfg.NodeName}
	m.mu.Lock()
	if req.Claimant == m.cfg.NodeName {
		m.mu.Unlock()
		return
	}
	now := m.now()
	m.eachElectorLocked(func(name string, addr netip.AddrPort) {
		if _, ok := slices.BinarySearch(req.Electorate, name); !ok && name != req.Claimant {
			resp.Missing = append(resp.Missing, peerAddr{Name: name, Addr: addr})
		}
	})
	if len(resp.Missing) == 0 && !m.isHeldLocked(req.Block, req.Claimant) {
		resp.Granted = true
		m.promises[req.Block] = promise{claimant: req.Claimant, id: req.ID, expires: now.Add(promiseTTL)}
	}
	// A request can arrive between memberlist.Create starting its
	// listeners and Run storing the handle; the claimant asks again.
	ml := m.ml
	m.mu.Unlock()
	if ml == nil {
		return
	}
	if resp.Granted {
		m.metrics.votes.WithLabelValues("granted").Inc()
	} else {
		m.metrics.votes.WithLabelValues("refused").Inc()
	}
	if err := ml.SendReliable(memberNode(req.Claimant, req.From), resp.encode()); err != nil {
		m.log.Debug("answer vote request", "claimant", req.Claimant, "err", err)
	}
}

func (m *Mesh) handleVoteResponse(resp voteResponse) {
	m.mu.Lock()
	b, ok := m.votes[resp.ID]
	m.mu.Unlock()
	if !ok {
		return // late answer to a finished vote
	}
	select {
	case b.replies <- resp:
	case <-b.done:
	}
}

func (m *Mesh) handleVoteAbort(a voteAbort) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, ok := m.promises[a.Block]; ok && p.claimant == a.Claimant && p.id == a.ID {
		delete(m.promises, a.Block)
	}
}
