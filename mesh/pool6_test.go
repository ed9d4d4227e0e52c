package mesh

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/grapevine-net/grapevine/node/nodestate"
)

func TestBlock6(t *testing.T) {
	for _, tc := range []struct {
		pool, block, pool6 string
		bits6              int
		want, err          string
	}{
		// Block i of the IPv4 pool gets block i of the IPv6 pool.
		{"10.244.0.0/16", "10.244.0.0/23", "fd00:10:244::/48", 64, "fd00:10:244::/64", ""},
		{"10.244.0.0/16", "10.244.2.0/23", "fd00:10:244::/48", 64, "fd00:10:244:1::/64", ""},
		{"10.244.0.0/16", "10.244.254.0/23", "fd00:10:244::/48", 64, "fd00:10:244:7f::/64", ""},
		{"10.244.0.0/16", "10.244.255.0/24", "fd00:10:244::/48", 64, "fd00:10:244:ff::/64", ""},
		// Small pools: /120 blocks.
		{"10.244.0.0/16", "10.244.3.0/24", "fd00:10:244::/112", 120, "fd00:10:244::300/120", ""},
		{"192.168.0.0/24", "192.168.0.192/26", "fd00::/118", 120, "fd00::300/120", ""},
		// Blocks past 64 bits of index shift stay exact.
		{"10.0.0.0/8", "10.255.255.0/24", "fd00::/32", 56, "fd00:0:ff:ff00::/56", ""},
		{"10.244.0.0/16", "10.245.0.0/24", "fd00::/48", 64, "", "not a block of pool"},
		{"10.244.0.0/16", "10.244.1.0/23", "fd00::/48", 64, "", "not a block of pool"},
		{"10.244.0.0/16", "10.244.4.0/24", "fd00::/118", 120, "", "has only 2^2 blocks"},
		{"10.244.0.0/16", "10.244.0.0/24", "10.0.0.0/8", 24, "", "cannot be cut"},
	} {
		got, err := Block6(netip.MustParsePrefix(tc.pool), netip.MustParsePrefix(tc.block), netip.MustParsePrefix(tc.pool6), tc.bits6)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("Block6(%s, %s, %s, /%d) = %s, %v; want an error saying %q", tc.pool, tc.block, tc.pool6, tc.bits6, got, err, tc.err)
		case tc.err == "" && (err != nil || got.String() != tc.want):
			t.Errorf("Block6(%s, %s, %s, /%d) = %s, %v; want %s", tc.pool, tc.block, tc.pool6, tc.bits6, got, err, tc.want)
		}
	}
}

// Every block of a pool maps to a distinct block of the IPv6 pool when
// CheckPool6 accepts the pair.
func TestBlock6IsOneToOne(t *testing.T) {
	pool, pool6 := netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/112")
	if err := CheckPool6(pool, 24, pool6, 120); err != nil {
		t.Fatal(err)
	}
	seen := make(map[netip.Prefix]netip.Prefix)
	for i := range 256 {
		block := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24)
		b6, err := Block6(pool, block, pool6, 120)
		if err != nil {
			t.Fatalf("Block6(%s): %v", block, err)
		}
		if !pool6.Contains(b6.Addr()) || b6.Masked() != b6 {
			t.Errorf("Block6(%s) = %s, not a block of %s", block, b6, pool6)
		}
		if other, dup := seen[b6]; dup {
			t.Errorf("%s and %s both map to %s", other, block, b6)
		}
		seen[b6] = block
	}
}

// The agent accepts no IPv6 block that node.json, and so the plugin,
// would refuse.
func TestMaxBlockBits6MatchesNodeState(t *testing.T) {
	if MaxBlockBits6 != nodestate.MaxBlock6Bits {
		t.Errorf("mesh.MaxBlockBits6 = %d, nodestate.MaxBlock6Bits = %d", MaxBlockBits6, nodestate.MaxBlock6Bits)
	}
}

func TestCheckPool6(t *testing.T) {
	for _, tc := range []struct {
		pool      string
		bits      int
		pool6     string
		bits6     int
		wantError string
	}{
		{"10.244.0.0/16", 23, "fd00:10:244::/48", 64, ""},
		{"10.244.0.0/16", 24, "fd00:10:244::/56", 64, ""},
		{"10.244.0.0/16", 24, "fd00:10:244::/112", 120, ""},
		{"10.244.0.0/16", 24, "fd00:10:244::/57", 64, "fewer than the 2^8 blocks"},
		{"10.244.0.0/16", 24, "fd00:10:244::/113", 120, "fewer than the 2^8 blocks"},
		{"10.244.0.0/16", 24, "fd00:10:244::/48", 121, "between"},
		{"10.244.0.0/16", 24, "fd00:10:244::/64", 60, "between"},
		{"10.244.0.0/16", 24, "fd00:10:244::1/48", 64, "not a network address"},
		{"10.244.0.0/16", 24, "10.0.0.0/8", 24, "not an IPv6 network"},
		{"10.244.0.0/16", 24, "::ffff:10.0.0.0/104", 120, "not an IPv6 network"},
	} {
		err := CheckPool6(netip.MustParsePrefix(tc.pool), tc.bits, netip.MustParsePrefix(tc.pool6), tc.bits6)
		if tc.wantError == "" && err != nil || tc.wantError != "" && (err == nil || !strings.Contains(err.Error(), tc.wantError)) {
			t.Errorf("CheckPool6(%s /%d, %s /%d) = %v, want %q", tc.pool, tc.bits, tc.pool6, tc.bits6, err, tc.wantError)
		}
	}
}
