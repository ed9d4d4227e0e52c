package main

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/internal/hostclock"
	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/kubejoin"
	"github.com/grapevine-net/grapevine/node"
)

// TestIPv6OnlyFlags: an IPv6 --pool makes an IPv6-only agent: /64 blocks
// unless told otherwise, an IPv6 --host-ip, VXLAN across subnets as for
// IPv4.
func TestIPv6OnlyFlags(t *testing.T) {
	o, err := parseAgentFlags(t, "--pool", "fd00:10:244::/48", "--host-ip", "fd00:172:16::1")
	if err != nil {
		t.Fatal(err)
	}
	if o.BlockSize != 64 || o.Encapsulation != node.EncapsulationCrossSubnet || o.HostIP != netip.MustParseAddr("fd00:172:16::1") || o.Pool6.IsValid() {
		t.Fatalf("block size /%d, encapsulation %s, host IP %s, pool6 %s; want /64, cross-subnet, fd00:172:16::1, none", o.BlockSize, o.Encapsulation, o.HostIP, o.Pool6)
	}
	if o, err = parseAgentFlags(t, "--pool", "fd00:10:244::/104", "--encapsulation", "never"); err != nil || o.BlockSize != 120 {
		t.Fatalf("small pool: block size /%d, %v; want /120", o.BlockSize, err)
	}
	if o, err = parseAgentFlags(t, "--pool", "fd00:10:244::/48", "--block-size", "60"); err != nil || o.BlockSize != 60 {
		t.Fatalf("--block-size 60: block size /%d, %v", o.BlockSize, err)
	}
	cfg := o.meshConfig(nil)
	if cfg.Pool != o.Pool || cfg.BlockBits != 60 || cfg.AdvertiseAddr6.IsValid() {
		t.Fatalf("mesh config pool %s /%d, IPv6 advertise address %s", cfg.Pool, cfg.BlockBits, cfg.AdvertiseAddr6)
	}
	// In Kubernetes the seeds are the Nodes' IPv6 InternalIPs.
	if o, err = parseAgentFlags(t, "--pool", "fd00:10:244::/48", "--join-kubernetes"); err != nil || !o.JoinKubernetes || seedFamily(o.Pool) != kubejoin.IPv6 {
		t.Fatalf("--join-kubernetes with an IPv6 pool: %v, seeds of family %v; want accepted, IPv6", err, seedFamily(o.Pool))
	}
}

// TestSeedFamily: the Nodes' InternalIPs that become seeds are those of
// the pool's family; a dual-stack cluster's pool is IPv4.
func TestSeedFamily(t *testing.T) {
	for _, tc := range []struct {
		pool string
		want kubejoin.Family
	}{
		{"10.244.0.0/16", kubejoin.IPv4},
		{"fd00:10:244::/48", kubejoin.IPv6},
	} {
		if got := seedFamily(netip.MustParsePrefix(tc.pool)); got != tc.want {
			t.Errorf("seedFamily(%s) = %v, want %v", tc.pool, got, tc.want)
		}
	}
}

// TestIPv6OnlyDesiredAndHandoff: an IPv6-only node's kernel state and
// node.json carry its IPv6 block, pool and host address in the one-pool
// fields, with no second (IPv6) pool.
func TestIPv6OnlyDesiredAndHandoff(t *testing.T) {
	o := testOpts
	o.Pool, o.BlockSize, o.HostIP, o.Encapsulation = netip.MustParsePrefix("fd00:10:244::/48"), 64, netip.MustParseAddr("fd00:172:16::1"), node.EncapsulationNever
	own := netip.MustParsePrefix("fd00:10:244:1::/64")
	renewed := time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)
	v := mesh.View{Self: "h1", HostIP: o.HostIP, Block: own, Ready: true,
		Lease: hostclock.Instant{Boot: "b", Since: 25 * time.Hour}, LeaseRenewed: renewed, LeaseEndsAt: renewed.Add(24 * time.Hour)}
	kept := map[string]keptRoute{
		"h2": {Block: netip.MustParsePrefix("fd00:10:244:2::/64"), HostIP: netip.MustParseAddr("fd00:172:16::2"), Gossip: true},
	}
	d := desiredState(v, kept, o)
	want := []node.PeerRoute{{Peer: "h2", Block: netip.MustParsePrefix("fd00:10:244:2::/64"), Via: netip.MustParseAddr("fd00:172:16::2")}}
	if d.Pool != o.Pool || d.OwnBlock != own || d.HostIP != o.HostIP || d.Pool6.IsValid() || d.OwnBlock6.IsValid() || len(d.Peers6) != 0 ||
		!reflect.DeepEqual(d.Peers, want) || d.Encapsulation != node.EncapsulationNever {
		t.Fatalf("desiredState = %+v; want pool %s, own block %s, peers %+v, nothing in the IPv6 twins", d, o.Pool, own, want)
	}
	st, ok := handoffState(v, o)
	if !ok || st.Block != own || st.Pool != o.Pool || st.HostIP != o.HostIP || st.Block6.IsValid() || st.Pool6.IsValid() {
		t.Fatalf("handoffState = %+v, %v; want the IPv6 block, pool and host IP alone", st, ok)
	}
	if err := st.Validate(); err != nil {
		t.Fatalf("node.json of an IPv6-only node: %v", err)
	}
}
