package mesh

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/grapevine-net/grapevine/mesh/ledger"
)

// foundingInterval is how often the founding loop looks again: at gossip's
// pace, so founders that meet found within a fraction of a second.
const foundingInterval = 200 * time.Millisecond

// foreignRecheck is how often a founded node looks for a foreign ledger
// without a nudge (foreignCheck): what it compares changes only with
// membership and this node's own ledger, which nudge it at once, so the
// look on a timer is a backstop. It was every second, one of the wake-ups
// an idle agent pays for.
const foreignRecheck = 30 * time.Second

// foundingLoop founds a ledger when this node may (Config.BootstrapExpect,
// Config.LedgerRecord) and watches for the case where this node's ledger
// is not the one its peers hold (see foreignLedger), until ctx ends.
func (m *Mesh) foundingLoop(ctx context.Context) {
	founded := m.cfg.LedgerRecord == nil && m.cfg.BootstrapExpect == 0
	recordChecked := m.cfg.LedgerRecord == nil
	seedsBy := time.Now().Add(recordSeedsWait)
	failures := 0
	for {
		if !m.ledgerStateKnown() && m.led.HasState() {
			m.markLedgerState()
		}
		wait := foundingInterval
		switch {
		case !founded && m.cfg.BootstrapExpect > 0:
			founded = m.bootstrapExpectStep(ctx)
		case !founded || !recordChecked:
			var err error
			founded, recordChecked, err = m.recordStep(ctx, seedsBy)
			switch {
			case err == nil:
				failures = 0
			case failures == 0:
				// Once: a node in a ledger keeps working without the API.
				m.log.Warn("cannot read or create the ledger's record; retrying", "record", m.cfg.LedgerRecord.Where(), "err", err)
				fallthrough
			default:
				failures++
				wait = backoff(failures)
			}
		}
		m.checkForeign()
		// Founding steps run on their timer alone: a nudge must not cut a
		// back-off from the API short.
		var nudged chan struct{}
		if founded && recordChecked {
			wait, nudged = foreignRecheck, m.foreignCheck
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		case <-nudged:
		}
	}
}

func (m *Mesh) ledgerStateKnown() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ledgerState
}

// setFounding records why this node has not founded yet ("" once it has).
func (m *Mesh) setFounding(why string) {
	m.mu.Lock()
	changed := m.founding != why
	m.founding = why
	m.mu.Unlock()
	if changed {
		if why != "" {
			m.log.Info(why)
		}
		m.notify()
	}
}

// foundingReason is why this node, waiting for a ledger to join, has not
// founded one, "" if it may not found.
func (m *Mesh) foundingReason() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.founding
}

// bootstrapCandidate is one node as --bootstrap-expect counts it.
type bootstrapCandidate struct {
	Name        string
	ID          ledger.NodeID
	Addr        netip.AddrPort // ledger address
	Expect      int
	LedgerState bool
	ClusterID   ledger.ClusterID
}

// bootstrapFounders decides, for a node with --bootstrap-expect expect and
// no ledger state, whether to found now and with whom, as Consul's
// bootstrap_expect does. It founds nothing while a live member has a
// ledger or began founding one (join it instead), while a member expects
// another number (the configurations differ: refuse rather than guess),
// or while fewer than expect agents with the same setting are present.
// Otherwise the founders are all of them, sorted by node ID: nodes that
// see the same members compute the identical first configuration, and
// one that sees a late extra member computes a superset, whose quorums
// still meet the others'. why explains a wait.
func bootstrapFounders(self bootstrapCandidate, peers []bootstrapCandidate, expect int) (founders []ledger.Founder, why string) {
	slices.SortFunc(peers, func(a, b bootstrapCandidate) int { return cmp.Compare(a.Name, b.Name) })
	all := []bootstrapCandidate{self}
	for _, p := range peers {
		switch {
		case !p.ClusterID.IsZero() || p.LedgerState:
			return nil, fmt.Sprintf("member %s belongs to a ledger already; joining it instead of founding one", p.Name)
		case p.Expect != 0 && p.Expect != expect:
			return nil, fmt.Sprintf("not founding a ledger: member %s runs with --bootstrap-expect %d, this node with %d; give every agent the same value",
				p.Name, p.Expect, expect)
		case p.Expect == expect:
			all = append(all, p)
		}
	}
	if len(all) < expect {
		names := make([]string, len(all))
		for i, c := range all {
			names[i] = c.Name
		}
		return nil, fmt.Sprintf("waiting for %d agents with --bootstrap-expect %d to meet before founding the ledger; %d so far: %s",
			expect, expect, len(all), strings.Join(names, ", "))
	}
	for _, c := range all {
		founders = append(founders, ledger.Founder{ID: c.ID, Addr: c.Addr})
	}
	slices.SortFunc(founders, func(a, b ledger.Founder) int { return cmp.Compare(a.ID.String(), b.ID.String()) })
	return founders, ""
}

