package mesh

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"
)

// Record is one node's entry in the replicated claim table. The table keeps
// records of dead and departed nodes as tombstones, so their blocks are not
// handed out again before ReclaimAfter, even once memberlist forgot them.
type Record struct {
	Node   string
	Block  netip.Prefix
	HostIP netip.Addr
	// Since is when the claim succeeded (millisecond precision).
	Since time.Time
	// Gen is bumped by whoever changes the record: a new claim, a restart,
	// a release.
	Gen uint64
	// Released means the block is free again: an operator released it, or
	// another node reclaimed it after ReclaimAfter.
	Released bool
	// DeadAt is when the owner was last seen dead or leaving; zero while it
	// is alive.
	DeadAt time.Time
}

// unixMillis is t at the precision records and metadata travel with; 0 for
// the zero time.
func unixMillis(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// newer reports whether r should replace old when both describe one node.
// It is a total order on records, so merging tables is a join: the result
// does not depend on the order or repetition of merges.
func (r Record) newer(old Record) bool {
	if r.Gen != old.Gen {
		return r.Gen > old.Gen
	}
	if r.Released != old.Released {
		return r.Released
	}
	if d, o := unixMillis(r.DeadAt), unixMillis(old.DeadAt); d != o {
		// A recorded death beats none. Of two records of the same death,
		// the earlier observation wins: it is when the owner was first
		// known dead, and ReclaimAfter counts from there.
		if d == 0 || o == 0 {
			return o == 0
		}
		return d < o
	}
	if s, o := r.Since.UnixMilli(), old.Since.UnixMilli(); s != o {
		return s > o
	}
	if c := r.Block.Addr().Compare(old.Block.Addr()); c != 0 {
		return c > 0
	}
	return r.HostIP.Compare(old.HostIP) > 0
}

// Wire format of gossip messages (broadcasts, push/pull state and votes):
// a version byte, a type byte, then the body. Integers are big-endian.
const wireVersion = 1

type msgType byte

const (
	msgRecords      msgType = 1 // claim records: broadcasts, push/pull, commits
	msgVoteRequest  msgType = 2
	msgVoteResponse msgType = 3
	msgVoteAbort    msgType = 4
)

// Bounds on decoded messages. A value from the network beyond them is
// rejected before anything is allocated for it.
const (
	maxNameLen    = 253 // a DNS name; node names are host names
	maxRecords    = 16384
	maxElectorate = 16384
	// minRecordLen is the encoded size of a record with a 1-byte name.
	minRecordLen = 1 + 1 + 1 + 4 + 4 + 1 + 8 + 8 + 8
)

const recordFlagReleased = 1 << 0

// voteRequest asks a voter to promise Block to Claimant.
type voteRequest struct {
	ID       uint64
	Claimant string
	// From is the claimant's gossip address, for the reply: the voter may
	// not know the claimant yet.
	From       netip.AddrPort
	Block      netip.Prefix
	Electorate []string // sorted member names the claimant counts
}

// voteResponse answers a voteRequest.
type voteResponse struct {
	ID      uint64
	Voter   string
	Granted bool
	// Missing lists members the voter counts but the claimant did not; the
	// claimant retries with them added.
	Missing []peerAddr
}

// peerAddr names a member and its gossip address (zero if unknown: a
// tombstone owner).
type peerAddr struct {
	Name string
	Addr netip.AddrPort
}

// voteAbort withdraws request ID: the voter drops its promise.
type voteAbort struct {
	ID       uint64
	Claimant string
	Block    netip.Prefix
}

type encoder struct{ b []byte }

func newEncoder(t msgType) *encoder { return &encoder{b: []byte{wireVersion, byte(t)}} }

func (e *encoder) u8(v byte)      { e.b = append(e.b, v) }
func (e *encoder) u16(v int)      { e.b = binary.BigEndian.AppendUint16(e.b, uint16(v)) }
func (e *encoder) u64(v uint64)   { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *encoder) ms(t time.Time) { e.u64(uint64(unixMillis(t))) }
func (e *encoder) name(s string)  { e.u8(byte(len(s))); e.b = append(e.b, s...) }
func (e *encoder) addr(a netip.Addr) {
	v := a.As4()
	e.b = append(e.b, v[:]...)
}
func (e *encoder) prefix(p netip.Prefix) { e.addr(p.Addr()); e.u8(byte(p.Bits())) }
func (e *encoder) addrPort(a netip.AddrPort) {
	if !a.IsValid() {
		e.b = append(e.b, 0, 0, 0, 0, 0, 0)
		return
	}
	e.addr(a.Addr())
	e.b = binary.BigEndian.AppendUint16(e.b, a.Port())
}

func (e *encoder) record(r Record) {
	e.name(r.Node)
	var flags byte
	if r.Released {
		flags |= recordFlagReleased
	}
	e.u8(flags)
	e.addr(r.HostIP)
	e.prefix(r.Block)
	e.ms(r.Since)
	e.u64(r.Gen)
	e.ms(r.DeadAt)
}

func encodeRecords(recs []Record) []byte {
	e := newEncoder(msgRecords)
	e.u16(len(recs))
	for _, r := range recs {
		e.record(r)
	}
	return e.b
}

func (m voteRequest) encode() []byte {
	e := newEncoder(msgVoteRequest)
	e.u64(m.ID)
	e.name(m.Claimant)
	e.addrPort(m.From)
	e.prefix(m.Block)
	e.u16(len(m.Electorate))
	for _, n := range m.Electorate {
		e.name(n)
	}
	return e.b
}

func (m voteResponse) encode() []byte {
	e := newEncoder(msgVoteResponse)
	e.u64(m.ID)
	e.name(m.Voter)
	if m.Granted {
		e.u8(1)
	} else {
		e.u8(0)
	}
	e.u16(len(m.Missing))
	for _, p := range m.Missing {
		e.name(p.Name)
		e.addrPort(p.Addr)
	}
	return e.b
}

func (m voteAbort) encode() []byte {
	e := newEncoder(msgVoteAbort)
	e.u64(m.ID)
	e.name(m.Claimant)
	e.prefix(m.Block)
	return e.b
}

// decoder reads a message; the first error sticks and later reads return
// zero values, so callers check once at the end.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(reason, format string, args ...any) {
	if d.err == nil {
		d.err = reject(reason, format, args...)
	}
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if len(d.b) < n {
		d.fail("truncated", "message ends %d bytes early", n-len(d.b))
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8() byte {
	if v := d.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (d *decoder) u16() int {
	if v := d.take(2); v != nil {
		return int(binary.BigEndian.Uint16(v))
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if v := d.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (d *decoder) ms() time.Time {
	v := int64(d.u64())
	if v < 0 {
		d.fail("time", "negative time %d", v)
	}
	if v <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(v)
}

func (d *decoder) name() string {
	n := int(d.u8())
	if d.err == nil && n == 0 {
		d.fail("name", "empty node name")
	}
	v := d.take(n)
	if v == nil {
		return ""
	}
	s := string(v)
	if !validName(s) {
		d.fail("name", "node name %q has a non-printable character", s)
		return ""
	}
	return s
}

func (d *decoder) addr() netip.Addr {
	if v := d.take(4); v != nil {
		return netip.AddrFrom4([4]byte(v))
	}
	return netip.Addr{}
}

func (d *decoder) prefix() netip.Prefix {
	a := d.addr()
	bits := int(d.u8())
	if d.err != nil {
		return netip.Prefix{}
	}
	if bits > 32 {
		d.fail("block", "prefix length %d", bits)
		return netip.Prefix{}
	}
	return netip.PrefixFrom(a, bits)
}

func (d *decoder) addrPort() netip.AddrPort {
	a := d.addr()
	v := d.take(2)
	if v == nil {
		return netip.AddrPort{}
	}
	port := binary.BigEndian.Uint16(v)
	if a.IsUnspecified() {
		if port != 0 {
			d.fail("addr", "port %d without an address", port)
		}
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a, port)
}

// count reads a u16 count and checks that count items of at least minLen
// bytes can fit in what is left, so a hostile count allocates nothing.
func (d *decoder) count(limit, minLen int) int {
	n := d.u16()
	if d.err != nil {
		return 0
	}
	if n > limit || n*minLen > len(d.b) {
		d.fail("count", "count %d exceeds the message (%d bytes left, limit %d)", n, len(d.b), limit)
		return 0
	}
	return n
}

func (d *decoder) record() Record {
	var r Record
	r.Node = d.name()
	flags := d.u8()
	if flags&^recordFlagReleased != 0 {
		d.fail("flags", "unknown record flags %#x", flags)
	}
	r.Released = flags&recordFlagReleased != 0
	r.HostIP = d.addr()
	r.Block = d.prefix()
	r.Since = d.ms()
	r.Gen = d.u64()
	r.DeadAt = d.ms()
	return r
}

// message is one decoded gossip message: exactly one field is set.
type message struct {
	Records  []Record
	Request  *voteRequest
	Response *voteResponse
	Abort    *voteAbort
}

// decodeMessage parses a message from the network. It checks structure and
// bounds only; records are checked against Rules by checkRecord. Any error
// is a *RejectError.
func decodeMessage(b []byte) (message, error) {
	var msg message
	if len(b) < 2 {
		return msg, reject("truncated", "message of %d bytes", len(b))
	}
	if b[0] != wireVersion {
		return msg, reject("version", "unknown message version %d", b[0])
	}
	d := &decoder{b: b[2:]}
	switch msgType(b[1]) {
	case msgRecords:
		n := d.count(maxRecords, minRecordLen)
		msg.Records = make([]Record, 0, n)
		for range n {
			msg.Records = append(msg.Records, d.record())
		}
	case msgVoteRequest:
		r := &voteRequest{ID: d.u64(), Claimant: d.name(), From: d.addrPort(), Block: d.prefix()}
		n := d.count(maxElectorate, 2)
		r.Electorate = make([]string, 0, n)
		for range n {
			r.Electorate = append(r.Electorate, d.name())
		}
		msg.Request = r
	case msgVoteResponse:
		r := &voteResponse{ID: d.u64(), Voter: d.name()}
		switch g := d.u8(); g {
		case 0, 1:
			r.Granted = g == 1
		default:
			d.fail("vote", "grant byte %d", g)
		}
		n := d.count(maxElectorate, 2+6)
		for range n {
			r.Missing = append(r.Missing, peerAddr{Name: d.name(), Addr: d.addrPort()})
		}
		msg.Response = r
	case msgVoteAbort:
		msg.Abort = &voteAbort{ID: d.u64(), Claimant: d.name(), Block: d.prefix()}
	default:
		return msg, reject("type", "unknown message type %d", b[1])
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing", "%d bytes after the message", len(d.b))
	}
	if d.err != nil {
		return message{}, d.err
	}
	return msg, nil
}

// checkRecord validates a record from the network: a block of the pool and
// a usable host IP. from is the owner's gossip address when known.
func (r Rules) checkRecord(rec Record, from netip.Addr) error {
	if len(rec.Node) > maxNameLen {
		return reject("name", "node name of %d bytes", len(rec.Node))
	}
	if err := r.checkBlock(rec.Block); err != nil {
		return err
	}
	if rec.Since.IsZero() {
		return reject("since", "record of %s has no claim time", rec.Node)
	}
	if err := r.checkHostIP(rec.HostIP, from); err != nil {
		return fmt.Errorf("record of %s: %w", rec.Node, err)
	}
	return nil
}
