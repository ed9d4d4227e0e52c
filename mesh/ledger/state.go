package ledger

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"unicode/utf8"
)

// Owner is the holder of one block.
type Owner struct {
	ID     NodeID
	Name   string
	HostIP netip.Addr
	Index  uint64 // raft index of the entry that assigned the block
}

// State is the replicated ledger: the pool layout and who owns which block.
// Nothing else is kept, so its size is bounded by the number of blocks held.
type State struct {
	ClusterID ClusterID
	Pool      netip.Prefix
	BlockBits int
	Blocks    map[netip.Prefix]Owner
}

// Command is one log entry: Found, Claim, Release or Reclaim.
type Command interface{ op() string }

// Found is the first entry of a new ledger.
type Found struct {
	ClusterID ClusterID
	Pool      netip.Prefix
	BlockBits int
}

// Claim asks for a block for node ID. An ID that holds a block gets it back
// (its name and host IP updated); otherwise Hint if it is a free block of the
// pool, else a free block chosen deterministically from the ID.
type Claim struct {
	ID     NodeID
	Name   string
	HostIP netip.Addr
	Hint   netip.Prefix
}

// Release frees Block iff it is owned by OwnerID (compare-and-set).
type Release struct {
	Block   netip.Prefix
	OwnerID NodeID
}

// Reclaim frees Block iff its owner and assignment index still match: a
// reclaim decided on an old view never frees a block assigned since.
type Reclaim struct {
	Block      netip.Prefix
	OwnerID    NodeID
	OwnerIndex uint64
}

func (Found) op() string   { return "found" }
func (Claim) op() string   { return "claim" }
func (Release) op() string { return "release" }
func (Reclaim) op() string { return "reclaim" }

// Result is what applying a command gives: the block concerned, or why not.
type Result struct {
	Block netip.Prefix
	Err   error
}

// Limits that keep the state and its entries small whatever a peer sends.
const (
	maxNameLen = 253
	maxBlocks  = 1 << 20 // blocks per pool: bounds the work of one Claim
)

// Founded reports whether the ledger has its Found entry.
func (s *State) Founded() bool { return s.Pool.IsValid() }

// Clone returns a deep copy.
func (s *State) Clone() State {
	c := *s
	c.Blocks = make(map[netip.Prefix]Owner, len(s.Blocks))
	for b, o := range s.Blocks {
		c.Blocks[b] = o
	}
	return c
}

// BlockOf returns the block held by id.
func (s *State) BlockOf(id NodeID) (netip.Prefix, Owner, bool) {
	for b, o := range s.Blocks {
		if o.ID == id {
			return b, o, true
		}
	}
	return netip.Prefix{}, Owner{}, false
}

// BlockOfName returns the block held under node name.
func (s *State) BlockOfName(name string) (netip.Prefix, Owner, bool) {
	for b, o := range s.Blocks {
		if o.Name == name {
			return b, o, true
		}
	}
	return netip.Prefix{}, Owner{}, false
}

// NameKeptFrom returns the owner that keeps node id from using name: a live
// node (alive reports gossip's verdict) with another ID holding a block
// under name. A node that holds a block under name itself is never kept
// from it: after a partition two nodes may each hold one (the second was
// granted while the first looked dead, as a reinstalled host is), and
// refusing the first one's renewals would cut off a host that did nothing
// wrong. Every block under name is looked at, not one.
func (s *State) NameKeptFrom(name string, id NodeID, alive func(NodeID) bool) (Owner, bool) {
	if _, o, ok := s.BlockOf(id); ok && o.Name == name {
		return Owner{}, false
	}
	for _, o := range s.Blocks {
		if o.Name == name && o.ID != id && alive(o.ID) {
			return o, true
		}
	}
	return Owner{}, false
}

