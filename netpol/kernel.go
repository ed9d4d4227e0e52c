package netpol

import (
	"errors"
	"sync"
)

// Kernel is what enforcement asks of the host. NFTKernel is the real one;
// FakeKernel keeps the last ruleset in memory for tests of what drives it.
type Kernel interface {
	// Apply replaces the whole content of table inet grapevine-policy with
	// rs in one atomic transaction: packets see the old ruleset or the
	// new one, never a mix or none.
	Apply(rs Ruleset) error
	// Remove deletes the table, if it exists, and with it all
	// enforcement.
	Remove() error
	// Drops reads how many packets the table's drop rules have dropped
	// since it was last written.
	Drops() (Drops, error)
}

// Drops counts packets dropped: PolicyPackets by pods' policies (nothing
// allowed them), UnknownPackets because their local address belonged to no
// known pod. Apply writes the table anew, so both start from zero again.
type Drops struct {
	PolicyPackets  uint64
	UnknownPackets uint64
}

// FakeKernel is an in-memory Kernel. It is safe for concurrent use.
type FakeKernel struct {
	mu      sync.Mutex
	current *Ruleset // nil: no table
	applies int
	fail    error
	drops   Drops
}

var _ Kernel = (*FakeKernel)(nil)

// Apply implements Kernel.
func (f *FakeKernel) Apply(rs Ruleset) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.current = &rs
	f.applies++
	f.drops = Drops{} // the table is written anew
	return nil
}

// Remove implements Kernel.
func (f *FakeKernel) Remove() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.current = nil
	return nil
}

// Drops implements Kernel: what SetDrops set since the last Apply.
func (f *FakeKernel) Drops() (Drops, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return Drops{}, f.fail
	}
	return f.drops, nil
}

// SetDrops sets what Drops returns.
func (f *FakeKernel) SetDrops(d Drops) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.drops = d
}

// Current returns the ruleset in force and whether the table exists.
func (f *FakeKernel) Current() (Ruleset, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.current == nil {
		return Ruleset{}, false
	}
	return *f.current, true
}

// Applies counts successful Apply calls.
func (f *FakeKernel) Applies() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applies
}

// FailWith makes every later call fail with err (nil: succeed again).
func (f *FakeKernel) FailWith(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = err
}

// ErrNoNFTables means the kernel lacks what the table needs (nf_tables with
// inet tables, interval sets, verdict maps, conntrack).
var ErrNoNFTables = errors.New("kernel lacks nftables support for network policy (nf_tables, nft_ct, nft_set_rbtree, nft_set_hash)")
