package ipam

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/grapevine-net/grapevine/node/nodestate"
)

// ErrCodeExhausted is the CNI error code (plugin-specific range) for a block
// with no free address left.
const ErrCodeExhausted uint = 100

// Allocator reserves and releases pod addresses in one network's store.
// Each method takes the store's file lock, so Allocators in different
// processes (concurrent plugin invocations) never hand out the same address.
type Allocator struct {
	store *store
}

// Open opens (creating if needed) the reservation store for cfg.
func Open(cfg Config) (*Allocator, error) {
	st, err := openStore(cfg.StoreDir())
	if err != nil {
		return nil, fmt.Errorf("open address store %s: %w", cfg.StoreDir(), err)
	}
	return &Allocator{store: st}, nil
}

// Close releases the store's lock file descriptor.
func (a *Allocator) Close() error { return a.store.lock.Close() }

// locked runs fn holding the store's lock.
func (a *Allocator) locked(fn func() error) error {
	if err := a.store.lock.Lock(); err != nil {
		return fmt.Errorf("lock address store %s: %w", a.store.dir, err)
	}
	defer a.store.lock.Unlock()
	return fn()
}

// Allocate returns the address (containerID, ifname) already holds in block,
// or reserves the next free one after the last address handed out, so a
// freed address is not reused at once. reserved says which: only an address
// this call reserved is the caller's to release when its ADD fails, since
// one held already belongs to an attachment that may be running. A full
// block is CNI error ErrCodeExhausted.
func (a *Allocator) Allocate(block netip.Prefix, containerID, ifname string) (addr netip.Addr, reserved bool, err error) {
	first, last, err := UsableRange(block)
	if err != nil {
		return netip.Addr{}, false, err
	}
	err = a.locked(func() error {
		all, err := a.store.list()
		if err != nil {
			return err
		}
		taken := make(map[netip.Addr]bool, len(all))
		for _, r := range all {
			if r.names(containerID, ifname) && block.Contains(r.Addr) {
				// A repeated ADD replaces the attachment's veth; renewed,
				// the reservation is spared by CollectStale while the
				// veth is missing, however long ago it was first made.
				addr = r.Addr
				return a.store.touch(addr)
			}
			taken[r.Addr] = true
		}
		start := first
		if p, ok := a.store.lastReserved(first); ok && p.Compare(first) >= 0 && p.Compare(last) < 0 {
			start = p.Next()
		}
		for next := start; ; {
			if !taken[next] {
				ok, err := a.store.reserve(next, containerID, ifname)
				if err != nil {
					return err
				}
				if ok {
					addr, reserved = next, true
					return nil
				}
			}
			if next = next.Next(); next.Compare(last) > 0 {
				next = first
			}
			if next == start {
				return types.NewError(ErrCodeExhausted,
					fmt.Sprintf("block %s is exhausted: all addresses %s-%s are in use", block, first, last), "")
			}
		}
	})
	return addr, reserved, err
}

// AllocateFromState reserves the attachment's addresses in the node's
// blocks: one in st.Block and, on a dual-stack node, one in st.Block6. It
// returns them (IPv4 first) and those of them this call reserved; when the
// second allocation fails, the first is freed again if this call reserved
// it, so a failure leaves the store as it found it.
func AllocateFromState(a *Allocator, st nodestate.State, containerID, ifname string) (addrs, reserved []netip.Addr, err error) {
	for _, block := range st.Blocks() {
		addr, fresh, err := a.Allocate(block, containerID, ifname)
		if err != nil {
			if uerr := a.ReleaseAddrs(reserved, containerID, ifname); uerr != nil {
				return nil, nil, fmt.Errorf("%w; freeing %v again failed: %v", err, reserved, uerr)
			}
			return nil, nil, err
		}
		addrs = append(addrs, addr)
		if fresh {
			reserved = append(reserved, addr)
		}
	}
	return addrs, reserved, nil
}

