package ledger

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/hashicorp/raft"
)

// maxFoundScan bounds how many log entries checkStoredLayout reads to find
// the Found entry: it is the first command of a ledger (the founder's
// leader loop writes it before anything else), preceded only by raft's
// own configuration and no-op entries.
const maxFoundScan = 256

// storedLayout is the pool layout of the ledger this node's stores belong to.
type storedLayout struct {
	ClusterID ClusterID
	Pool      netip.Prefix
	BlockBits int
}

// checkStoredLayout refuses a node whose configured pool or block size
// differs from the ledger its stored state belongs to. Such a node would
// reject every member's metadata, count them dead and, leading, reclaim
// their blocks; refused here, it never starts raft, so it never stands for
// election nor reclaims. A node without stored state (or whose log no
// longer shows the Found entry) is checked at join instead (leadJoin).
func (l *Ledger) checkStoredLayout() error {
	st, applied := l.fsm.snapshotState()
	layout := storedLayout{ClusterID: st.ClusterID, Pool: st.Pool, BlockBits: st.BlockBits}
	if !st.Founded() {
		found, ok, err := foundInLog(l.stores.Log, applied)
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		layout = storedLayout{ClusterID: found.ClusterID, Pool: found.Pool, BlockBits: found.BlockBits}
	}
	return layoutMismatch(layout, l.cfg.Pool, l.cfg.BlockBits, l.cfg.Dir)
}

// layoutMismatch is nil when the configured pool and block size are the
// stored ledger's, else an ErrPoolMismatch naming both.
func layoutMismatch(stored storedLayout, pool netip.Prefix, blockBits int, dir string) error {
	if stored.Pool == pool && stored.BlockBits == blockBits {
		return nil
	}
	where := "its stored state"
	if dir != "" {
		where = "its state in " + dir
	}
	return fmt.Errorf("%w: this node is configured with pool %s and /%d blocks, but %s belongs to ledger %s with pool %s and /%d blocks; "+
		"start it with the ledger's pool and block size (or remove that state to make it a new node)",
		ErrPoolMismatch, pool, blockBits, where, stored.ClusterID, stored.Pool, stored.BlockBits)
}

// foundInLog reads the Found entry from the log after index after (what a
// snapshot already covers). It is among the first entries, so the scan
// reads at most maxFoundScan of them and never replays the log.
func foundInLog(logs raft.LogStore, after uint64) (Found, bool, error) {
	first, err := logs.FirstIndex()
	if err != nil {
		return Found{}, false, fmt.Errorf("read ledger log: %w", err)
	}
	last, err := logs.LastIndex()
	if err != nil {
		return Found{}, false, fmt.Errorf("read ledger log: %w", err)
	}
	start := max(first, after+1)
	for i := start; i <= last && i < start+maxFoundScan; i++ {
		var e raft.Log
		if err := logs.GetLog(i, &e); err != nil {
			if errors.Is(err, raft.ErrLogNotFound) {
				continue
			}
			return Found{}, false, fmt.Errorf("read ledger log entry %d: %w", i, err)
		}
		if e.Type != raft.LogCommand {
			continue
		}
		// The state machine skips what it cannot decode and refuses any
		// command before the Found entry: so does this scan.
		if cmd, err := decodeCommand(e.Data); err == nil {
			if f, ok := cmd.(Found); ok {
				return f, true, nil
			}
		}
	}
	return Found{}, false, nil
}
