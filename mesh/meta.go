package mesh

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/grapevine-net/grapevine/mesh/ledger"
)

// metaVersion is the first byte of every metadata value of an IPv4 pool.
// A decoder that sees another version rejects the value, so a future format
// can never be misread as this one. Version 1 carried claims and is gone
// with the vote protocol: agents of the two versions do not route each
// other. Version 2 had no name and no block: memberlist's node name was the
// host's name, so a second host under a live host's name could displace it
// in gossip. Version 3 agents gossip under their node ID and carry the name
// here; agents of versions 2 and 3 reject each other's metadata and do not
// route each other, so a cluster is upgraded by restarting every agent.
const metaVersion = 3

// metaVersion6 is the first byte of the metadata of an IPv6 pool (an
// IPv6-only cluster): version 3's layout with 16-byte host IP, pool and
// block. Its own version byte, rather than a flag, keeps agents that
// predate it from misreading it: they reject it as an unknown version, and
// they could not run an IPv6 pool anyway. Agents of an IPv4 pool still
// write version 3, byte for byte as before.
const metaVersion6 = 4

// metaFixedLen is the length of a version 3 metadata value before the
// name: version(1) flags(1) hostIP(4) pool(4+1) blockBits(1)
// ledgerPort(2) nodeID(16) clusterID(8) block(4+1) nameLen(1). The name
// follows (nameLen bytes, 1-maxNameLen), then, with metaFlagHostIP6, the
// host's IPv6 address (16 bytes), so a value is at most
// metaFixedLen+maxNameLen+16 = 313 bytes, within memberlist's 512.
// Version 4 has 12 more bytes in each of its three addresses
// (metaFixedLen6 = 80) and no IPv6 host address after the name (the host
// IP is one): at most 333 bytes.
const (
	metaFixedLen  = 44
	metaFixedLen6 = metaFixedLen + 3*12
)

// metaHostIP6Len is the length of the optional IPv6 host address.
const metaHostIP6Len = 16

// metaLayout is where a version's fields lie: its addresses are addrLen
// bytes long.
type metaLayout struct {
	version byte
	addrLen int
}

func (l metaLayout) host() int      { return 2 }
func (l metaLayout) pool() int      { return 2 + l.addrLen }
func (l metaLayout) poolBits() int  { return 2 + 2*l.addrLen }
func (l metaLayout) blockBits() int { return l.poolBits() + 1 }
func (l metaLayout) port() int      { return l.poolBits() + 2 }
func (l metaLayout) id() int        { return l.port() + 2 }
func (l metaLayout) cluster() int   { return l.id() + 16 }
func (l metaLayout) block() int     { return l.cluster() + 8 }
func (l metaLayout) blockLen() int  { return l.block() + l.addrLen }
func (l metaLayout) fixedLen() int  { return l.blockLen() + 2 }

// addr reads an address of the layout's length at b[off:].
func (l metaLayout) addr(b []byte, off int) netip.Addr {
	if l.addrLen == 4 {
		return netip.AddrFrom4([4]byte(b[off : off+4]))
	}
	return netip.AddrFrom16([16]byte(b[off : off+16]))
}

// appendAddr appends a (zero: all zeros) in the layout's length.
func (l metaLayout) appendAddr(b []byte, a netip.Addr) []byte {
	if l.addrLen == 4 {
		var v [4]byte
		if a.IsValid() {
			v = a.As4()
		}
		return append(b, v[:]...)
	}
	var v [16]byte
	if a.IsValid() {
		v = a.As16()
	}
	return append(b, v[:]...)
}

var (
	metaLayout4 = metaLayout{version: metaVersion, addrLen: 4}
	metaLayout6 = metaLayout{version: metaVersion6, addrLen: 16}
)

// layoutOf is the layout for a pool of pool's family.
func layoutOf(pool netip.Prefix) metaLayout {
	if pool.Addr().Is4() {
		return metaLayout4
	}
	return metaLayout6
}

