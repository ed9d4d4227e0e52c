package mesh

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/hashicorp/memberlist"

	"github.com/grapevine-net/grapevine/mesh/ledger"
)

var testRules = Rules{Pool: netip.MustParsePrefix("10.244.0.0/16"), BlockBits: 23}

func testMeta() Meta {
	return Meta{
		Name:       "node-113.example",
		Block:      netip.MustParsePrefix("10.244.8.0/23"),
		HostIP:     netip.MustParseAddr("172.16.254.113"),
		Pool:       testRules.Pool,
		BlockBits:  23,
		LedgerPort: 7963,
		ID:         ledger.NodeID{0: 0xab, 15: 0x01},
		ClusterID:  ledger.ClusterID{0: 0x42, 7: 0x07},
	}
}

func mustEncode(t testing.TB, m Meta) []byte {
	t.Helper()
	b, err := m.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMetaRoundTrip(t *testing.T) {
	for name, m := range map[string]Meta{
		"in a ledger":   testMeta(),
		"in no ledger":  func() Meta { m := testMeta(); m.ClusterID = ledger.ClusterID{}; return m }(),
		"leaving":       func() Meta { m := testMeta(); m.Leaving = true; return m }(),
		"no block":      func() Meta { m := testMeta(); m.Block = netip.Prefix{}; return m }(),
		"one-byte name": func() Meta { m := testMeta(); m.Name = "u"; return m }(),
		"longest name":  func() Meta { m := testMeta(); m.Name = strings.Repeat("n", maxNameLen); return m }(),
		"founding": func() Meta {
			m := testMeta()
			m.ClusterID, m.LedgerState, m.BootstrapExpect = ledger.ClusterID{}, true, MaxBootstrapExpect
			return m
		}(),
		"founds by the record": func() Meta {
			m := testMeta()
			m.ClusterID, m.FoundsByRecord = ledger.ClusterID{}, true
			return m
		}(),
		"with an IPv6 host address": func() Meta {
			m := testMeta()
			m.HostIP6 = netip.MustParseAddr("fd00:172:16:254::113")
			return m
		}(),
		"longest name and an IPv6 host address": func() Meta {
			m := testMeta()
			m.Name, m.HostIP6 = strings.Repeat("n", maxNameLen), netip.MustParseAddr("2001:db8::1")
			return m
		}(),
		"every flag": func() Meta {
			m := testMeta()
			m.Leaving, m.LedgerState, m.BootstrapExpect, m.FoundsByRecord = true, true, MaxBootstrapExpect, true
			return m
		}(),
	} {
		t.Run(name, func(t *testing.T) {
			b := mustEncode(t, m)
			want := metaFixedLen + len(m.Name)
			if m.HostIP6.IsValid() {
				want += metaHostIP6Len
			}
			if len(b) != want {
				t.Fatalf("encoded %d bytes, want %d", len(b), want)
			}
			got, err := DecodeMeta(b, testRules, m.HostIP)
			if err != nil {
				t.Fatal(err)
			}
			if got != m {
				t.Fatalf("round trip: got %+v, want %+v", got, m)
			}
		})
	}
}

func TestDecodeMetaRejects(t *testing.T) {
	good := mustEncode(t, testMeta())
	from := testMeta().HostIP
	edit := func(f func(m *Meta)) []byte {
		m := testMeta()
		f(&m)
		b, err := m.AppendBinary(nil)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	patch := func(off int, v ...byte) []byte {
		b := bytes.Clone(good)
		copy(b[off:], v)
		return b
	}
	// withName encodes good with any name, bypassing AppendBinary's check
	// (the length byte wraps for names over 255 bytes: rejected either way).
	withName := func(name string) []byte {
		b := append(bytes.Clone(good[:metaFixedLen-1]), byte(len(name)))
		return append(b, name...)
	}
	for _, tc := range []struct {
		name   string
		b      []byte
		rules  Rules
		from   netip.Addr
		reason string
	}{
		{"empty", nil, testRules, from, "empty"},
		{"claim-carrying version 1", patch(0, 1), testRules, from, "version"},
		{"name-less version 2", patch(0, 2), testRules, from, "version"},
		{"future version", patch(0, 4), testRules, from, "version"},
		{"shorter than the fixed part", good[:metaFixedLen-1], testRules, from, "length"},
		{"name cut short", good[:len(good)-1], testRules, from, "length"},
		{"long", append(bytes.Clone(good), 0), testRules, from, "length"},
		{"empty name", good[:metaFixedLen:metaFixedLen], testRules, from, "length"},
		{"zero-length name", append(bytes.Clone(good[:metaFixedLen-1]), 0), testRules, from, "name"},
		{"name with a space", patch(metaFixedLen, ' '), testRules, from, "name"},
		{"name with a control character", patch(metaFixedLen, 0x1b), testRules, from, "name"},
		{"name with a non-ASCII byte", patch(metaFixedLen, 0xc3), testRules, from, "name"},
		{"name too long", withName(strings.Repeat("n", maxNameLen+1)), testRules, from, "name"},
		{"block outside the pool", edit(func(m *Meta) { m.Block = netip.MustParsePrefix("10.96.0.0/23") }), testRules, from, "block_outside_pool"},
		{"block of another size", edit(func(m *Meta) { m.Block = netip.MustParsePrefix("10.244.8.0/24") }), testRules, from, "block_size"},
		{"block not a network address", edit(func(m *Meta) { m.Block = netip.MustParsePrefix("10.244.9.0/23") }), testRules, from, "block_unmasked"},
		{"block address without a length", patch(38, 10, 244, 8, 0, 0), testRules, from, "block_size"},
		{"block length beyond /32", patch(42, 33), testRules, from, "block"},
		{"unknown flag", patch(1, 0x81), testRules, from, "flags"},
		{"unknown flag beside the record's", patch(1, metaFlagRecord|0x80), testRules, from, "flags"},
		{"IPv6 host flag without the address", patch(1, metaFlagHostIP6), testRules, from, "length"},
		{"link-local IPv6 host", withHost6(good, netip.MustParseAddr("fe80::1")), testRules, from, "host_ip6"},
		{"IPv4-mapped IPv6 host", withHost6(good, netip.MustParseAddr("::ffff:172.16.254.113")), testRules, from, "host_ip6"},
		{"multicast IPv6 host", withHost6(good, netip.MustParseAddr("ff02::1")), testRules, from, "host_ip6"},
		{"bootstrap-expect 7", patch(1, 7<<metaExpectShift), testRules, from, "bootstrap_expect"},
		{"no ledger port", patch(12, 0, 0), testRules, from, "ledger_port"},
		{"zero node ID", edit(func(m *Meta) { m.ID = ledger.NodeID{} }), testRules, from, "node_id"},
		{"other pool", edit(func(m *Meta) { m.Pool = netip.MustParsePrefix("10.96.0.0/16") }), testRules, from, "pool_mismatch"},
		{"other block size", edit(func(m *Meta) { m.BlockBits = 24 }), testRules, from, "pool_mismatch"},
		{"pool bits > 32", patch(10, 40), testRules, from, "pool"},
		{"loopback host", edit(func(m *Meta) { m.HostIP = netip.MustParseAddr("127.0.0.1") }), testRules, netip.MustParseAddr("127.0.0.1"), "host_ip"},
		{"multicast host", edit(func(m *Meta) { m.HostIP = netip.MustParseAddr("224.0.0.1") }), testRules, netip.MustParseAddr("224.0.0.1"), "host_ip"},
		{"broadcast host", edit(func(m *Meta) { m.HostIP = netip.MustParseAddr("255.255.255.255") }), testRules, netip.MustParseAddr("255.255.255.255"), "host_ip"},
		{"unspecified host", edit(func(m *Meta) { m.HostIP = netip.IPv4Unspecified() }), testRules, netip.IPv4Unspecified(), "host_ip"},
		{"foreign host", good, testRules, netip.MustParseAddr("172.16.254.1"), "foreign_host_ip"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeMeta(tc.b, tc.rules, tc.from)
			if err == nil {
				t.Fatal("accepted")
			}
			var re *RejectError
			if !errors.As(err, &re) || re.Reason != tc.reason {
				t.Fatalf("got %v, want reason %q", err, tc.reason)
			}
		})
	}
	allow := testRules
	allow.AllowForeignHostIP = true
	if _, err := DecodeMeta(good, allow, netip.MustParseAddr("172.16.254.1")); err != nil {
		t.Fatalf("foreign host IP with AllowForeignHostIP: %v", err)
	}
}

// withHost6 appends an IPv6 host address to an encoded value and sets its
// flag, bypassing AppendBinary's check of the address.
func withHost6(b []byte, host6 netip.Addr) []byte {
	b = bytes.Clone(b)
	b[1] |= metaFlagHostIP6
	a := host6.As16()
	return append(b, a[:]...)
}

func TestMetaWellUnderMemberlistLimit(t *testing.T) {
	// memberlist panics above 512 bytes; the longest name keeps far below.
	m := testMeta()
	m.Name, m.HostIP6 = strings.Repeat("n", maxNameLen), netip.MustParseAddr("2001:db8::1")
	if n := len(mustEncode(t, m)); n > 320 || n > memberlist.MetaMaxSize {
		t.Fatalf("metadata is %d bytes", n)
	}
}

func TestMetaEncodeRefusesBadName(t *testing.T) {
	for _, name := range []string{"", "a b", strings.Repeat("n", maxNameLen+1)} {
		m := testMeta()
		m.Name = name
		if b, err := m.AppendBinary(nil); err == nil {
			t.Errorf("name %q encoded as %x", name, b)
		}
	}
}

func BenchmarkMetaCodec(b *testing.B) {
	m := testMeta()
	buf := make([]byte, 0, metaFixedLen+maxNameLen)
	for b.Loop() {
		enc, err := m.AppendBinary(buf[:0])
		if err != nil {
			b.Fatal(err)
		}
		if _, err := DecodeMeta(enc, testRules, m.HostIP); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzDecodeMeta feeds arbitrary metadata to the decoder: it must never
// panic, and anything it accepts must be valid and re-encode to the same
// bytes.
func FuzzDecodeMeta(f *testing.F) {
	f.Add(mustEncode(f, testMeta()))
	noLedger := testMeta()
	noLedger.ClusterID, noLedger.Leaving = ledger.ClusterID{}, true
	f.Add(mustEncode(f, noLedger))
	dual := testMeta()
	dual.HostIP6 = netip.MustParseAddr("fd00:172:16:254::113")
	f.Add(mustEncode(f, dual))
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Add(bytes.Repeat([]byte{0xff}, metaFixedLen+1))
	from := testMeta().HostIP
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMeta(b, testRules, from)
		if err != nil {
			var re *RejectError
			if !errors.As(err, &re) || re.Reason == "" {
				t.Fatalf("error without a reason: %v", err)
			}
			return
		}
		if CheckNodeName(m.Name) != nil || (m.Block.IsValid() && testRules.checkBlock(m.Block) != nil) {
			t.Fatalf("accepted an invalid name or block: %+v", m)
		}
		if m.ID.IsZero() || m.LedgerPort == 0 || m.Pool != testRules.Pool || m.BlockBits != testRules.BlockBits {
			t.Fatalf("accepted metadata without identity or with another layout: %+v", m)
		}
		if err := testRules.checkHostIP(m.HostIP, from); err != nil {
			t.Fatalf("accepted invalid host IP: %v", err)
		}
		if m.HostIP6.IsValid() && checkHostIP6(m.HostIP6) != nil {
			t.Fatalf("accepted invalid IPv6 host address %s", m.HostIP6)
		}
		again, err := m.AppendBinary(nil)
		if err != nil {
			t.Fatalf("accepted value does not encode: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", again, b)
		}
	})
}

// TestMetaRecordFlag: the record flag is bit 5 of the flags byte, and a
// value with it set decodes with FoundsByRecord and nothing else.
func TestMetaRecordFlag(t *testing.T) {
	m := testMeta()
	m.FoundsByRecord = true
	b := mustEncode(t, m)
	if b[1] != 1<<5 {
		t.Fatalf("flags byte %#x, want %#x", b[1], 1<<5)
	}
	got, err := DecodeMeta(b, testRules, m.HostIP)
	if err != nil {
		t.Fatal(err)
	}
	if !got.FoundsByRecord || got.Leaving || got.LedgerState || got.BootstrapExpect != 0 {
		t.Fatalf("decoded %+v, want only FoundsByRecord", got)
	}
}