// ReleaseAddrs is ReleaseAddr for each of addrs.
func (a *Allocator) ReleaseAddrs(addrs []netip.Addr, containerID, ifname string) error {
	var errs []error
	for _, addr := range addrs {
		errs = append(errs, a.ReleaseAddr(addr, containerID, ifname))
	}
	return errors.Join(errs...)
}

// Release frees every address held by (containerID, ifname), in any block,
// and nothing else. Releasing nothing is not an error.
func (a *Allocator) Release(containerID, ifname string) error {
	return a.collect(func(r Reservation) bool { return r.names(containerID, ifname) }, nil)
}

// ReleaseAddr frees addr if (containerID, ifname) holds it: the undo of an
// ADD that reserved addr, which must not free what the attachment held
// before.
func (a *Allocator) ReleaseAddr(addr netip.Addr, containerID, ifname string) error {
	return a.collect(func(r Reservation) bool { return r.Addr == addr && r.names(containerID, ifname) }, nil)
}

// Held returns the addresses reserved for (containerID, ifname).
func (a *Allocator) Held(containerID, ifname string) ([]netip.Addr, error) {
	var addrs []netip.Addr
	err := a.locked(func() error {
		all, err := a.store.list()
		for _, r := range all {
			if r.names(containerID, ifname) {
				addrs = append(addrs, r.Addr)
			}
		}
		return err
	})
	return addrs, err
}

// GC frees every reservation whose attachment is not in valid, and those
// that name no attachment. The CNI commands call it only when the runtime
// sent cni.dev/valid-attachments (RequireValidAttachments).
func (a *Allocator) GC(valid []types.GCAttachment) error {
	listed := make(map[types.GCAttachment]bool, 2*len(valid))
	for _, v := range valid {
		id := strings.TrimSpace(v.ContainerID)
		listed[types.GCAttachment{ContainerID: id, IfName: v.IfName}] = true
		// host-local's legacy format names no interface: any of the
		// container's keeps it.
		listed[types.GCAttachment{ContainerID: id}] = true
	}
	err := a.collect(func(r Reservation) bool {
		return r.ContainerID == "" || !listed[types.GCAttachment{ContainerID: r.ContainerID, IfName: r.IfName}]
	}, nil)
	if err != nil {
		return fmt.Errorf("garbage-collect address store: %w", err)
	}
	return nil
}

// CollectStale frees the reservations of attachments that are gone, for
// runtimes that never send GC: every reservation written before cutoff for
// which live returns false, and every one written before cutoff that names
// no attachment. live gets the reservation's container ID and interface
// name (an empty IfName means any interface of the container, host-local's
// legacy format) and should say whether that attachment still exists, for
// example whether a host veth carries its alias or its sandbox still runs.
// The cutoff spares reservations of ADDs still in progress, whose veth does
// not exist yet. It returns what it freed, and frees as much as it can
// past errors.
//
// CollectStale is meant for the agent, which calls it periodically; it
// takes the store's lock like every plugin process. A caller that has read
// the store without the lock (ReadReservations) can tell with Stale whether
// a call would free anything.
func CollectStale(cfg Config, cutoff time.Time, live func(types.GCAttachment) bool) ([]Reservation, error) {
	alloc, err := Open(cfg)
	if err != nil {
		return nil, err
	}
	defer alloc.Close()
	var freed []Reservation
	err = alloc.collect(func(r Reservation) bool { return r.Stale(cutoff, live) }, &freed)
	return freed, err
}

// Stale reports whether CollectStale(cfg, cutoff, live) frees r: r was
// written before cutoff and names no attachment, or one live says is gone.
// It is pure.
func (r Reservation) Stale(cutoff time.Time, live func(types.GCAttachment) bool) bool {
	if !r.Written.Before(cutoff) {
		return false
	}
	return r.ContainerID == "" || !live(types.GCAttachment{ContainerID: r.ContainerID, IfName: r.IfName})
}

