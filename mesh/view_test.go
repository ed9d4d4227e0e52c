package mesh

import (
	"net/netip"
	"testing"

	"github.com/grapevine-net/grapevine/mesh/ledger"
)

// TestRoutedBlock: a member is routed only the block the ledger assigns to
// the node ID it advertises, under its name and at its host IP.
func TestRoutedBlock(t *testing.T) {
	id, other := ledger.NodeID{1}, ledger.NodeID{2}
	block := netip.MustParsePrefix("10.244.8.0/23")
	host := netip.MustParseAddr("192.0.2.8")
	st := ledger.State{Blocks: map[netip.Prefix]ledger.Owner{block: {ID: id, Name: "n8", HostIP: host, Index: 5}}}
	byID := blocksByID(st)
	meta := func(id ledger.NodeID, ip netip.Addr) Meta { return Meta{ID: id, HostIP: ip} }
	for _, tc := range []struct {
		name   string
		member string
		meta   Meta
		want   netip.Prefix
	}{
		{"owner", "n8", meta(id, host), block},
		{"another node ID", "n8", meta(other, host), netip.Prefix{}},
		{"the owner's ID at another host IP", "n8", meta(id, netip.MustParseAddr("192.0.2.9")), netip.Prefix{}},
		{"the owner's ID under another name", "impostor", meta(id, host), netip.Prefix{}},
		{"no ID", "n8", meta(ledger.NodeID{}, host), netip.Prefix{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := routedBlock(byID, tc.member, tc.meta); got != tc.want {
				t.Fatalf("routedBlock = %s, want %s", got, tc.want)
			}
		})
	}
}