// The flags byte: bit 0 leaving, bit 1 ledger state, bits 2-4 the
// member's --bootstrap-expect (0-5), bit 5 founds through the ledger's
// record, bit 6 an IPv6 host address follows the name; bit 7 is zero.
// Agents that predate bit 6 reject values carrying it (unknown flag), so
// only agents with an IPv6 pool and host address set it. Version 4 never
// sets bit 6: its host IP is IPv6 already.
const (
	metaFlagLeaving     = 1 << 0
	metaFlagLedgerState = 1 << 1
	metaExpectShift     = 2
	metaExpectMask      = 0x7 << metaExpectShift
	metaFlagRecord      = 1 << 5
	metaFlagHostIP6     = 1 << 6
	metaKnownFlags      = metaFlagLeaving | metaFlagLedgerState | metaExpectMask | metaFlagRecord | metaFlagHostIP6
)

// Meta is what a node advertises about itself in its memberlist metadata:
// its name, its host address (the next hop for its block), its identity,
// the pool layout it runs with, where its ledger listens, and its block.
// It carries no claim: who holds which block is the ledger's alone, and
// metadata only has to match the ledger's record for a route to exist.
type Meta struct {
	// Name is the node's name (--node-name): a label for people and the
	// ledger's records. Gossip knows the node by its ID, so two hosts
	// with one name are two members (see View.NameConflicts).
	Name      string
	HostIP    netip.Addr
	Pool      netip.Prefix
	BlockBits int
	// LedgerPort is the TCP port of the node's ledger (raft and its RPCs),
	// at the member's gossip address.
	LedgerPort uint16
	// ID is the node's persistent random ID.
	ID ledger.NodeID
	// ClusterID is the ledger the node belongs to; zero while it belongs
	// to none yet.
	ClusterID ledger.ClusterID
	// Leaving announces a graceful shutdown: when the member disappears
	// next, it left rather than failed (memberlist does not tell the two
	// apart to its delegates).
	Leaving bool
	// LedgerState says the node belongs to a ledger or began founding one,
	// possibly before it knows the cluster ID: a node counting founders
	// for --bootstrap-expect must not found beside it.
	LedgerState bool
	// BootstrapExpect is the node's --bootstrap-expect (0: none, at most
	// MaxBootstrapExpect): founders must all expect the same number.
	BootstrapExpect int
	// FoundsByRecord says the node founds through the ledger's record
	// (Config.LedgerRecord): only such a node reads the record, so only
	// it may be listed there as a founder.
	FoundsByRecord bool
	// Block is the block the ledger assigns the node as the node itself
	// sees it (zero: none), visible to any memberlist tool. It is an
	// advertisement, never a claim: a member advertising another block
	// than the ledger assigns its ID is not routed (see routedBlock).
	Block netip.Prefix
	// HostIP6 is the host's IPv6 address on the same interface (zero:
	// none): the next hop for the node's IPv6 block, when this node has
	// one on that network too.
	HostIP6 netip.Addr
}

// Rules are what a received metadata value must satisfy.
type Rules struct {
	Pool      netip.Prefix
	BlockBits int
	// AllowForeignHostIP accepts a host IP that differs from the member's
	// gossip address (multi-homed hosts gossiping on another network).
	AllowForeignHostIP bool
}

// RejectError explains why a value from the network was rejected. Reason is
// a short, fixed label (used as a metric label); Detail is for humans.
type RejectError struct {
	Reason string
	Detail string
}

func (e *RejectError) Error() string { return e.Reason + ": " + e.Detail }