// bootstrapExpectStep founds the ledger when bootstrapFounders says so. It
// reports whether this node is done: it has ledger state (founded, or
// joined a ledger).
func (m *Mesh) bootstrapExpectStep(ctx context.Context) bool {
	if m.led.HasState() {
		m.setFounding("")
		return true
	}
	self := bootstrapCandidate{
		Name: m.cfg.NodeName, ID: m.id, Expect: m.cfg.BootstrapExpect,
		Addr: netip.AddrPortFrom(m.cfg.AdvertiseAddr, uint16(m.cfg.LedgerPort)),
	}
	m.mu.Lock()
	var peers []bootstrapCandidate
	for _, p := range m.peers {
		if !p.usable() || p.meta.Leaving {
			continue
		}
		peers = append(peers, bootstrapCandidate{
			Name: p.meta.Name, ID: p.meta.ID, Addr: netip.AddrPortFrom(p.addr.Addr(), p.meta.LedgerPort),
			Expect: p.meta.BootstrapExpect, LedgerState: p.meta.LedgerState, ClusterID: p.meta.ClusterID,
		})
	}
	m.mu.Unlock()
	founders, why := bootstrapFounders(self, peers, m.cfg.BootstrapExpect)
	if founders == nil {
		m.setFounding(why)
		return false
	}
	err := m.led.Bootstrap(ctx, founders, ledger.ClusterID{})
	switch {
	case errors.Is(err, ledger.ErrHasState):
	case err != nil:
		m.setFounding("founding the ledger failed; retrying: " + err.Error())
		return false
	default:
		m.log.Info("founding the ledger with the agents that met (--bootstrap-expect)", "founders", len(founders))
	}
	m.founded()
	return true
}

// recordSeedsWait bounds how long a node about to create the ledger's
// record waits for its seeds (with --join-kubernetes, the Nodes the API
// listed at start) to answer, so that the agents starting together are
// founders in the record rather than non-voters promoted one by one later.
const recordSeedsWait = 10 * time.Second

// recordCandidate is one live member as the record's founder sees it.
type recordCandidate struct {
	Founder ledger.Founder
	// FoundsByRecord: the member reads the record (Meta.FoundsByRecord),
	// so it would found the ledger when listed.
	FoundsByRecord bool
	LedgerState    bool
	ClusterID      ledger.ClusterID
}

// recordFounders chooses the first voters a node that is creating the
// ledger's record writes into it: itself and the members that will found
// the ledger when they read the record (they read it, advertised by
// FoundsByRecord, and have no ledger state or cluster ID, so they neither
// belong to a ledger nor began founding one), the lowest node IDs first,
// at most voters in all. Every listed founder bootstraps with this same
// list, so a young ledger has its voters from its first entry instead of
// promoting them one at a time (a partition before the promotions reach
// them leaves no side with a quorum). The result is sorted by node ID.
func recordFounders(self ledger.Founder, peers []recordCandidate, voters int) []ledger.Founder {
	var others []ledger.Founder
	for _, p := range peers {
		if p.FoundsByRecord && !p.LedgerState && p.ClusterID.IsZero() && p.Founder.ID != self.ID {
			others = append(others, p.Founder)
		}
	}
	byID := func(a, b ledger.Founder) int { return cmp.Compare(a.ID.String(), b.ID.String()) }
	slices.SortFunc(others, byID)
	others = slices.CompactFunc(others, func(a, b ledger.Founder) bool { return a.ID == b.ID })
	if len(others) > voters-1 {
		others = others[:max(voters-1, 0)]
	}
	founders := append(others, self)
	slices.SortFunc(founders, byID)
	return founders
}

