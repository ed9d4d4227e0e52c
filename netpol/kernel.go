package netpol

import (
	"context"
	"errors"
	"reflect"
	"slices"
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
	// Watch signals on the returned channel whenever a transaction
	// touches the table, its chains or its rules (not its set elements),
	// whoever made it: our own Apply included, since the kernel's events
	// name no reliable author. It also signals whenever watching
	// starts, the first time included, as changes before it went
	// unseen. Signals
	// coalesce (buffer 1); watching ends with ctx. Act on a signal with
	// Intact.
	Watch(ctx context.Context) <-chan struct{}
	// Intact reports whether the table is still as Apply wrote it for
	// rs, cheaply: the table exists and its chains and sets are exactly
	// those Apply makes for rs, by name (rules and elements unread).
	Intact(rs Ruleset) (bool, error)
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
	// tampered: someone else changed the table since the last Apply.
	tampered bool
	watchers []chan struct{}
	checks   int
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
	f.tampered = false
	f.signalLocked() // as the kernel's events of our own transaction
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
	f.signalLocked()
	return nil
}

// Watch implements Kernel: it signals at once (watching starts), then
// after every Apply, Remove, Tamper and Signal.
func (f *FakeKernel) Watch(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	ch <- struct{}{}
	f.mu.Lock()
	f.watchers = append(f.watchers, ch)
	f.mu.Unlock()
	context.AfterFunc(ctx, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if i := slices.Index(f.watchers, ch); i >= 0 {
			f.watchers = append(f.watchers[:i], f.watchers[i+1:]...)
		}
	})
	return ch
}

// Intact implements Kernel: the table exists, nobody tampered with it
// since the last Apply, and that Apply wrote rs.
func (f *FakeKernel) Intact(rs Ruleset) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checks++
	if f.fail != nil {
		return false, f.fail
	}
	return f.current != nil && !f.tampered && reflect.DeepEqual(*f.current, rs), nil
}

// Tamper changes the table behind the Kernel's back, as `nft flush
// ruleset` or another tool would: deleted true deletes it, false leaves
// it in place but no longer as Apply wrote it. Watchers are signalled.
func (f *FakeKernel) Tamper(deleted bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if deleted {
		f.current = nil
	}
	f.tampered = true
	f.signalLocked()
}

// Signal signals the watchers without changing anything, as a
// transaction on the table that left it as it was, or a restart of
// watching.
func (f *FakeKernel) Signal() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.signalLocked()
}

func (f *FakeKernel) signalLocked() {
	for _, ch := range f.watchers {
		select {
		case ch <- struct{}{}:
		default: // one pending signal stands for any number
		}
	}
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

// IntactChecks counts Intact calls.
func (f *FakeKernel) IntactChecks() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.checks
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
