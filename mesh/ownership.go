package mesh

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"time"

	"github.com/grapevine-net/grapevine/internal/hostclock"
	"github.com/grapevine-net/grapevine/mesh/ledger"
)

// Timings of the ownership loop.
const (
	// maxStepInterval is how often, at most, the loop looks again without
	// a nudge: the lease ends and the leader's reachability changes
	// without events. Idle, each look costs a copy of the ledger's state.
	maxStepInterval = 5 * time.Second
	// maxRenewInterval caps how long the loop waits between renewals of a
	// long lease: one claim an hour per node is still next to nothing.
	maxRenewInterval = time.Hour
	// ledgerCallTimeout bounds one claim or join request.
	ledgerCallTimeout = 5 * time.Second
	// leaderlessRejoin is how long this node goes without a known leader
	// before it asks to join again (the leader may have removed it while
	// it was away).
	leaderlessRejoin = 5 * time.Second
)

// renewInterval is how long after a grant this node renews its lease: a
// quarter of it, so the lease left never drops below three quarters while
// a leader answers, and at most maxRenewInterval.
func renewInterval(lease time.Duration) time.Duration { return min(lease/4, maxRenewInterval) }

// ownBlock is the block this node uses and the lease it holds on it.
type ownBlock struct {
	Block netip.Prefix
	// lease is when this node's lease on Block ends, on the host clock;
	// zero while it has none. Granted by the leader in this run, or
	// restored from block.json under the restart rule.
	lease hostclock.Instant
	// renewed and endsAt are the wall-clock times of the claim that
	// granted lease and of the lease's end, for people.
	renewed, endsAt time.Time
	// grantedAt is when a claim in this run returned Block (monotonic; zero
	// while restored, not granted), from which the next renewal is
	// scheduled.
	grantedAt time.Time
	// seen: this node's ledger replica has shown Block assigned to it, so
	// its later absence means a release or reclaim, not replication lag.
	seen bool
	// incarnation is Config.Incarnation's value when the ledger last
	// confirmed Block, the one saved with it; "" without an Incarnation.
	incarnation string
}

// ownBlockLocked returns the block this node shows in its View and whether
// it may hand out new addresses from it: while its lease holds on the host
// clock (the lease rule, see package ledger). A block the ledger assigns
// to another node is never shown, even before the ownership loop fences it.
func (m *Mesh) ownBlockLocked(st ledger.State) (netip.Prefix, bool) {
	b := m.own.Block
	if !b.IsValid() || m.led == nil {
		return netip.Prefix{}, false
	}
	o, assigned := st.Blocks[b]
	if assigned && o.ID != m.id {
		return netip.Prefix{}, false
	}
	if m.own.lease.IsZero() && !(assigned && o.HostIP == m.cfg.AdvertiseAddr) {
		return netip.Prefix{}, false
	}
	now, err := m.clock()
	return b, err == nil && now.Before(m.own.lease)
}

