package ledger

import (
	"sync"
	"time"
)

// The lease rule. A node may hand out addresses from its block only while
// it holds a lease that the leader granted by committing its claim. The
// node's lease starts when it sent that claim and lasts Config.Lease on its
// own host clock, so it ends before the leader's view of it. The leader
// moves a block to anyone else (reclaim, release, a deleted Node) only once
// the owner's last grant, or the leader's own start in office if it has
// granted none, lies Lease plus LeaseMargin behind it on the leader's own
// monotonic clock. No decision compares the clocks of two hosts, only how
// fast they run, which LeaseMargin covers.

// LeaseMargin is what the leader adds to a lease before it moves a block:
// 1 % of the lease for the rates of the two hosts' clocks (NTP bounds a
// disciplined clock's rate error to 0.05 %, an undisciplined quartz is
// within 0.01-0.02 %), and a second for the last ADD in flight on the
// owner when its lease ends.
func LeaseMargin(lease time.Duration) time.Duration { return lease/100 + time.Second }

// leaseTable is the leader's record of the leases it granted in its term,
// on its own monotonic clock. A new term starts from nothing: every owner's
// lease is then counted from the moment the table first saw the term,
// which is no earlier than this node took office, and so later than any
// grant of an earlier leader.
//
// Its lock also serializes what grants a lease (a committed claim) with
// what moves a block (reclaim, release): a block is never freed between a
// claim's commit and the grant being recorded.
type leaseTable struct {
	mu         sync.Mutex
	term       uint64
	tookOffice time.Time
	granted    map[NodeID]time.Time
}

// termLocked starts a new table when term is new.
func (t *leaseTable) termLocked(term uint64, now time.Time) {
	if t.granted == nil || t.term != term {
		t.term, t.tookOffice, t.granted = term, now, make(map[NodeID]time.Time)
	}
}

// grantLocked records that the leader of term granted id a lease at now
// (after the claim committed, so no earlier than the owner asked).
func (t *leaseTable) grantLocked(term uint64, id NodeID, now time.Time) {
	t.termLocked(term, now)
	t.granted[id] = now
}

// endsLocked is when, on the leader's clock, id's lease has ended with the
// margin: from its last grant in this term, else from the start of the term.
func (t *leaseTable) endsLocked(term uint64, id NodeID, now time.Time, lease time.Duration) time.Time {
	t.termLocked(term, now)
	since := t.tookOffice
	if g, ok := t.granted[id]; ok && g.After(since) {
		since = g
	}
	return since.Add(lease + LeaseMargin(lease))
}

// forgetLocked drops the grants of nodes that hold no block any more.
func (t *leaseTable) forgetLocked(holds func(NodeID) bool) {
	for id := range t.granted {
		if !holds(id) {
			delete(t.granted, id)
		}
	}
}
