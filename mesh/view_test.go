package mesh

import (
	"net/netip"
	"testing"

	"github.com/grapevine-net/grapevine/mesh/ledger"
)

// TestRoutedBlock: a member is routed only the block the ledger assigns to
// the node ID it advertises, under its name and at its host IP, and only
// while it advertises that block: the advertisement is never a claim.
func TestRoutedBlock(t *testing.T) {
	id, other := ledger.NodeID{1}, ledger.NodeID{2}
	block := netip.MustParsePrefix("10.244.8.0/23")
	host := netip.MustParseAddr("192.0.2.8")
	st := ledger.State{Blocks: map[netip.Prefix]ledger.Owner{block: {ID: id, Name: "n8", HostIP: host, Index: 5}}}
	byID := blocksByID(st)
	meta := func(name string, id ledger.NodeID, ip netip.Addr, b netip.Prefix) Meta {
		return Meta{Name: name, ID: id, HostIP: ip, Block: b}
	}
	otherBlock := netip.MustParsePrefix("10.244.10.0/23")
	for _, tc := range []struct {
		name     string
		meta     Meta
		wantHeld netip.Prefix
		want     netip.Prefix
	}{
		{"owner", meta("n8", id, host, block), block, block},
		{"owner advertising no block yet: the ledger's word", meta("n8", id, host, netip.Prefix{}), block, block},
		{"owner advertising another block", meta("n8", id, host, otherBlock), block, netip.Prefix{}},
		{"another node ID under the owner's name", meta("n8", other, host, block), netip.Prefix{}, netip.Prefix{}},
		{"the owner's ID at another host IP", meta("n8", id, netip.MustParseAddr("192.0.2.9"), block), netip.Prefix{}, netip.Prefix{}},
		{"the owner's ID under another name", meta("impostor", id, host, block), netip.Prefix{}, netip.Prefix{}},
		{"no ID", meta("n8", ledger.NodeID{}, host, block), netip.Prefix{}, netip.Prefix{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := heldBlock(byID, tc.meta); got != tc.wantHeld {
				t.Errorf("heldBlock = %s, want %s", got, tc.wantHeld)
			}
			if got := routedBlock(byID, tc.meta); got != tc.want {
				t.Errorf("routedBlock = %s, want %s", got, tc.want)
			}
		})
	}
}