// collect frees every reservation free selects, carrying on past errors,
// and appends what it freed to freed when that is not nil.
func (a *Allocator) collect(free func(Reservation) bool, freed *[]Reservation) error {
	return a.locked(func() error {
		all, err := a.store.list()
		if err != nil {
			return err
		}
		var errs []error
		for _, r := range all {
			if !free(r) {
				continue
			}
			if err := a.store.release(r.Addr); err != nil {
				errs = append(errs, err)
				continue
			}
			if freed != nil {
				*freed = append(*freed, r)
			}
		}
		return errors.Join(errs...)
	})
}

// Status is nil when an ADD could reserve an address in block now, and says
// why not otherwise: the store cannot be written (a read-only or full disk)
// or every usable address is taken.
func (a *Allocator) Status(block netip.Prefix) error {
	if _, _, err := UsableRange(block); err != nil {
		return err
	}
	// Under the lock: an ADD's clean-up of temporary files would take the
	// probe file away mid-check.
	return a.locked(func() error {
		if err := a.store.writable(); err != nil {
			return fmt.Errorf("address store %s is not writable: %w", a.store.dir, err)
		}
		all, err := a.store.list()
		if err != nil {
			return err
		}
		reserved := make([]netip.Addr, len(all))
		for i, r := range all {
			reserved[i] = r.Addr
		}
		return Exhausted(block, reserved)
	})
}

// Exhausted says, as an error, that every usable address of block is in
// reserved, and is nil while one is free. Addresses outside the usable
// range, and repeats, do not count.
func Exhausted(block netip.Prefix, reserved []netip.Addr) error {
	first, last, err := UsableRange(block)
	if err != nil {
		return err
	}
	held := make(map[netip.Addr]bool, len(reserved))
	for _, addr := range reserved {
		if addr.Compare(first) >= 0 && addr.Compare(last) <= 0 {
			held[addr] = true
		}
	}
	if size := rangeSize(first, last); len(held) >= size {
		return fmt.Errorf("block %s is exhausted: all %d addresses %s-%s are in use", block, size, first, last)
	}
	return nil
}

// rangeSize is how many addresses first..last of one family holds, or
// math.MaxInt when that is more than an int counts (an IPv6 block).
func rangeSize(first, last netip.Addr) int {
	f, l := first.As16(), last.As16()
	for i := 0; i < 8; i++ {
		if f[i] != l[i] {
			return math.MaxInt
		}
	}
	lo := func(b [16]byte) uint64 { return binary.BigEndian.Uint64(b[8:]) }
	n := lo(l) - lo(f)
	if n >= math.MaxInt {
		return math.MaxInt
	}
	return int(n) + 1
}

// UsableRange returns the first and last address handed out from block.
//
// With /32 routes every address of an IPv4 block would work, including the
// network address and the last one; they are skipped anyway because
// operators, firewalls and tools still read x.x.x.0 and x.x.x.255 as
// network and broadcast addresses, and a pod holding one invites confusion.
// An IPv6 block has no broadcast address: only its first (the
// subnet-router anycast address) is skipped.
func UsableRange(block netip.Prefix) (first, last netip.Addr, err error) {
	addr := block.Addr()
	is6 := addr.Is6() && !addr.Is4In6()
	switch {
	case !addr.Is4() && !is6:
		return first, last, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("block %q is not an IPv4 or IPv6 network", block), "")
	case addr.Is4() && block.Bits() > 30:
		return first, last, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("block %s has no usable address: it must be /30 or larger", block), "")
	case is6 && block.Bits() > nodestate.MaxBlock6Bits:
		return first, last, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("block %s is too small: an IPv6 block must be /%d or larger", block, nodestate.MaxBlock6Bits), "")
	}
	base := block.Masked().Addr()
	b := base.AsSlice()
	for i := block.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	end, _ := netip.AddrFromSlice(b)
	if addr.Is4() {
		end = end.Prev()
	}
	return base.Next(), end, nil
}
