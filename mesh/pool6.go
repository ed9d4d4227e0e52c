package mesh

import (
	"fmt"
	"math/big"
	"net/netip"
)

// IPv6 blocks follow from the ledger's IPv4 blocks: a host holding block i
// of the IPv4 pool holds block i of the IPv6 pool (Block6). The ledger
// keeps one entry per host, so ownership, leases, fencing and reclaim of
// the IPv6 block are those of the IPv4 block, with nothing to replicate.
const (
	// DefaultBlockBits6 is the IPv6 block size unless --block-size6 says
	// otherwise: a /64 per host, the usual IPv6 subnet.
	DefaultBlockBits6 = 64
	// MaxBlockBits6 is the longest IPv6 block prefix, for small pools: a
	// /120 holds 255 pod addresses. node.json's validation
	// (nodestate.MaxBlock6Bits) allows the same.
	MaxBlockBits6 = 120
)

// CheckPool6 accepts an IPv6 pool and block size that can hold the IPv6
// twin of every block of the IPv4 pool (cut into blocks of blockBits):
// pool6 is an IPv6 network address, blockBits6 lies between its prefix
// length and MaxBlockBits6, and pool6 has at least as many blocks as the
// IPv4 pool.
func CheckPool6(pool netip.Prefix, blockBits int, pool6 netip.Prefix, blockBits6 int) error {
	switch {
	case !pool6.IsValid() || !pool6.Addr().Is6() || pool6.Addr().Is4In6():
		return fmt.Errorf("pool6 %s is not an IPv6 network", pool6)
	case pool6.Masked() != pool6:
		return fmt.Errorf("pool6 %s is not a network address (did you mean %s?)", pool6, pool6.Masked())
	case blockBits6 < pool6.Bits() || blockBits6 > MaxBlockBits6:
		return fmt.Errorf("IPv6 block size /%d must be between the pool6's prefix length /%d and /%d", blockBits6, pool6.Bits(), MaxBlockBits6)
	case blockBits6-pool6.Bits() < blockBits-pool.Bits():
		return fmt.Errorf("pool6 %s holds 2^%d blocks of /%d, fewer than the 2^%d blocks of /%d in pool %s: every IPv4 block needs its IPv6 twin; use a shorter pool6 prefix or a longer block-size6",
			pool6, blockBits6-pool6.Bits(), blockBits6, blockBits-pool.Bits(), blockBits, pool)
	}
	return nil
}

// Block6 is the IPv6 block of the host holding block of pool: the block of
// pool6 with prefix length blockBits6 at block's index in pool. It fails
// when block is not a block of pool or pool6 has no block of that index
// (CheckPool6 rules that out for blocks of the checked size). It is pure.
func Block6(pool, block, pool6 netip.Prefix, blockBits6 int) (netip.Prefix, error) {
	switch {
	case !block.Addr().Is4() || !pool.Addr().Is4() || block.Bits() < pool.Bits() || !pool.Contains(block.Addr()) || block.Masked() != block:
		return netip.Prefix{}, fmt.Errorf("block %s is not a block of pool %s", block, pool)
	case !pool6.Addr().Is6() || pool6.Addr().Is4In6() || blockBits6 < pool6.Bits() || blockBits6 > 128:
		return netip.Prefix{}, fmt.Errorf("pool6 %s cannot be cut into blocks of /%d", pool6, blockBits6)
	}
	index := (ipInt(block.Addr()) - ipInt(pool.Masked().Addr())) >> (32 - block.Bits())
	if index>>(blockBits6-pool6.Bits()) != 0 {
		return netip.Prefix{}, fmt.Errorf("block %s is block %d of pool %s, but pool6 %s has only 2^%d blocks of /%d",
			block, index, pool, pool6, blockBits6-pool6.Bits(), blockBits6)
	}
	n := new(big.Int).SetBytes(pool6.Masked().Addr().AsSlice())
	n.Add(n, new(big.Int).Lsh(new(big.Int).SetUint64(index), uint(128-blockBits6)))
	var b [16]byte
	n.FillBytes(b[:])
	return netip.PrefixFrom(netip.AddrFrom16(b), blockBits6), nil
}

// ipInt is an IPv4 address as a number.
func ipInt(a netip.Addr) uint64 {
	b := a.As4()
	return uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
}