// Apply applies one committed entry. It is deterministic: no clocks, no I/O,
// no randomness; every replica reaches the same state from the same log.
func (s *State) Apply(index uint64, c Command) Result {
	if s.Blocks == nil {
		s.Blocks = make(map[netip.Prefix]Owner)
	}
	switch c := c.(type) {
	case Found:
		if s.Founded() {
			return Result{Err: fmt.Errorf("%w: ledger already founded as %s", ErrBadRequest, s.ClusterID)}
		}
		if err := validatePool(c.Pool, c.BlockBits); err != nil {
			return Result{Err: err}
		}
		if c.ClusterID.IsZero() {
			return Result{Err: fmt.Errorf("%w: zero cluster ID", ErrBadRequest)}
		}
		s.ClusterID, s.Pool, s.BlockBits = c.ClusterID, c.Pool, c.BlockBits
		return Result{}
	case Claim:
		return s.applyClaim(index, c)
	case Release:
		o, ok := s.Blocks[c.Block]
		if !ok || o.ID != c.OwnerID {
			return Result{Block: c.Block, Err: fmt.Errorf("%w: release %s by %s", ErrNotOwner, c.Block, c.OwnerID)}
		}
		delete(s.Blocks, c.Block)
		return Result{Block: c.Block}
	case Reclaim:
		o, ok := s.Blocks[c.Block]
		if !ok || o.ID != c.OwnerID || o.Index != c.OwnerIndex {
			return Result{Block: c.Block, Err: fmt.Errorf("%w: reclaim %s from %s at index %d", ErrNotOwner, c.Block, c.OwnerID, c.OwnerIndex)}
		}
		delete(s.Blocks, c.Block)
		return Result{Block: c.Block}
	default:
		return Result{Err: fmt.Errorf("%w: unknown command %T", ErrBadRequest, c)}
	}
}

func (s *State) applyClaim(index uint64, c Claim) Result {
	if !s.Founded() {
		return Result{Err: ErrNotFounded}
	}
	if err := validClaimant(c.ID, c.Name, c.HostIP); err != nil {
		return Result{Err: err}
	}
	if b, o, ok := s.BlockOf(c.ID); ok {
		o.Name, o.HostIP = c.Name, c.HostIP
		s.Blocks[b] = o
		return Result{Block: b}
	}
	b, ok := s.freeBlock(c.ID, c.Hint)
	if !ok {
		return Result{Err: fmt.Errorf("%w: %d blocks of %s", ErrPoolExhausted, s.numBlocks(), s.Pool)}
	}
	s.Blocks[b] = Owner{ID: c.ID, Name: c.Name, HostIP: c.HostIP, Index: index}
	return Result{Block: b}
}

// freeBlock returns the hint if it is a free block of the pool, else a free
// block picked from the ID: up to probeCandidates blocks at hashed positions,
// then the first free one after the first candidate. Claimants that start at
// once mostly want different blocks, every replica picks the same one, and a
// claim costs O(1) until the pool is nearly full.
func (s *State) freeBlock(id NodeID, hint netip.Prefix) (netip.Prefix, bool) {
	if s.isBlock(hint) {
		if _, taken := s.Blocks[hint]; !taken {
			return hint, true
		}
	}
	n := s.numBlocks()
	if uint64(len(s.Blocks)) >= n {
		return netip.Prefix{}, false
	}
	const probeCandidates = 8
	for j := byte(0); j < probeCandidates; j++ {
		b := nthBlock(s.Pool, s.BlockBits, candidate(id, j)%n)
		if _, taken := s.Blocks[b]; !taken {
			return b, true
		}
	}
	start := candidate(id, 0) % n
	for k := uint64(1); k < n; k++ {
		b := nthBlock(s.Pool, s.BlockBits, (start+k)%n)
		if _, taken := s.Blocks[b]; !taken {
			return b, true
		}
	}
	return netip.Prefix{}, false
}

// candidate is FNV-1a over the ID and the probe number.
func candidate(id NodeID, j byte) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for _, c := range id {
		h = (h ^ uint64(c)) * prime
	}
	return (h ^ uint64(j)) * prime
}

func (s *State) numBlocks() uint64 { return 1 << (s.BlockBits - s.Pool.Bits()) }

// isBlock reports whether p is a block of the pool: right size, aligned, inside.
func (s *State) isBlock(p netip.Prefix) bool {
	return p.IsValid() && p.Bits() == s.BlockBits && p.Masked() == p &&
		p.Addr().Is4() == s.Pool.Addr().Is4() && s.Pool.Contains(p.Addr())
}

