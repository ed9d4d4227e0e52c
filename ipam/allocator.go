package ipam

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/disk"
)

// ErrCodeExhausted is the CNI error code (plugin-specific range) for a block
// with no free address left.
const ErrCodeExhausted uint = 100

// rangeID names the store's round-robin marker (last_reserved_ip.0). There is
// one range per node: the current block.
const rangeID = "0"

// Allocator reserves and releases pod addresses in one network's store.
// Each method takes the store's file lock, so Allocators in different
// processes (concurrent plugin invocations) never hand out the same address.
type Allocator struct {
	store *disk.Store
}

// Open opens (creating if needed) the reservation store for cfg.
func Open(cfg Config) (*Allocator, error) {
	store, err := disk.New(cfg.Network, cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("open address store %s: %w", cfg.StoreDir(), err)
	}
	return &Allocator{store: store}, nil
}

// Close releases the store's lock file descriptor.
func (a *Allocator) Close() error { return a.store.Close() }

// Allocate returns the address (containerID, ifname) already holds in block,
// or reserves the next free one after the last address handed out, so a
// freed address is not reused at once. A full block is CNI error
// ErrCodeExhausted.
func (a *Allocator) Allocate(block netip.Prefix, containerID, ifname string) (netip.Addr, error) {
	first, last, err := UsableRange(block)
	if err != nil {
		return netip.Addr{}, err
	}
	if err := a.store.Lock(); err != nil {
		return netip.Addr{}, fmt.Errorf("lock address store: %w", err)
	}
	defer a.store.Unlock()

	for _, held := range a.held(containerID, ifname) {
		if block.Contains(held) {
			return held, nil
		}
	}

	start := first
	if prev, err := a.store.LastReservedIP(rangeID); err == nil {
		if p, ok := netip.AddrFromSlice(prev.To4()); ok && p.Compare(first) >= 0 && p.Compare(last) < 0 {
			start = p.Next()
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return netip.Addr{}, fmt.Errorf("read last reserved address: %w", err)
	}

	addr := start
	for {
		ok, err := a.store.Reserve(containerID, ifname, net.IP(addr.AsSlice()), rangeID)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("reserve %s: %w", addr, err)
		}
		if ok {
			return addr, nil
		}
		if addr = addr.Next(); addr.Compare(last) > 0 {
			addr = first
		}
		if addr == start {
			return netip.Addr{}, types.NewError(ErrCodeExhausted,
				fmt.Sprintf("block %s is exhausted: all addresses %s-%s are in use", block, first, last), "")
		}
	}
}

// Release frees every address held by (containerID, ifname), in any block.
// Releasing nothing is not an error.
func (a *Allocator) Release(containerID, ifname string) error {
	if err := a.store.Lock(); err != nil {
		return fmt.Errorf("lock address store: %w", err)
	}
	defer a.store.Unlock()
	if err := a.store.ReleaseByID(containerID, ifname); err != nil {
		return fmt.Errorf("release addresses of %s/%s: %w", containerID, ifname, err)
	}
	return nil
}

// Held returns the addresses reserved for (containerID, ifname).
func (a *Allocator) Held(containerID, ifname string) ([]netip.Addr, error) {
	if err := a.store.Lock(); err != nil {
		return nil, fmt.Errorf("lock address store: %w", err)
	}
	defer a.store.Unlock()
	return a.held(containerID, ifname), nil
}

func (a *Allocator) held(containerID, ifname string) []netip.Addr {
	var addrs []netip.Addr
	for _, ip := range a.store.GetByID(containerID, ifname) {
		if addr, ok := netip.AddrFromSlice(ip); ok {
			addrs = append(addrs, addr.Unmap())
		}
	}
	return addrs
}

// GC frees every reservation whose attachment is not in valid.
func (a *Allocator) GC(valid []types.GCAttachment) error {
	if err := a.store.GC(valid); err != nil {
		return fmt.Errorf("garbage-collect address store: %w", err)
	}
	return nil
}

// UsableRange returns the first and last address handed out from block.
//
// With /32 routes every address of a block would work, including the network
// address and the last one; they are skipped anyway because operators,
// firewalls and tools still read x.x.x.0 and x.x.x.255 as network and
// broadcast addresses, and a pod holding one invites confusion.
func UsableRange(block netip.Prefix) (first, last netip.Addr, err error) {
	if !block.Addr().Is4() {
		return first, last, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("block %s: only IPv4 blocks are supported", block), "")
	}
	if block.Bits() > 30 {
		return first, last, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("block %s has no usable address: it must be /30 or larger", block), "")
	}
	base := block.Masked().Addr().As4()
	n := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	n |= 1<<(32-block.Bits()) - 1
	bcast := netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
	return block.Masked().Addr().Next(), bcast.Prev(), nil
}