func reject(reason, format string, args ...any) error {
	return &RejectError{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// rejectReason returns err's reason label, or "other".
func rejectReason(err error) string {
	if re, ok := errors.AsType[*RejectError](err); ok {
		return re.Reason
	}
	return "other"
}

// AppendBinary appends the encoding of m to b: version 3 for an IPv4
// pool, version 4 for an IPv6 one. m must be valid (see DecodeMeta); its
// host IP and block are of its pool's family.
func (m Meta) AppendBinary(b []byte) ([]byte, error) {
	if !m.Pool.IsValid() || m.Pool.Addr().Is4In6() {
		return b, fmt.Errorf("encode metadata: invalid pool %s", m.Pool)
	}
	l := layoutOf(m.Pool)
	is4 := m.Pool.Addr().Is4()
	if !m.HostIP.IsValid() || m.HostIP.Is4() != is4 || m.HostIP.Is4In6() {
		return b, fmt.Errorf("encode metadata: host IP %s and pool %s must be of one family", m.HostIP, m.Pool)
	}
	if m.Block.IsValid() && m.Block.Addr().Is4() != is4 {
		return b, fmt.Errorf("encode metadata: block %s and pool %s must be of one family", m.Block, m.Pool)
	}
	if err := CheckNodeName(m.Name); err != nil {
		return b, fmt.Errorf("encode metadata: %w", err)
	}
	if m.HostIP6.IsValid() {
		if !is4 {
			return b, fmt.Errorf("encode metadata: an IPv6 host address %s beside IPv6 pool %s (the host IP %s is the IPv6 one)", m.HostIP6, m.Pool, m.HostIP)
		}
		if err := checkHostIP6(m.HostIP6); err != nil {
			return b, fmt.Errorf("encode metadata: %w", err)
		}
	}
	var flags byte
	if m.HostIP6.IsValid() {
		flags |= metaFlagHostIP6
	}
	if m.Leaving {
		flags |= metaFlagLeaving
	}
	if m.LedgerState {
		flags |= metaFlagLedgerState
	}
	if m.FoundsByRecord {
		flags |= metaFlagRecord
	}
	if m.BootstrapExpect < 0 || m.BootstrapExpect > MaxBootstrapExpect {
		return b, fmt.Errorf("encode metadata: bootstrap-expect %d out of range 0-%d", m.BootstrapExpect, MaxBootstrapExpect)
	}
	flags |= byte(m.BootstrapExpect) << metaExpectShift
	b = append(b, l.version, flags)
	b = l.appendAddr(b, m.HostIP)
	b = l.appendAddr(b, m.Pool.Addr())
	b = append(b, byte(m.Pool.Bits()), byte(m.BlockBits))
	b = binary.BigEndian.AppendUint16(b, m.LedgerPort)
	b = append(b, m.ID[:]...)
	b = append(b, m.ClusterID[:]...)
	var blockLen byte
	var block netip.Addr
	if m.Block.IsValid() {
		block, blockLen = m.Block.Addr(), byte(m.Block.Bits())
	}
	b = l.appendAddr(b, block)
	b = append(b, blockLen, byte(len(m.Name)))
	b = append(b, m.Name...)
	if m.HostIP6.IsValid() {
		host6 := m.HostIP6.As16()
		b = append(b, host6[:]...)
	}
	return b, nil
}

// DecodeMeta parses a metadata value received from the member at gossip
// address from and checks it against rules. Any error is a *RejectError.
func DecodeMeta(b []byte, rules Rules, from netip.Addr) (Meta, error) {
	var m Meta
	if len(b) == 0 {
		return m, reject("empty", "no metadata")
	}
	var l metaLayout
	switch b[0] {
	case metaVersion:
		l = metaLayout4
	case metaVersion6:
		l = metaLayout6
	default:
		return m, reject("version", "unknown metadata version %d", b[0])
	}
	var extra int
	if len(b) > 1 && b[1]&metaFlagHostIP6 != 0 {
		if l.addrLen != 4 {
			return m, reject("flags", "an IPv6 host address flag in version %d metadata, whose host IP is IPv6", b[0])
		}
		extra = metaHostIP6Len
	}
	fixed := l.fixedLen()
	if len(b) < fixed || len(b) != fixed+int(b[fixed-1])+extra {
		return m, reject("length", "metadata is %d bytes, want %d, the name's length and %d for an IPv6 host address", len(b), fixed, extra)
	}
	flags := b[1]
	if flags&^metaKnownFlags != 0 {
		return m, reject("flags", "unknown flags %#x", flags)
	}
	m.Leaving = flags&metaFlagLeaving != 0
	m.LedgerState = flags&metaFlagLedgerState != 0
	m.FoundsByRecord = flags&metaFlagRecord != 0
	m.BootstrapExpect = int(flags&metaExpectMask) >> metaExpectShift
	if m.BootstrapExpect > MaxBootstrapExpect {
		return m, reject("bootstrap_expect", "bootstrap-expect %d exceeds %d", m.BootstrapExpect, MaxBootstrapExpect)
	}
	m.HostIP = l.addr(b, l.host())
	poolBits, blockBits := int(b[l.poolBits()]), int(b[l.blockBits()])
	if poolBits > l.addrLen*8 {
		return Meta{}, reject("pool", "pool prefix length %d", poolBits)
	}
	m.Pool = netip.PrefixFrom(l.addr(b, l.pool()), poolBits)
	m.BlockBits = blockBits
	m.LedgerPort = binary.BigEndian.Uint16(b[l.port():])
	m.ID = ledger.NodeID(b[l.id():l.cluster()])
	m.ClusterID = ledger.ClusterID(b[l.cluster():l.block()])
	if m.Pool != rules.Pool || m.BlockBits != rules.BlockBits {
		return Meta{}, reject("pool_mismatch", "member runs pool %s with /%d blocks, this node %s with /%d", m.Pool, m.BlockBits, rules.Pool, rules.BlockBits)
	}
	if m.LedgerPort == 0 {
		return Meta{}, reject("ledger_port", "no ledger port")
	}
	if m.ID.IsZero() {
		return Meta{}, reject("node_id", "zero node ID")
	}
	nameEnd := len(b) - extra
	m.Name = string(b[fixed:nameEnd])
	if extra > 0 {
		m.HostIP6 = netip.AddrFrom16([16]byte(b[nameEnd:]))
		if err := checkHostIP6(m.HostIP6); err != nil {
			return Meta{}, err
		}
	}
	if err := CheckNodeName(m.Name); err != nil {
		return Meta{}, reject("name", "%v", err)
	}
	if block, bits := l.addr(b, l.block()), int(b[l.blockLen()]); !block.IsUnspecified() || bits != 0 {
		m.Block = netip.PrefixFrom(block, bits) // invalid beyond the family's length
		if err := rules.checkBlock(m.Block); err != nil {
			return Meta{}, err
		}
	}
	if err := rules.checkHostIP(m.HostIP, from); err != nil {
		return Meta{}, err
	}
	return m, nil
}

// checkBlock reports whether p is a block of the pool: inside it, of the
// configured size, and a network address.
func (r Rules) checkBlock(p netip.Prefix) error {
	switch {
	case !p.IsValid() || p.Addr().Is4() != r.Pool.Addr().Is4():
		return reject("block", "invalid block %s", p)
	case p.Bits() != r.BlockBits:
		return reject("block_size", "block %s is not a /%d", p, r.BlockBits)
	case !r.Pool.Contains(p.Addr()):
		return reject("block_outside_pool", "block %s is outside pool %s", p, r.Pool)
	case p.Masked() != p:
		return reject("block_unmasked", "block %s is not a network address", p)
	}
	return nil
}

// checkHostIP6 reports whether ip can be an IPv6 next hop: a global unicast
// IPv6 address (not link-local, not an IPv4-mapped one). Unlike the IPv4
// host IP it is not compared with the gossip address, which is IPv4.
func checkHostIP6(ip netip.Addr) error {
	if !ip.Is6() || ip.Is4In6() || !ip.IsGlobalUnicast() {
		return reject("host_ip6", "host IPv6 %s is not a global unicast IPv6 address", ip)
	}
	return nil
}

// checkHostIP reports whether ip can be a next hop: a unicast address of
// the pool's family (IPv4, or IPv6 in an IPv6-only cluster), equal to the
// member's gossip address unless foreign host IPs are allowed. An invalid
// from skips the comparison.
func (r Rules) checkHostIP(ip, from netip.Addr) error {
	if r.Pool.Addr().Is6() {
		if err := checkHostIP6(ip); err != nil {
			return reject("host_ip", "host IP %s is not a global unicast IPv6 address, as the IPv6 pool %s needs", ip, r.Pool)
		}
	} else if !ip.Is4() || !ip.IsGlobalUnicast() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return reject("host_ip", "host IP %s is not a unicast IPv4 address", ip)
	}
	if !r.AllowForeignHostIP && from.IsValid() && ip != from.Unmap() {
		return reject("foreign_host_ip", "host IP %s differs from gossip address %s", ip, from)
	}
	return nil
}