// nthBlock returns block i of the pool (i < numBlocks).
func nthBlock(pool netip.Prefix, blockBits int, i uint64) netip.Prefix {
	a := pool.Addr().As16()
	shift := pool.Addr().BitLen() - blockBits // host bits per block
	// Add i<<shift to the 128-bit address (as16 holds v4 in the low 32 bits).
	hi, lo := binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:])
	var addHi, addLo uint64
	switch {
	case shift >= 64:
		addHi = i << (shift - 64)
	case shift == 0:
		addLo = i
	default:
		addLo = i << shift
		addHi = i >> (64 - shift)
	}
	lo2 := lo + addLo
	if lo2 < lo {
		hi++
	}
	hi += addHi
	binary.BigEndian.PutUint64(a[:8], hi)
	binary.BigEndian.PutUint64(a[8:], lo2)
	addr := netip.AddrFrom16(a)
	if pool.Addr().Is4() {
		addr = addr.Unmap()
	}
	return netip.PrefixFrom(addr, blockBits)
}

func validatePool(pool netip.Prefix, blockBits int) error {
	if !pool.IsValid() || pool.Masked() != pool || pool.Addr().Is4In6() || pool.Addr().Zone() != "" {
		return fmt.Errorf("%w: pool %s is not a valid network prefix", ErrBadRequest, pool)
	}
	if blockBits <= pool.Bits() || blockBits > pool.Addr().BitLen() {
		return fmt.Errorf("%w: block size /%d does not fit pool %s", ErrBadRequest, blockBits, pool)
	}
	if blockBits-pool.Bits() > 20 || 1<<(blockBits-pool.Bits()) > maxBlocks {
		return fmt.Errorf("%w: pool %s has more than %d blocks of /%d", ErrBadRequest, pool, maxBlocks, blockBits)
	}
	return nil
}

func validClaimant(id NodeID, name string, hostIP netip.Addr) error {
	if id.IsZero() {
		return fmt.Errorf("%w: zero node ID", ErrBadRequest)
	}
	if err := validName(name); err != nil {
		return err
	}
	if !hostIP.IsValid() || hostIP.Zone() != "" || hostIP.IsUnspecified() {
		return fmt.Errorf("%w: host IP %q", ErrBadRequest, hostIP)
	}
	return nil
}

func validName(name string) error {
	if name == "" || len(name) > maxNameLen || !utf8.ValidString(name) {
		return fmt.Errorf("%w: node name %q", ErrBadRequest, name)
	}
	for _, r := range name {
		if r < 0x21 || r == 0x7f {
			return fmt.Errorf("%w: node name %q has a space or control character", ErrBadRequest, name)
		}
	}
	return nil
}

// Wire formats: versioned JSON, decoded strictly (unknown fields and
// operations are rejected) and validated before use.

const wireVersion = 1

type wireCommand struct {
	V       int      `json:"v"`
	Op      string   `json:"op"`
	Found   *Found   `json:"found,omitempty"`
	Claim   *Claim   `json:"claim,omitempty"`
	Release *Release `json:"release,omitempty"`
	Reclaim *Reclaim `json:"reclaim,omitempty"`
}

func encodeCommand(c Command) ([]byte, error) {
	w := wireCommand{V: wireVersion, Op: c.op()}
	switch c := c.(type) {
	case Found:
		w.Found = &c
	case Claim:
		w.Claim = &c
	case Release:
		w.Release = &c
	case Reclaim:
		w.Reclaim = &c
	default:
		return nil, fmt.Errorf("%w: unknown command %T", ErrBadRequest, c)
	}
	return json.Marshal(w)
}