// recordCandidates are the live members, with valid metadata (hence the
// same pool layout) and not leaving, as recordFounders weighs them.
func (m *Mesh) recordCandidates() []recordCandidate {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []recordCandidate
	for _, p := range m.peers {
		if !p.usable() || p.meta.Leaving {
			continue
		}
		out = append(out, recordCandidate{
			Founder:        ledger.Founder{ID: p.meta.ID, Addr: netip.AddrPortFrom(p.addr.Addr(), p.meta.LedgerPort)},
			FoundsByRecord: p.meta.FoundsByRecord, LedgerState: p.meta.LedgerState, ClusterID: p.meta.ClusterID,
		})
	}
	return out
}

// recordStep founds through Config.LedgerRecord. A node without ledger
// state reads the record. If there is none and no member it reaches
// belongs to a ledger, it waits briefly for its seeds, then creates the
// record with the founders recordFounders chooses and founds the ledger
// with them. If a record lists it as a founder, it founds the recorded
// ledger with the recorded founders; otherwise it waits to reach the
// recorded ledger's members and join it. A node with state (founded,
// joined, or from an earlier run) records its ledger if none is recorded,
// which keeps a cluster founded before the record existed safe, and learns
// the recorded one otherwise. It reports whether founding is settled and
// whether the record has been compared with this node's ledger. seedsBy
// ends the wait for seeds.
func (m *Mesh) recordStep(ctx context.Context, seedsBy time.Time) (founded, checked bool, err error) {
	rec := m.cfg.LedgerRecord
	if m.led.HasState() {
		st, _ := m.led.State()
		m.setFounding("")
		if !st.Founded() {
			return true, false, nil // the cluster ID is not known yet
		}
		if _, foreign := m.foreignByGossip(st.ClusterID); foreign {
			// Recording a forked ledger would make the cluster foreign.
			return true, false, nil
		}
		if got, known := m.recordRead(); known && got.ClusterID == st.ClusterID {
			// Read before this node joined: nothing to write.
			return true, true, nil
		}
		got, created, err := rec.Create(ctx, RecordedLedger{ClusterID: st.ClusterID, Founder: m.cfg.NodeName})
		if err != nil {
			return true, false, err
		}
		if created {
			m.log.Info("recorded this node's ledger", "record", rec.Where(), "cluster", st.ClusterID)
		}
		m.setRecorded(got)
		return true, true, nil
	}
	got, known := m.recordRead()
	justRead := false
	if !known {
		// Read before anything else: a founder that created the record
		// advertises its cluster ID at once, and a node the record lists
		// that joined instead would wait for a leader needing its vote.
		got, known, err = rec.Read(ctx)
		if err != nil {
			m.setFounding(fmt.Sprintf("cannot found or find the ledger: %s unreadable: %v", rec.Where(), err))
			return false, false, err
		}
		if known {
			m.setRecorded(got)
			justRead = true
		}
	}
	if !known {
		if _, ok := m.ledgerToJoin(); ok {
			// A ledger founded before the record existed: join it; once
			// a member, this node records it.
			m.setFounding("")
			return false, false, nil
		}
		self := ledger.Founder{ID: m.id, Addr: netip.AddrPortFrom(m.cfg.AdvertiseAddr, uint16(m.cfg.LedgerPort))}
		founders := recordFounders(self, m.recordCandidates(), m.cfg.Voters)
		if seeds := m.seedTargets(); len(founders) < m.cfg.Voters && len(seeds) > 0 && time.Now().Before(seedsBy) {
			// Any founders will do (only the record's creator chooses),
			// but as many as the ledger has voters.
			m.setFounding(fmt.Sprintf("waiting up to %s for seeds %s to answer before founding the ledger with them",
				recordSeedsWait, strings.Join(seeds, ", ")))
			return false, false, nil
		}
		want := RecordedLedger{ClusterID: ledger.NewClusterID(), Founder: m.cfg.NodeName, Founders: founders}
		var created bool
		got, created, err = rec.Create(ctx, want)
		if err != nil {
			m.setFounding(fmt.Sprintf("cannot found or find the ledger: %s unreadable: %v", rec.Where(), err))
			return false, false, err
		}
		m.setRecorded(got)
		justRead = !created
		if created {
			if err := m.led.Bootstrap(ctx, want.Founders, want.ClusterID); err != nil && !errors.Is(err, ledger.ErrHasState) {
				m.setFounding("founding the recorded ledger failed; retrying: " + err.Error())
				return false, false, err
			}
			m.log.Info("founding the cluster's ledger, recorded first", "record", rec.Where(), "cluster", want.ClusterID, "founders", len(want.Founders))
			m.founded()
			return true, true, nil
		}
	}
	if got.lists(m.id) {
		// Listed by the node that created the record: found the ledger
		// with the identical first configuration, as --bootstrap-expect's
		// founders do. Safe because the node ID lives in the state
		// directory beside the ledger's state: a host that lost its disk
		// has a new ID, is not listed, and joins. A host that kept its ID
		// but lost only the raft store founds again, with the same hazard
		// as --bootstrap-expect: harmless while the other founders keep
		// the ledger (their longer log wins), a second ledger if most of
		// them lost theirs too.
		if err := m.led.Bootstrap(ctx, got.Founders, got.ClusterID); err != nil && !errors.Is(err, ledger.ErrHasState) {
			m.setFounding("founding the recorded ledger failed; retrying: " + err.Error())
			return false, false, err
		}
		m.log.Info("founding the cluster's ledger as one of its recorded founders", "record", rec.Where(), "cluster", got.ClusterID,
			"founder", got.Founder, "founders", len(got.Founders))
		m.founded()
		return true, true, nil
	}
	if justRead {
		m.setFounding(fmt.Sprintf("ledger %s, founded by %s, is recorded in %s; waiting to reach its members to join it",
			got.ClusterID, got.Founder, rec.Where()))
		return false, false, nil
	}
	// The record read before: join that ledger.
	m.setFounding("")
	return false, false, nil
}

