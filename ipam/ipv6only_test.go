package ipam

import (
	"net/netip"
	"testing"

	"github.com/grapevine-net/grapevine/node/nodestate"
)

// TestAllocateFromIPv6OnlyState: on an IPv6-only node (node.json's one
// block is IPv6) an attachment gets one IPv6 address, a /128 with the
// link-local gateway and an IPv6 default route in the result, and nothing
// IPv4.
func TestAllocateFromIPv6OnlyState(t *testing.T) {
	a := newAllocator(t, testConfig(t))
	st := nodestate.State{Block: netip.MustParsePrefix("fd00:10:244::100/120"), Pool: netip.MustParsePrefix("fd00:10:244::/104")}
	addrs, reserved, err := AllocateFromState(a, st, "a", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	want := netip.MustParseAddr("fd00:10:244::101")
	if len(addrs) != 1 || addrs[0] != want || len(reserved) != 1 {
		t.Fatalf("addresses %v (reserved %v), want %s alone", addrs, reserved, want)
	}
	res := Result(addrs...)
	if len(res.IPs) != 1 || res.IPs[0].Address.String() != want.String()+"/128" || res.IPs[0].Gateway.String() != Gateway6().String() ||
		len(res.Routes) != 1 || res.Routes[0].Dst.String() != "::/0" {
		t.Fatalf("result %v, want %s/128 via %s and ::/0 alone", res, want, Gateway6())
	}
	if again, fresh, err := AllocateFromState(a, st, "a", "eth0"); err != nil || len(fresh) != 0 || len(again) != 1 || again[0] != want {
		t.Fatalf("repeated ADD got %v (fresh %v), %v; want the held %s", again, fresh, err, want)
	}
	if err := a.Release("a", "eth0"); err != nil {
		t.Fatal(err)
	}
	if held, err := a.Held("a", "eth0"); err != nil || len(held) != 0 {
		t.Fatalf("after Release a holds %v (%v)", held, err)
	}
}
