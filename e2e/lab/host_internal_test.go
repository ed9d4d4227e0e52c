package lab

import (
	"net/netip"
	"testing"
)

// TestHostIP6: host N's IPv6 address is ::N of its LAN's IPv6 network, as
// its IPv4 address is .N of the LAN.
func TestHostIP6(t *testing.T) {
	for _, tc := range []struct {
		n, lan  int
		want4   string
		want6   string
		prefix6 netip.Prefix
	}{
		{1, LAN1, "172.16.254.1", "fd00:172:16:254::1", lanPrefix6},
		{7, LAN1, "172.16.254.7", "fd00:172:16:254::7", lanPrefix6},
		{2, LAN2, "172.16.253.2", "fd00:172:16:253::2", lan2Prefix6},
	} {
		if got := hostIP(tc.n, tc.lan); got != netip.MustParseAddr(tc.want4) {
			t.Errorf("hostIP(%d, LAN%d) = %s, want %s", tc.n, tc.lan, got, tc.want4)
		}
		got := hostIP6(tc.n, tc.lan)
		if got != netip.MustParseAddr(tc.want6) || !tc.prefix6.Contains(got) {
			t.Errorf("hostIP6(%d, LAN%d) = %s, want %s in %s", tc.n, tc.lan, got, tc.want6, tc.prefix6)
		}
	}
}