// recordRead returns the record, if this node has read it.
func (m *Mesh) recordRead() (RecordedLedger, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.record, !m.recorded.IsZero()
}

func (m *Mesh) setRecorded(r RecordedLedger) {
	m.mu.Lock()
	m.recorded = r.ClusterID
	m.record = r
	m.mu.Unlock()
}

// foreignLedger decides whether own, this node's ledger, is foreign to the
// cluster, and which ledger the cluster holds: the recorded one if a record
// names one (the record is the cluster's word); otherwise the one its peers
// hold when no other live member holds own and at least two hold that one
// (the most common, if they hold several). A node that shares its ledger
// with a live member is not foreign by gossip alone: two clusters founded
// separately with one key that meet both keep working, each listing the
// other's members as foreign. One against one decides nothing either:
// neither can tell which of the two forked.
func foreignLedger(own, recorded ledger.ClusterID, members []ledger.ClusterID) (ledger.ClusterID, bool) {
	count := map[ledger.ClusterID]int{}
	for _, c := range members {
		count[c]++
	}
	return foreignLedgerCounted(own, recorded, count)
}

// foreignLedgerCounted is foreignLedger given how many live members hold
// each ledger (the zero ID, no ledger yet, is ignored).
func foreignLedgerCounted(own, recorded ledger.ClusterID, count map[ledger.ClusterID]int) (ledger.ClusterID, bool) {
	if own.IsZero() {
		return ledger.ClusterID{}, false
	}
	if !recorded.IsZero() {
		return recorded, recorded != own
	}
	if count[own] > 0 {
		return ledger.ClusterID{}, false
	}
	var best ledger.ClusterID
	for c, n := range count {
		if c.IsZero() || n == 0 {
			continue
		}
		if best.IsZero() || n > count[best] || n == count[best] && string(c[:]) < string(best[:]) {
			best = c
		}
	}
	if best.IsZero() || count[best] < 2 {
		return ledger.ClusterID{}, false
	}
	return best, true
}

