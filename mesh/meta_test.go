package mesh

import (
	"bytes"
	"encoding/hex"
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
		{"future version", patch(0, 5), testRules, from, "version"},
		{"version 4 byte on a version 3 value", patch(0, metaVersion6), testRules, from, "length"},
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

var testRules6 = Rules{Pool: netip.MustParsePrefix("fd00:10:244::/48"), BlockBits: 64}

// testMeta6 is testMeta in an IPv6-only cluster: IPv6 pool, block and
// host IP.
func testMeta6() Meta {
	m := testMeta()
	m.Pool, m.BlockBits = testRules6.Pool, testRules6.BlockBits
	m.Block = netip.MustParsePrefix("fd00:10:244:8::/64")
	m.HostIP = netip.MustParseAddr("fd00:172:16:254::113")
	return m
}

// TestMetaVersionFollowsPoolFamily: an IPv4 pool's metadata is version 3,
// byte for byte what agents that predate IPv6-only clusters write and read;
// an IPv6 pool's is version 4 with 16-byte addresses, which those agents
// reject as an unknown version rather than misread.
func TestMetaVersionFollowsPoolFamily(t *testing.T) {
	v3 := mustEncode(t, testMeta())
	wantV3 := "0300" + "ac10fe71" + "0af40000" + "1017" + "1f1b" +
		"ab000000000000000000000000000001" + "4200000000000007" + "0af40800" + "17" + "10" +
		"6e6f64652d3131332e6578616d706c65"
	if got := hex.EncodeToString(v3); got != wantV3 {
		t.Fatalf("version 3 encoding changed:\n got %s\nwant %s", got, wantV3)
	}
	m6 := testMeta6()
	v4 := mustEncode(t, m6)
	if v4[0] != metaVersion6 || len(v4) != metaFixedLen6+len(m6.Name) {
		t.Fatalf("IPv6 pool encodes version %d in %d bytes, want %d in %d", v4[0], len(v4), metaVersion6, metaFixedLen6+len(m6.Name))
	}
	for _, tc := range []struct {
		name   string
		b      []byte
		rules  Rules
		from   netip.Addr
		want   Meta
		reason string
	}{
		{"IPv4 agent reads version 3", v3, testRules, testMeta().HostIP, testMeta(), ""},
		{"IPv6-only agent reads version 4", v4, testRules6, m6.HostIP, m6, ""},
		{"gossip address IPv4-mapped", v4, testRules6, m6.HostIP, m6, ""},
		{"IPv4 agent rejects version 4", v4, testRules, m6.HostIP, Meta{}, "pool_mismatch"},
		{"IPv6-only agent rejects version 3", v3, testRules6, testMeta().HostIP, Meta{}, "pool_mismatch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeMeta(tc.b, tc.rules, tc.from)
			if tc.reason != "" {
				var re *RejectError
				if !errors.As(err, &re) || re.Reason != tc.reason {
					t.Fatalf("got %+v, %v; want reason %q", got, err, tc.reason)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestMetaIPv6RoundTrip(t *testing.T) {
	for name, m := range map[string]Meta{
		"in a ledger":  testMeta6(),
		"no block":     func() Meta { m := testMeta6(); m.Block = netip.Prefix{}; return m }(),
		"longest name": func() Meta { m := testMeta6(); m.Name = strings.Repeat("n", maxNameLen); return m }(),
		"every flag": func() Meta {
			m := testMeta6()
			m.Leaving, m.LedgerState, m.BootstrapExpect, m.FoundsByRecord = true, true, MaxBootstrapExpect, true
			return m
		}(),
		"/120 blocks": func() Meta {
			m := testMeta6()
			m.Pool, m.BlockBits, m.Block = netip.MustParsePrefix("fd00:10:244::/104"), 120, netip.MustParsePrefix("fd00:10:244::800/120")
			return m
		}(),
	} {
		t.Run(name, func(t *testing.T) {
			b := mustEncode(t, m)
			if len(b) > memberlist.MetaMaxSize {
				t.Fatalf("%d bytes, over memberlist's %d", len(b), memberlist.MetaMaxSize)
			}
			got, err := DecodeMeta(b, Rules{Pool: m.Pool, BlockBits: m.BlockBits}, m.HostIP)
			if err != nil {
				t.Fatal(err)
			}
			if got != m {
				t.Fatalf("round trip: got %+v, want %+v", got, m)
			}
		})
	}
}

func TestMetaIPv6Rejects(t *testing.T) {
	good := mustEncode(t, testMeta6())
	from := testMeta6().HostIP
	l := metaLayout6
	patch := func(off int, v ...byte) []byte {
		b := bytes.Clone(good)
		copy(b[off:], v)
		return b
	}
	withHost := func(a netip.Addr) []byte { v := a.As16(); return patch(l.host(), v[:]...) }
	withBlock := func(p netip.Prefix) []byte {
		v := p.Addr().As16()
		return patch(l.block(), append(v[:], byte(p.Bits()))...)
	}
	for _, tc := range []struct {
		name   string
		b      []byte
		from   netip.Addr
		reason string
	}{
		{"IPv6 host flag in version 4", withHost6(good, netip.MustParseAddr("2001:db8::1")), from, "flags"},
		{"cut short", good[:len(good)-1], from, "length"},
		{"version 3 length", good[:metaFixedLen+len(testMeta6().Name)], from, "length"},
		{"link-local host", withHost(netip.MustParseAddr("fe80::1")), netip.MustParseAddr("fe80::1"), "host_ip"},
		{"IPv4-mapped host", withHost(netip.MustParseAddr("::ffff:172.16.254.113")), netip.MustParseAddr("172.16.254.113"), "host_ip"},
		{"loopback host", withHost(netip.IPv6Loopback()), netip.IPv6Loopback(), "host_ip"},
		{"foreign host", good, netip.MustParseAddr("fd00:172:16:254::1"), "foreign_host_ip"},
		{"block outside the pool", withBlock(netip.MustParsePrefix("fd00:10:245::/64")), from, "block_outside_pool"},
		{"block of another size", withBlock(netip.MustParsePrefix("fd00:10:244:8::/80")), from, "block_size"},
		{"block not a network address", withBlock(netip.PrefixFrom(netip.MustParseAddr("fd00:10:244:8::1"), 64)), from, "block_unmasked"},
		{"block length beyond /128", patch(l.blockLen(), 129), from, "block"},
		{"pool bits > 128", patch(l.poolBits(), 129), from, "pool"},
		{"no ledger port", patch(l.port(), 0, 0), from, "ledger_port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeMeta(tc.b, testRules6, tc.from)
			var re *RejectError
			if !errors.As(err, &re) || re.Reason != tc.reason {
				t.Fatalf("got %v, want reason %q", err, tc.reason)
			}
		})
	}
}

func TestMetaEncodeRefusesMixedFamilies(t *testing.T) {
	for name, m := range map[string]Meta{
		"IPv6 host in an IPv4 pool":  func() Meta { m := testMeta(); m.HostIP = testMeta6().HostIP; return m }(),
		"IPv4 host in an IPv6 pool":  func() Meta { m := testMeta6(); m.HostIP = testMeta().HostIP; return m }(),
		"IPv4 block in an IPv6 pool": func() Meta { m := testMeta6(); m.Block = testMeta().Block; return m }(),
		"IPv6 host address beside an IPv6 pool": func() Meta {
			m := testMeta6()
			m.HostIP6 = netip.MustParseAddr("2001:db8::1")
			return m
		}(),
	} {
		if b, err := m.AppendBinary(nil); err == nil {
			t.Errorf("%s: encoded as %x", name, b)
		}
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
	f.Add(mustEncode(f, testMeta6()))
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

// FuzzDecodeMeta6 is FuzzDecodeMeta for an IPv6-only cluster's rules and
// version 4 values: never a panic, and what is accepted is valid and
// re-encodes to the same bytes.
func FuzzDecodeMeta6(f *testing.F) {
	f.Add(mustEncode(f, testMeta6()))
	noBlock := testMeta6()
	noBlock.Block, noBlock.Leaving = netip.Prefix{}, true
	f.Add(mustEncode(f, noBlock))
	f.Add(mustEncode(f, testMeta()))
	f.Add(bytes.Repeat([]byte{0xff}, metaFixedLen6+1))
	from := testMeta6().HostIP
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMeta(b, testRules6, from)
		if err != nil {
			var re *RejectError
			if !errors.As(err, &re) || re.Reason == "" {
				t.Fatalf("error without a reason: %v", err)
			}
			return
		}
		if m.Pool != testRules6.Pool || m.BlockBits != testRules6.BlockBits || m.HostIP6.IsValid() ||
			testRules6.checkHostIP(m.HostIP, from) != nil || (m.Block.IsValid() && testRules6.checkBlock(m.Block) != nil) {
			t.Fatalf("accepted invalid metadata: %+v", m)
		}
		again, err := m.AppendBinary(nil)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("re-encoding %x, %v; want %x", again, err, b)
		}
	})
}