func decodeCommand(b []byte) (Command, error) {
	var w wireCommand
	if err := strictUnmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("%w: command: %v", ErrBadRequest, err)
	}
	if w.V != wireVersion {
		return nil, fmt.Errorf("%w: command version %d", ErrBadRequest, w.V)
	}
	bodies := 0
	for _, set := range []bool{w.Found != nil, w.Claim != nil, w.Release != nil, w.Reclaim != nil} {
		if set {
			bodies++
		}
	}
	if bodies != 1 {
		return nil, fmt.Errorf("%w: command %q with %d bodies", ErrBadRequest, w.Op, bodies)
	}
	switch {
	case w.Op == "found" && w.Found != nil:
		return *w.Found, nil
	case w.Op == "claim" && w.Claim != nil:
		return *w.Claim, nil
	case w.Op == "release" && w.Release != nil:
		return *w.Release, nil
	case w.Op == "reclaim" && w.Reclaim != nil:
		return *w.Reclaim, nil
	}
	return nil, fmt.Errorf("%w: unknown command %q", ErrBadRequest, w.Op)
}

func strictUnmarshal(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if _, err := d.Token(); err != io.EOF {
		return fmt.Errorf("trailing data after JSON value")
	}
	return nil
}

type wireState struct {
	V         int         `json:"v"`
	ClusterID ClusterID   `json:"cluster"`
	Pool      string      `json:"pool"`
	BlockBits int         `json:"bits"`
	Blocks    []wireOwner `json:"blocks"`
}

type wireOwner struct {
	Block  netip.Prefix `json:"b"`
	ID     NodeID       `json:"id"`
	Name   string       `json:"n"`
	HostIP netip.Addr   `json:"ip"`
	Index  uint64       `json:"i"`
}

// MarshalBinary encodes the state (the raft snapshot), blocks in address
// order so equal states encode equally.
func (s *State) MarshalBinary() ([]byte, error) {
	w := wireState{V: wireVersion, ClusterID: s.ClusterID, BlockBits: s.BlockBits, Blocks: make([]wireOwner, 0, len(s.Blocks))}
	if s.Pool.IsValid() {
		w.Pool = s.Pool.String()
	}
	for b, o := range s.Blocks {
		w.Blocks = append(w.Blocks, wireOwner{Block: b, ID: o.ID, Name: o.Name, HostIP: o.HostIP, Index: o.Index})
	}
	slices.SortFunc(w.Blocks, func(a, b wireOwner) int { return a.Block.Addr().Compare(b.Block.Addr()) })
	return json.Marshal(w)
}

// UnmarshalBinary decodes and validates a state written by MarshalBinary.
func (s *State) UnmarshalBinary(b []byte) error {
	var w wireState
	if err := strictUnmarshal(b, &w); err != nil {
		return fmt.Errorf("%w: state: %v", ErrBadRequest, err)
	}
	if w.V != wireVersion {
		return fmt.Errorf("%w: state version %d", ErrBadRequest, w.V)
	}
	n := State{ClusterID: w.ClusterID, BlockBits: w.BlockBits, Blocks: make(map[netip.Prefix]Owner, len(w.Blocks))}
	if w.Pool != "" {
		pool, err := netip.ParsePrefix(w.Pool)
		if err != nil {
			return fmt.Errorf("%w: state pool: %v", ErrBadRequest, err)
		}
		if err := validatePool(pool, w.BlockBits); err != nil {
			return fmt.Errorf("state: %w", err)
		}
		n.Pool = pool
	} else if len(w.Blocks) > 0 || w.BlockBits != 0 || !w.ClusterID.IsZero() {
		return fmt.Errorf("%w: state without a pool has content", ErrBadRequest)
	}
	ids := make(map[NodeID]bool, len(w.Blocks))
	for _, o := range w.Blocks {
		if !n.isBlock(o.Block) {
			return fmt.Errorf("%w: state: %s is not a block of %s", ErrBadRequest, o.Block, n.Pool)
		}
		if _, dup := n.Blocks[o.Block]; dup {
			return fmt.Errorf("%w: state: block %s twice", ErrBadRequest, o.Block)
		}
		if err := validClaimant(o.ID, o.Name, o.HostIP); err != nil {
			return fmt.Errorf("state: block %s: %w", o.Block, err)
		}
		if ids[o.ID] {
			return fmt.Errorf("%w: state: node %s holds two blocks", ErrBadRequest, o.ID)
		}
		ids[o.ID] = true
		n.Blocks[o.Block] = Owner{ID: o.ID, Name: o.Name, HostIP: o.HostIP, Index: o.Index}
	}
	*s = n
	return nil
}