// foreignByGossip applies foreignLedger to the live members' metadata,
// without the record.
func (m *Mesh) foreignByGossip(own ledger.ClusterID) (ledger.ClusterID, bool) {
	return foreignLedgerCounted(own, ledger.ClusterID{}, m.liveClusters())
}

// liveClusters counts the live members with accepted metadata by the
// ledger they advertise (kept up to date by indexPeerLocked).
func (m *Mesh) liveClusters() map[ledger.ClusterID]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.clusters)
}

// checkForeign stops this node handing out addresses while its ledger is
// foreign (see foreignLedger), and says so once in the log; it clears the
// verdict when the ledgers agree again (after `grapevine ledger reset`
// the node starts without state and joins).
func (m *Mesh) checkForeign() {
	m.mu.Lock()
	own, recorded := m.clusterID, m.recorded
	m.mu.Unlock()
	theirs, foreign := foreignLedgerCounted(own, recorded, m.liveClusters())
	why := ""
	if foreign {
		where := "its peers hold ledger " + theirs.String()
		if !recorded.IsZero() {
			where = fmt.Sprintf("the cluster's ledger is %s (recorded in %s)", theirs, m.cfg.LedgerRecord.Where())
		}
		why = fmt.Sprintf("this node's ledger state belongs to ledger %s but %s, so it hands out no addresses; "+
			"stop the agent, run `grapevine ledger reset` and start it again to rejoin (docs/operations.md)", own, where)
	}
	m.mu.Lock()
	changed := m.foreign != why
	m.foreign = why
	m.mu.Unlock()
	if !changed {
		return
	}
	if foreign {
		m.metrics.foreignLedger.Set(1)
		m.log.Error(why, "ledger", own, "cluster_ledger", theirs)
	} else {
		m.metrics.foreignLedger.Set(0)
		m.log.Info("this node's ledger is the cluster's again", "ledger", own)
	}
	m.notify()
}

// ResetLedger is the operator's way back for a node whose ledger state
// belongs to another ledger than the cluster's (see foreignLedger): with
// the agent stopped, it moves <state-dir>/raft and block.json aside, under
// names ending in .reset-<now>, and keeps the node ID. Started again, the
// node has no ledger state, founds nothing (its peers hold a ledger) and
// joins theirs. It returns where the ledger state went.
func ResetLedger(stateDir string, now time.Time) (string, error) {
	suffix := ".reset-" + now.UTC().Format("20060102T150405Z")
	to := ledgerDir(stateDir) + suffix
	err := ledger.SetAside(ledgerDir(stateDir), to)
	switch {
	case errors.Is(err, os.ErrNotExist):
		to = "" // in-memory stores (tests), or never started
	case err != nil:
		return "", fmt.Errorf("reset the ledger state in %s: %w", stateDir, err)
	}
	block := blockFilePath(stateDir)
	if err := os.Rename(block, block+suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
		return to, fmt.Errorf("set block.json aside: %w", err)
	}
	return to, nil
}

// markLedgerState advertises that this node now has ledger state, so no
// member counts it as a founder any more.
func (m *Mesh) markLedgerState() {
	m.mu.Lock()
	m.ledgerState = true
	m.mu.Unlock()
	m.advertise()
}

// founded ends founding: the node has ledger state, and the ownership loop
// is woken to join and claim.
func (m *Mesh) founded() {
	m.markLedgerState()
	m.setFounding("")
	signal(m.ledgerChanged)
}