// restore applies the restart rule to the block the previous run saved:
// usable at once while the lease saved with it holds, otherwise only the
// hint of the first claim. With an Incarnation, the rule also needs the
// saved incarnation to hold now (see restartGate). It reports whether the
// block was restored, and records the outcome for the View: the agent
// withdraws a hand-off of the saved block that the rule does not cover.
func (m *Mesh) restore(ctx context.Context, saved *savedBlock) bool {
	defer m.notify()
	if saved == nil {
		m.mu.Lock()
		m.restart = RestartNoBlock
		m.mu.Unlock()
		return false
	}
	st, _ := m.led.State()
	now, err := m.clock()
	refused := err
	if refused == nil {
		refused = restorable(saved, m.id, now, st)
	}
	if o, ok := st.Blocks[saved.Block]; refused == nil && ok && o.HostIP != m.cfg.AdvertiseAddr {
		refused = fmt.Errorf("this node's copy of the ledger holds it for host IP %s, this host advertises %s", o.HostIP, m.cfg.AdvertiseAddr)
	}
	var gate error
	if refused == nil {
		if gate = m.restartGate(ctx, saved); gate != nil {
			refused = fmt.Errorf("this host's incarnation does not hold: %w", gate)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.own = ownBlock{Block: saved.Block}
	if refused == nil {
		// Not seen: a replica restored from its last snapshot may lack
		// the claim until the leader catches it up.
		m.own.lease, m.own.renewed, m.own.endsAt = saved.Lease, saved.Renewed, saved.EndsAt
		m.own.incarnation = saved.Incarnation
		m.restart = RestartRestored
		m.metrics.claims.WithLabelValues("restored").Inc()
		left, _ := saved.Lease.Sub(now)
		m.log.Info("restored the saved block under the restart rule: its lease holds", "block", saved.Block, "lease_left", left.Round(time.Second))
		return true
	}
	m.restart, m.restartReason = RestartRefused, refused.Error()
	m.reason = fmt.Sprintf("waiting for the ledger to confirm block %s saved by the previous run (restart rule not applied: %v)", saved.Block, refused)
	if gate != nil {
		m.log.Warn("restart rule not applied: this host's incarnation does not hold; waiting for the ledger's confirmation",
			"block", saved.Block, "savedIncarnation", saved.Incarnation, "err", gate)
		return false
	}
	m.log.Info("saved block needs the ledger's confirmation before new addresses are handed out",
		"block", saved.Block, "why", refused)
	return false
}

// restartGateTimeout bounds the question to the Incarnation's record on
// start; no answer means no restart rule.
const restartGateTimeout = 10 * time.Second

// restartGate asks Config.Incarnation whether the incarnation saved with
// the block still holds. Without an Incarnation the rule is as it always
// was. The block may have been released because this host's record was
// deleted, which the local ledger replica cannot show if the release came
// after the crash: then only the ledger may hand the block back.
func (m *Mesh) restartGate(ctx context.Context, saved *savedBlock) error {
	inc := m.cfg.Incarnation
	if inc == nil {
		return nil
	}
	if saved.Incarnation == "" {
		return errors.New("no incarnation saved with the block")
	}
	ctx, cancel := context.WithTimeout(ctx, restartGateTimeout)
	defer cancel()
	return inc.Verify(ctx, saved.Incarnation)
}

// ownershipLoop keeps this node in a ledger and holding a block: it asks to
// join, claims (the saved block as a hint), renews its lease, and fences a
// block the ledger no longer assigns to it.
func (m *Mesh) ownershipLoop(ctx context.Context, saved *savedBlock) {
	var hint netip.Prefix
	if saved != nil {
		hint = saved.Block
	}
	failures := 0
	var leaderless time.Time
	wasReady := false
	stepInterval := min(maxStepInterval, max(m.cfg.Lease/8, 10*time.Millisecond))
	for {
		ok := m.step(ctx, &hint, &leaderless)
		if ok {
			failures = 0
		} else {
			failures++
		}
		block, ready := m.viewBlock()
		if ready != wasReady {
			wasReady = ready
			m.notify()
		}
		m.advertiseBlock(block)
		wait := stepInterval
		wake := m.wake
		if !ok {
			wait = backoff(failures)
			if failures > 2 {
				// Retrying on every membership event would spin while
				// the ledger keeps saying no (pool exhausted, no leader);
				// a change of the ledger itself still wakes the loop.
				wake = nil
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		case <-m.ledgerChanged:
		case <-wake:
			// Coalesce bursts of membership events.
			select {
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

// backoff is the pause after failures in a row: from 100 ms doubling to
// 5 s, with jitter so that many nodes do not retry in step.
func backoff(failures int) time.Duration {
	d := min(100*time.Millisecond<<min(failures-1, 6), 5*time.Second)
	return d/2 + rand.N(d/2+1)
}

// step does one round of the ownership loop and reports whether this node
// is where it should be (in a ledger, holding a confirmed block). hint is
// the saved block, asked for until a claim succeeds once: after a fence it
// would name the lost block.
func (m *Mesh) step(ctx context.Context, hint *netip.Prefix, leaderless *time.Time) bool {
	led := m.led
	info := led.Info()
	st, _ := led.State()

	if why := m.checkFence(st); why != "" {
		m.fence(why)
	}

	if info.Leader == "" {
		if leaderless.IsZero() {
			*leaderless = time.Now()
		}
	} else {
		*leaderless = time.Time{}
	}
	if !st.Founded() || info.Role == "none" || (!leaderless.IsZero() && time.Since(*leaderless) > leaderlessRejoin) {
		if reason, joined := m.requestJoin(ctx); !joined || !st.Founded() {
			m.setReason(reason)
			return false
		}
	}

	incarnation := m.currentIncarnation()
	m.mu.Lock()
	own := m.own
	m.mu.Unlock()
	o, assigned := st.Blocks[own.Block]
	// A changed incarnation (this host's Node deleted, or registered
	// again) renews at once, so the block is saved under the new one.
	needClaim := !own.Block.IsValid() || own.grantedAt.IsZero() || time.Since(own.grantedAt) >= renewInterval(m.cfg.Lease) ||
		own.incarnation != incarnation ||
		(assigned && o.ID == m.id && o.HostIP != m.cfg.AdvertiseAddr)
	if !needClaim {
		return true
	}
	want := *hint
	if own.Block.IsValid() {
		want = own.Block
	}
	if !m.claim(ctx, want) {
		return false
	}
	*hint = netip.Prefix{}
	return true
}

// checkFence says why this node's block is no longer its own, or "".
func (m *Mesh) checkFence(st ledger.State) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	b := m.own.Block
	if !b.IsValid() {
		return ""
	}
	o, ok := st.Blocks[b]
	switch {
	case ok && o.ID == m.id:
		m.own.seen = true
	case ok:
		return fmt.Sprintf("the ledger assigns it to %s (%s)", o.Name, o.HostIP)
	case m.own.seen:
		return "the ledger released or reclaimed it"
	}
	return ""
}

// fence stops using a block the ledger no longer assigns to this node: the
// View drops it (peers stop routing it here, node.json goes without it, the
// CNI plugin answers "try again later"), the node is marked degraded, and
// the loop claims a new block.
func (m *Mesh) fence(why string) {
	m.mu.Lock()
	old := m.own.Block
	m.own = ownBlock{}
	m.degraded = fmt.Sprintf("lost block %s: %s; pods created with addresses from it need a restart", old, why)
	m.reason = "lost its block; claiming a new one"
	m.mu.Unlock()
	m.metrics.fenced.Inc()
	m.log.Error("this node lost its block; pods created with addresses from it need a restart", "block", old, "reason", why)
	m.notify()
}

// requestJoin asks a ledger that live members belong to to add this node.
// It returns the reason to show while this node is not in a ledger.
func (m *Mesh) requestJoin(ctx context.Context) (string, bool) {
	cluster, ok := m.ledgerToJoin()
	if !ok {
		if why := m.foundingReason(); why != "" {
			return why, false
		}
		if seeds := m.seedTargets(); len(seeds) > 0 && !m.anyLive() {
			return "waiting for a ledger to join: no answer from seeds " + strings.Join(seeds, ", "), false
		}
		return "waiting for a ledger to join: no reachable member belongs to one yet", false
	}
	via := m.ledgerAddrs(cluster, 8)
	if len(via) == 0 {
		// Only this node's own replica knows the cluster (a restart whose
		// peers have not answered yet): the ledger reaches them itself.
		return fmt.Sprintf("waiting for members of ledger %s", cluster), true
	}
	ctx, cancel := context.WithTimeout(ctx, ledgerCallTimeout)
	defer cancel()
	if err := m.led.RequestJoin(ctx, cluster, via); err != nil {
		m.log.Debug("ask to join the ledger", "cluster", cluster, "via", via, "err", err)
		if errors.Is(err, ledger.ErrIdentity) {
			m.refuseIdentity(err)
		}
		return fmt.Sprintf("joining ledger %s: %v", cluster, err), false
	}
	return fmt.Sprintf("joined ledger %s; waiting for its state", cluster), true
}

func (m *Mesh) anyLive() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range m.peers {
		if p.state.Live() {
			return true
		}
	}
	return false
}

func (m *Mesh) setReason(r string) {
	m.mu.Lock()
	changed := m.reason != r
	m.reason = r
	m.mu.Unlock()
	if changed {
		m.notify()
	}
}

// claim asks the ledger for this node's block (hint preferred), which
// renews its lease, and adopts the committed answer. A different answer
// than the block in use fences that block first.
func (m *Mesh) claim(ctx context.Context, hint netip.Prefix) bool {
	ctx, cancel := context.WithTimeout(ctx, ledgerCallTimeout)
	defer cancel()
	// Read before the claim: the answer confirms the block under this
	// incarnation, and a change meanwhile makes the next step claim again.
	incarnation := m.currentIncarnation()
	// The lease runs from before the claim was sent, so it ends before
	// the leader's record of it.
	asked, err := m.clock()
	if err != nil {
		m.claimFailed(fmt.Errorf("read the host clock: %w", err))
		return false
	}
	renewed := time.Now()
	g, err := m.led.Claim(ctx, hint, m.cfg.AdvertiseAddr)
	if err != nil {
		m.claimFailed(err)
		return false
	}
	m.mu.Lock()
	old, wasGranted := m.own.Block, !m.own.grantedAt.IsZero()
	m.mu.Unlock()
	if old.IsValid() && old != g.Block {
		m.fence(fmt.Sprintf("the ledger holds block %s for this node instead", g.Block))
	}
	lease, endsAt := asked.Add(g.Lease), renewed.Add(g.Lease)
	// Saved before it is used, so that a crash from here on restarts with
	// this block and lease, not the ones before.
	if err := saveBlock(m.cfg.StateDir, savedBlock{Node: m.cfg.NodeName, ID: m.id, Block: g.Block,
		Lease: lease, Renewed: renewed.UTC(), EndsAt: endsAt.UTC(), Incarnation: incarnation}); err != nil {
		// The block is this node's in the ledger either way; without the
		// file a restart waits for the ledger's confirmation.
		m.log.Error("save the block for restarts", "block", g.Block, "err", err)
	}
	m.mu.Lock()
	if m.own.Block != g.Block {
		m.own = ownBlock{Block: g.Block}
	}
	m.own.lease, m.own.renewed, m.own.endsAt = lease, renewed, endsAt
	m.own.grantedAt = time.Now()
	m.own.seen = true // waitApplied saw it in this node's replica
	m.own.incarnation = incarnation
	m.identity = ""
	m.reason = ""
	m.mu.Unlock()
	if !wasGranted || old != g.Block {
		m.metrics.claims.WithLabelValues("succeeded").Inc()
		m.log.Info("the ledger assigns this node its block", "block", g.Block, "lease", g.Lease)
	} else {
		m.metrics.claims.WithLabelValues("renewed").Inc()
		m.log.Debug("lease renewed", "block", g.Block, "lease", g.Lease)
	}
	m.notify()
	return true
}

// claimFailed turns a failed claim into the reason shown, and refuses to
// route anything while the ledger refuses this node's identity.
func (m *Mesh) claimFailed(err error) {
	var result, reason string
	switch {
	case errors.Is(err, ledger.ErrIdentity):
		m.metrics.claims.WithLabelValues("identity").Inc()
		m.refuseIdentity(err)
		return
	case errors.Is(err, ledger.ErrPoolExhausted):
		result = "exhausted"
		reason = fmt.Sprintf("pool %s exhausted: every /%d block is assigned", m.cfg.Pool, m.cfg.BlockBits)
	case errors.Is(err, ledger.ErrNoLeader), errors.Is(err, context.DeadlineExceeded):
		result = "no_leader"
		reason = "no ledger leader reachable: " + err.Error()
	default:
		result = "error"
		reason = "claim: " + err.Error()
	}
	m.metrics.claims.WithLabelValues(result).Inc()
	m.log.Debug("claim failed", "err", err)
	m.setReason(reason)
}

// refuseIdentity records that the ledger refuses this node's name or ID
// (another live node uses it): until a claim succeeds, the View holds no
// block and routes nothing, and says why.
func (m *Mesh) refuseIdentity(err error) {
	m.mu.Lock()
	first := m.identity == ""
	m.identity = "refused by the ledger: " + err.Error()
	m.mu.Unlock()
	if first {
		m.log.Error("the ledger refuses this node's identity; it holds no block and routes nothing", "err", err)
	}
	m.notify()
}

// currentIncarnation is Config.Incarnation's current value, "" without one.
func (m *Mesh) currentIncarnation() string {
	if m.cfg.Incarnation == nil {
		return ""
	}
	return m.cfg.Incarnation.Current()
}

// ledgerEvents follows the ledger: a new cluster ID is advertised in
// metadata, and every change wakes the ownership loop and the View.
func (m *Mesh) ledgerEvents(ctx context.Context) {
	var last ledger.Info
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.led.Changed():
		}
		info := m.led.Info()
		// Only a new ledger, leader or role cuts a back-off short: every
		// entry applied (a refused claim too) fires Changed as well, and
		// retrying on those would spin while the pool is exhausted.
		roleChanged := info.ClusterID != last.ClusterID || info.Leader != last.Leader || info.Role != last.Role
		last = info
		m.mu.Lock()
		newCluster := info.ClusterID != m.clusterID
		m.clusterID = info.ClusterID
		if newCluster {
			m.countMembersLocked()
		}
		m.mu.Unlock()
		if newCluster {
			m.log.Info("member of ledger", "cluster", info.ClusterID)
			m.advertise()
			signal(m.foreignCheck)
		}
		signal(m.wake)
		if roleChanged {
			signal(m.ledgerChanged)
		}
		m.notify()
	}
}

// advertiseBlock advertises block, this node's View's block, in its
// metadata if it is not advertised yet. Peers do not route this node
// while its metadata names another block than the ledger assigns it.
func (m *Mesh) advertiseBlock(block netip.Prefix) {
	m.mu.Lock()
	changed := m.metaBlock != block
	m.metaBlock = block
	m.mu.Unlock()
	if changed {
		m.advertise()
	}
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
	m.log.Error("metadata update did not take; peers see the previous value until the next update")
}
