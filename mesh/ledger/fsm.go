package ledger

import (
	"fmt"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// maxSnapshot bounds what Restore reads: far above any real state (about
// 130 bytes per block held, at most maxBlocks blocks).
const maxSnapshot = 256 << 20

// fsm is raft's view of State: it decodes entries, applies them under a
// lock, and tells the ledger when anything changed.
type fsm struct {
	mu      sync.RWMutex
	state   State
	applied uint64
	// frozen is a copy of state that readers share until the next entry
	// changes state (nil: none taken since). Every loop of every node
	// reads the state on each membership event, and entries are far rarer
	// than reads: copying a thousand blocks per read was most of a
	// simulated thousand-node cluster's CPU.
	frozen atomic.Pointer[State]

	changed func()
	applies func(op string, err error)
}

var _ raft.FSM = (*fsm)(nil)

func newFSM(changed func(), applies func(op string, err error)) *fsm {
	if changed == nil {
		changed = func() {}
	}
	if applies == nil {
		applies = func(string, error) {}
	}
	return &fsm{state: State{Blocks: map[netip.Prefix]Owner{}}, changed: changed, applies: applies}
}

func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	cmd, err := decodeCommand(l.Data)
	if err != nil {
		// Only a leader with the key writes entries and it encodes them
		// itself; still, a bad entry is skipped on every replica alike.
		f.applies("invalid", err)
		return Result{Err: err}
	}
	f.mu.Lock()
	r := f.state.Apply(l.Index, cmd)
	f.applied = l.Index
	f.frozen.Store(nil)
	f.mu.Unlock()
	f.applies(cmd.op(), r.Err)
	f.changed()
	return r
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	b, err := f.state.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("encode ledger snapshot: %w", err)
	}
	return fsmSnapshot(b), nil
}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxSnapshot+1))
	if err != nil {
		return fmt.Errorf("read ledger snapshot: %w", err)
	}
	if len(b) > maxSnapshot {
		return fmt.Errorf("ledger snapshot larger than %d bytes", maxSnapshot)
	}
	var s State
	if err := s.UnmarshalBinary(b); err != nil {
		return fmt.Errorf("restore ledger snapshot: %w", err)
	}
	f.mu.Lock()
	f.state = s
	f.frozen.Store(nil)
	f.mu.Unlock()
	f.changed()
	return nil
}

// snapshotState returns the state and the index of the last entry applied
// to it. The state's Blocks map is shared with other readers until the next
// entry: read it, never change it (Clone it first).
func (f *fsm) snapshotState() (State, uint64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if s := f.frozen.Load(); s != nil {
		return *s, f.applied
	}
	// Under the read lock no entry applies, so the copy stored is current
	// until the next Apply or Restore clears it under the write lock.
	s := f.state.Clone()
	f.frozen.Store(&s)
	return s, f.applied
}

func (f *fsm) setApplied(index uint64) {
	f.mu.Lock()
	f.applied = max(f.applied, index)
	f.mu.Unlock()
}

type fsmSnapshot []byte

func (s fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return fmt.Errorf("write ledger snapshot: %w", err)
	}
	return sink.Close()
}

func (fsmSnapshot) Release() {}

// clusterID is the ledger this replica belongs to (zero before the Found
// entry), read without copying the state: every ledger connection states it.
func (f *fsm) clusterID() ClusterID {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state.ClusterID
}

// clusterAndApplied is the ledger this replica belongs to and the index of
// the last entry applied, read without copying the state.
func (f *fsm) clusterAndApplied() (ClusterID, uint64) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state.ClusterID, f.applied
}

// ownerName is the name under which id holds a block, if it holds one.
func (f *fsm) ownerName(id NodeID) (string, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, o := range f.state.Blocks {
		if o.ID == id {
			return o.Name, true
		}
	}
	return "", false
}
