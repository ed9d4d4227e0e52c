package ledger

import (
	"errors"
	"time"
)

// Errors the mesh shows as reasons. Returned errors wrap them with details;
// test with errors.Is. Errors from a remote leader keep their kind.
var (
	// ErrNoLeader: no leader is known or reachable (yet); retry later.
	ErrNoLeader = errors.New("no ledger leader reachable")
	// ErrPoolExhausted: every block of the pool is assigned.
	ErrPoolExhausted = errors.New("pool exhausted: every block is assigned")
	// ErrIdentity: the node's name or ID is in use by another live node.
	ErrIdentity = errors.New("identity conflict")
	// ErrForeignCluster: the other side belongs to another ledger.
	ErrForeignCluster = errors.New("foreign ledger cluster")
	// ErrPoolMismatch: the pool or block size differs from the ledger's.
	ErrPoolMismatch = errors.New("pool layout differs from the ledger's")
	// ErrNotFounded: the ledger has no Found entry yet.
	ErrNotFounded = errors.New("ledger not founded yet")
	// ErrNotOwner: a release or reclaim whose compare-and-set failed.
	ErrNotOwner = errors.New("block is not owned as stated")
	// ErrNodeAlive: release refused because the node is alive.
	ErrNodeAlive = errors.New("node is alive")
	// ErrLeaseActive: the block cannot move yet, as its owner's lease has
	// not ended by the leader's clock; LeaseWait says for how long.
	ErrLeaseActive = errors.New("the node's lease on its block has not ended")
	// ErrUnknownNode: no block is assigned to that node name.
	ErrUnknownNode = errors.New("no block assigned to that node")
	// ErrBadRequest: a malformed command or RPC.
	ErrBadRequest = errors.New("malformed request")
	// ErrStopped: the ledger is shut down.
	ErrStopped = errors.New("ledger stopped")
)

// errorCodes names each kind on the wire; unknown codes decode as plain errors.
// ErrNoReport: the node asked has no report to give (Config.Report is
// nil, or it failed).
var ErrNoReport = errors.New("no report")

var errorCodes = []struct {
	code string
	kind error
}{
	{"no-leader", ErrNoLeader},
	{"pool-exhausted", ErrPoolExhausted},
	{"identity", ErrIdentity},
	{"foreign-cluster", ErrForeignCluster},
	{"pool-mismatch", ErrPoolMismatch},
	{"not-founded", ErrNotFounded},
	{"not-owner", ErrNotOwner},
	{"node-alive", ErrNodeAlive},
	{"unknown-node", ErrUnknownNode},
	{"lease-active", ErrLeaseActive},
	{"bad-request", ErrBadRequest},
	{"stopped", ErrStopped},
	{"no-report", ErrNoReport},
}

// leaseActiveError is a move refused until the owner's lease has ended.
type leaseActiveError struct {
	msg  string
	wait time.Duration
}

func (e *leaseActiveError) Error() string { return e.msg }
func (e *leaseActiveError) Unwrap() error { return ErrLeaseActive }

// LeaseWait says how long until the lease that err (errors.Is
// ErrLeaseActive) waits for has ended, as the leader said; false for any
// other error.
func LeaseWait(err error) (time.Duration, bool) {
	var l *leaseActiveError
	if errors.As(err, &l) {
		return l.wait, true
	}
	var r *remoteError
	if errors.As(err, &r) && errors.Is(r.kind, ErrLeaseActive) {
		return r.wait, true
	}
	return 0, false
}

func errorCode(err error) string {
	for _, c := range errorCodes {
		if errors.Is(err, c.kind) {
			return c.code
		}
	}
	return ""
}

func errorKind(code string) error {
	for _, c := range errorCodes {
		if c.code == code {
			return c.kind
		}
	}
	return nil
}
