package mesh

import (
	"net/netip"
	"strings"
	"testing"
)

func TestDefaultBlockBitsFor(t *testing.T) {
	for _, tc := range []struct {
		pool string
		want int
	}{
		{"10.244.0.0/16", DefaultBlockBits},
		{"fd00:10:244::/48", 64},
		{"fd00:10:244::/56", 64},
		{"fd00:10::/44", 64},
		{"fd00::/40", 60},
		{"fd00:10:244::/64", 84},
		{"fd00:10:244::/104", 120},
		{"fd00:10:244::/96", 116},
	} {
		pool := netip.MustParsePrefix(tc.pool)
		got := DefaultBlockBitsFor(pool)
		if got != tc.want {
			t.Errorf("DefaultBlockBitsFor(%s) = /%d, want /%d", pool, got, tc.want)
		}
		if err := CheckPool(pool, got); err != nil {
			t.Errorf("CheckPool(%s, /%d), the default: %v", pool, got, err)
		}
	}
}

func TestCheckPoolIPv6(t *testing.T) {
	for _, tc := range []struct {
		pool string
		bits int
		want string // "" accepts
	}{
		{"fd00:10:244::/48", 64, ""},
		{"fd00:10:244::/104", 120, ""},
		{"fd00:10:244::/112", 120, ""},
		{"fd00:10:244::/48", 121, "between the pool's prefix length /48 and /120"},
		{"fd00:10::/40", 64, "more than 2^20 blocks"},
		{"fd00:10:244::1/48", 64, "not a network address"},
		{"::ffff:10.244.0.0/112", 120, "not an IPv4 or IPv6 network"},
		{"10.244.0.0/16", 31, "between the pool's prefix length /16 and /30"},
	} {
		err := CheckPool(netip.MustParsePrefix(tc.pool), tc.bits)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s /%d: %v", tc.pool, tc.bits, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s /%d: got %v, want %q", tc.pool, tc.bits, err, tc.want)
		}
	}
}

// TestConfigAddressFamilies: the host address is of the pool's family (an
// IPv6-only cluster has an IPv6 pool and IPv6 host addresses), and an IPv6
// pool takes its default block size.
func TestConfigAddressFamilies(t *testing.T) {
	v4, v6 := netip.MustParseAddr("172.16.0.1"), netip.MustParseAddr("fd00:172:16::1")
	pool4, pool6 := netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/48")
	for _, tc := range []struct {
		name      string
		pool      netip.Prefix
		advertise netip.Addr
		bind      netip.Addr
		addr6     netip.Addr
		want      string
	}{
		{"IPv4 host, IPv4 pool", pool4, v4, netip.Addr{}, netip.Addr{}, ""},
		{"IPv6 host, IPv6 pool", pool6, v6, netip.Addr{}, netip.Addr{}, ""},
		{"IPv6 host bound to ::", pool6, v6, netip.IPv6Unspecified(), netip.Addr{}, ""},
		{"IPv6 host, IPv4 pool", pool4, v6, netip.Addr{}, netip.Addr{}, "must be an IPv4 address"},
		{"IPv4 host, IPv6 pool", pool6, v4, netip.Addr{}, netip.Addr{}, "must be an IPv6 address"},
		{"IPv6 host bound to an IPv4 address", pool6, v6, v4, netip.Addr{}, "bind address 172.16.0.1 must be an IPv6 address"},
		{"link-local IPv6 host", pool6, netip.MustParseAddr("fe80::1"), netip.Addr{}, netip.Addr{}, "not a global unicast IPv6 address"},
		{"second IPv6 address beside an IPv6 pool", pool6, v6, netip.Addr{}, netip.MustParseAddr("fd00:172:16::2"), "is the host's IPv6 address already"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Config{NodeName: "a", StateDir: t.TempDir(), Pool: tc.pool, AdvertiseAddr: tc.advertise, BindAddr: tc.bind, AdvertiseAddr6: tc.addr6}.withDefaults()
			switch {
			case tc.want == "" && err != nil:
				t.Fatal(err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want %q", err, tc.want)
			case err == nil && c.BlockBits != DefaultBlockBitsFor(tc.pool):
				t.Fatalf("block size /%d, want the default /%d", c.BlockBits, DefaultBlockBitsFor(tc.pool))
			}
		})
	}
}

// TestListenAddr: the gossip and ledger sockets listen on the bind address
// when one is set, else on every address of the advertise address's family.
func TestListenAddr(t *testing.T) {
	v4, v6 := netip.MustParseAddr("172.16.0.1"), netip.MustParseAddr("fd00:172:16::1")
	for _, tc := range []struct {
		name      string
		advertise netip.Addr
		bind      netip.Addr
		want      netip.Addr
	}{
		{"IPv4 host, no bind address", v4, netip.Addr{}, netip.IPv4Unspecified()},
		{"IPv6 host, no bind address", v6, netip.Addr{}, netip.IPv6Unspecified()},
		{"IPv4 host bound to its address", v4, v4, v4},
		{"IPv6 host bound to its address", v6, v6, v6},
		{"IPv6 host bound to ::", v6, netip.IPv6Unspecified(), netip.IPv6Unspecified()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := (Config{AdvertiseAddr: tc.advertise, BindAddr: tc.bind}).listenAddr(); got != tc.want {
				t.Fatalf("listenAddr() = %s, want %s", got, tc.want)
			}
		})
	}
}
