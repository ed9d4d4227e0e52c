package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/internal/hostclock"
	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/ledger"
	"github.com/grapevine-net/grapevine/node"
	"github.com/grapevine-net/grapevine/node/nodestate"
	"github.com/grapevine-net/grapevine/node/probe"
	"github.com/grapevine-net/grapevine/status"
)

var testOpts = agentOptions{
	NodeName:   "h1",
	Iface:      "em1",
	HostIP:     netip.MustParseAddr("172.16.254.1"),
	Pool:       netip.MustParsePrefix("10.244.0.0/16"),
	BlockSize:  23,
	Masquerade: true,
	MTU:        1500,
}

// testID is a node ID made from a test member's name.
func testID(name string) ledger.NodeID {
	var id ledger.NodeID
	copy(id[:], name)
	return id
}

// key is the memberKey of the test member called name.
func key(name string) string { return testID(name).String() }

// byID re-keys a map keyed by test member names to memberKey.
func byID[V any](byName map[string]V) map[string]V {
	if byName == nil {
		return nil
	}
	out := make(map[string]V, len(byName))
	for name, v := range byName {
		out[key(name)] = v
	}
	return out
}

// member is a member of a View as the mesh builds it, its node ID made from
// its name: block is what the ledger assigns it (Held) and what it
// advertises, and its Block to route while it is live.
func member(name, state, hostIP, block string) mesh.Member {
	m := mesh.Member{Name: name, ID: testID(name), Addr: netip.MustParseAddr(hostIP), HostIP: netip.MustParseAddr(hostIP)}
	if block != "" {
		m.Held = netip.MustParsePrefix(block)
		m.Advertised = m.Held
	}
	switch state {
	case "alive":
		m.State = mesh.Alive
	case "suspect":
		m.State = mesh.Suspect
	case "dead":
		m.State = mesh.Dead
	case "left":
		m.State = mesh.Left
	}
	if m.State.Live() {
		m.Block = m.Held
	}
	return m
}

// advertising is m advertising block (""): none) in its metadata, whatever
// the ledger assigns it: the mesh then gives it no Block to route.
func advertising(m mesh.Member, block string) mesh.Member {
	m.Advertised = netip.Prefix{}
	if block != "" {
		m.Advertised = netip.MustParsePrefix(block)
	}
	if m.Advertised != m.Held {
		m.Block = netip.Prefix{}
	}
	return m
}

func TestKeptRoutes(t *testing.T) {
	own := netip.MustParsePrefix("10.244.0.0/23")
	b2, b4 := netip.MustParsePrefix("10.244.2.0/23"), netip.MustParsePrefix("10.244.4.0/23")
	ip2, ip3 := netip.MustParseAddr("172.16.254.2"), netip.MustParseAddr("172.16.254.3")
	up := map[netip.Addr]probe.Verdict{ip2: {Up: true}, ip3: {Up: true}}
	down := map[netip.Addr]probe.Verdict{ip2: {Misses: 3}, ip3: {Misses: 3}}
	byGossip := func(b netip.Prefix, ip netip.Addr, path bool) keptRoute {
		return keptRoute{Block: b, HostIP: ip, Gossip: true, DataPath: path}
	}
	byPath := func(b netip.Prefix, ip netip.Addr) keptRoute { return keptRoute{Block: b, HostIP: ip, DataPath: true} }
	tests := []struct {
		name    string
		members []mesh.Member
		prev    map[string]keptRoute
		paths   map[netip.Addr]probe.Verdict
		silent  []string // peers whose agent did not answer direct pings
		want    map[string]keptRoute
	}{
		{name: "alone", want: map[string]keptRoute{}},
		{
			name: "alive and suspect peers are routed on gossip, data path or not",
			members: []mesh.Member{
				member("h2", "alive", "172.16.254.2", "10.244.2.0/23"),
				member("h3", "suspect", "172.16.254.3", "10.244.4.0/23"),
			},
			paths: map[netip.Addr]probe.Verdict{ip2: {Up: true}},
			want:  map[string]keptRoute{"h2": byGossip(b2, ip2, true), "h3": byGossip(b4, ip3, false)},
		},
		{
			name: "alive or suspect but silent (host and agent): withdrawn without waiting for the dead verdict",
			members: []mesh.Member{
				member("h2", "suspect", "172.16.254.2", "10.244.2.0/23"),
				member("h3", "alive", "172.16.254.3", "10.244.4.0/23"),
			},
			prev:   map[string]keptRoute{"h2": byGossip(b2, ip2, true), "h3": byGossip(b4, ip3, true)},
			paths:  down,
			silent: []string{"h2", "h3"},
			want:   map[string]keptRoute{},
		},
		{
			name: "host down, its agent not yet found silent: kept on gossip",
			members: []mesh.Member{
				member("h2", "suspect", "172.16.254.2", "10.244.2.0/23"),
			},
			prev:  map[string]keptRoute{"h2": byGossip(b2, ip2, true)},
			paths: down,
			want:  map[string]keptRoute{"h2": byGossip(b2, ip2, false)},
		},
		{
			name: "dead, host answering: the route stays on the data path",
			members: []mesh.Member{
				member("h2", "dead", "172.16.254.2", "10.244.2.0/23"),
				member("h3", "dead", "172.16.254.3", "10.244.4.0/23"),
			},
			prev:  map[string]keptRoute{"h2": byGossip(b2, ip2, true), "h3": byPath(b4, ip3)},
			paths: up,
			want:  map[string]keptRoute{"h2": byPath(b2, ip2), "h3": byPath(b4, ip3)},
		},
		{
			name: "left gracefully, host answering (agent restart): the route stays on the data path",
			members: []mesh.Member{
				member("h2", "left", "172.16.254.2", "10.244.2.0/23"),
				member("h3", "left", "172.16.254.3", "10.244.4.0/23"),
			},
			prev:  map[string]keptRoute{"h2": byGossip(b2, ip2, true), "h3": byPath(b4, ip3)},
			paths: up,
			want:  map[string]keptRoute{"h2": byPath(b2, ip2), "h3": byPath(b4, ip3)},
		},
		{
			name: "dead or left and host silent: withdrawn",
			members: []mesh.Member{
				member("h2", "dead", "172.16.254.2", "10.244.2.0/23"),
				member("h3", "left", "172.16.254.3", "10.244.4.0/23"),
			},
			prev:  map[string]keptRoute{"h2": byGossip(b2, ip2, true), "h3": byPath(b4, ip3)},
			paths: down,
			want:  map[string]keptRoute{},
		},
		{
			name: "dead or left, probes off: withdrawn at once",
			members: []mesh.Member{
				member("h2", "dead", "172.16.254.2", "10.244.2.0/23"),
				member("h3", "left", "172.16.254.3", "10.244.4.0/23"),
			},
			prev:  map[string]keptRoute{"h2": byGossip(b2, ip2, false), "h3": byGossip(b4, ip3, false)},
			paths: nil,
			want:  map[string]keptRoute{},
		},
		{
			name: "dead or left, block released or reclaimed in the ledger: withdrawn, host answering or not",
			members: []mesh.Member{
				member("h2", "dead", "172.16.254.2", ""),
				member("h3", "left", "172.16.254.3", ""),
			},
			prev:  map[string]keptRoute{"h2": byPath(b2, ip2), "h3": byGossip(b4, ip3, true)},
			paths: up,
			want:  map[string]keptRoute{},
		},
		{
			name:    "left, the ledger now assigns it another block: the old one is withdrawn",
			members: []mesh.Member{member("h2", "left", "172.16.254.2", "10.244.4.0/23")},
			prev:    map[string]keptRoute{"h2": byPath(b2, ip2)},
			paths:   up,
			want:    map[string]keptRoute{},
		},
		{
			name:    "dead and host never probed: withdrawn",
			members: []mesh.Member{member("h2", "dead", "172.16.254.2", "10.244.2.0/23")},
			prev:    map[string]keptRoute{"h2": byGossip(b2, ip2, false)},
			want:    map[string]keptRoute{},
		},
		{
			name:    "the data path alone never adds a route",
			members: []mesh.Member{member("h2", "dead", "172.16.254.2", "10.244.2.0/23"), member("h3", "left", "172.16.254.3", "10.244.4.0/23")},
			paths:   up,
			want:    map[string]keptRoute{},
		},
		{
			name:    "alive without a block (lost a conflict): no route, whatever was kept",
			members: []mesh.Member{member("h2", "alive", "172.16.254.2", "")},
			prev:    map[string]keptRoute{"h2": byGossip(b2, ip2, true)},
			paths:   up,
			want:    map[string]keptRoute{},
		},
		{
			name:    "a member gone from the view is forgotten",
			members: []mesh.Member{member("h3", "alive", "172.16.254.3", "10.244.4.0/23")},
			prev:    map[string]keptRoute{"h2": byPath(b2, ip2)},
			paths:   up,
			want:    map[string]keptRoute{"h3": byGossip(b4, ip3, true)},
		},
		{
			name: "a block gossip now gives to a live member is not kept for the dead one",
			members: []mesh.Member{
				member("h2", "dead", "172.16.254.2", "10.244.2.0/23"),
				member("h3", "alive", "172.16.254.3", "10.244.2.0/23"),
			},
			prev:  map[string]keptRoute{"h2": byPath(b2, ip2)},
			paths: up,
			want:  map[string]keptRoute{"h3": byGossip(b2, ip3, true)},
		},
		{
			name:    "a kept block that is now this node's own is dropped",
			members: []mesh.Member{member("h2", "dead", "172.16.254.2", "10.244.0.0/23")},
			prev:    map[string]keptRoute{"h2": byPath(own, ip2)},
			paths:   up,
			want:    map[string]keptRoute{},
		},
		{
			name:    "a dead member back alive with another block is routed to the new one",
			members: []mesh.Member{member("h2", "alive", "172.16.254.2", "10.244.4.0/23")},
			prev:    map[string]keptRoute{"h2": byPath(b2, ip2)},
			paths:   up,
			want:    map[string]keptRoute{"h2": byGossip(b4, ip2, true)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := mesh.View{Self: "h1", HostIP: testOpts.HostIP, Block: own, Ready: true, Members: tt.members}
			silent := map[string]bool{}
			for _, name := range tt.silent {
				silent[key(name)] = true
			}
			got := keptRoutes(v, byID(tt.prev), tt.paths, silent)
			if want := byID(tt.want); !reflect.DeepEqual(got, want) {
				t.Errorf("keptRoutes = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestDesiredState(t *testing.T) {
	own := netip.MustParsePrefix("10.244.0.0/23")
	v := mesh.View{Self: "h1", HostIP: testOpts.HostIP, Block: own, Ready: true}
	kept := map[string]keptRoute{
		"h3": {Block: netip.MustParsePrefix("10.244.4.0/23"), HostIP: netip.MustParseAddr("172.16.254.3"), DataPath: true},
		"h2": {Block: netip.MustParsePrefix("10.244.2.0/23"), HostIP: netip.MustParseAddr("172.16.254.2"), Gossip: true},
	}
	got := desiredState(v, kept, testOpts)
	if got.Iface != "em1" || got.OwnBlock != own || got.Pool != testOpts.Pool || !got.Masquerade {
		t.Errorf("desiredState header = %+v", got)
	}
	want := []node.PeerRoute{
		{Peer: "h2", Block: netip.MustParsePrefix("10.244.2.0/23"), Via: netip.MustParseAddr("172.16.254.2")},
		{Peer: "h3", Block: netip.MustParsePrefix("10.244.4.0/23"), Via: netip.MustParseAddr("172.16.254.3")},
	}
	if !reflect.DeepEqual(got.Peers, want) {
		t.Errorf("Peers = %+v, want %+v", got.Peers, want)
	}
}

func TestProbeTargets(t *testing.T) {
	v := mesh.View{Self: "h1", Members: []mesh.Member{
		member("h2", "alive", "172.16.254.2", "10.244.2.0/23"),
		member("h3", "dead", "172.16.254.3", ""),
		member("h4", "alive", "172.16.254.4", ""), // no block: nothing to route
		member("h5", "dead", "172.16.254.5", ""),  // withdrawn: back only through gossip
		member("h6", "suspect", "172.16.254.6", "10.244.6.0/23"),
		// Off the interface's networks, so routed over VXLAN via its VTEP
		// 10.244.8.0: probed at its host address, the underlay the
		// encapsulated packets cross, not through the tunnel.
		member("h7", "alive", "172.16.253.7", "10.244.8.0/23"),
	}}
	kept := map[string]keptRoute{
		"h2": {Block: netip.MustParsePrefix("10.244.2.0/23"), HostIP: netip.MustParseAddr("172.16.254.2"), Gossip: true},
		"h3": {Block: netip.MustParsePrefix("10.244.4.0/23"), HostIP: netip.MustParseAddr("172.16.254.3"), DataPath: true},
	}
	got := probeTargets(v, kept)
	want := []netip.Addr{netip.MustParseAddr("172.16.253.7"), netip.MustParseAddr("172.16.254.2"), netip.MustParseAddr("172.16.254.3"), netip.MustParseAddr("172.16.254.6")}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("probeTargets = %v, want %v", got, want)
	}
}

func TestHandoffState(t *testing.T) {
	if _, ok := handoffState(mesh.View{Self: "h1"}, testOpts); ok {
		t.Fatal("handoffState without a block must say not ready")
	}
	noLease := mesh.View{Self: "h1", Block: netip.MustParsePrefix("10.244.6.0/23"), Reason: "waiting for the ledger to confirm block"}
	if _, ok := handoffState(noLease, testOpts); ok {
		t.Fatal("handoffState must withhold a block this run holds no lease on")
	}
	ended := mesh.View{Self: "h1", Block: netip.MustParsePrefix("10.244.6.0/23"), Lease: hostclock.Instant{Boot: "b", Since: time.Hour},
		Reason: "the lease on 10.244.6.0/23 has ended"}
	if st, ok := handoffState(ended, testOpts); !ok || st.Lease.Ends != ended.Lease {
		t.Fatalf("handoffState of a block whose lease ended = %+v, %v; want it handed off with its lease, which the plugin enforces", st, ok)
	}
	renewed := time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)
	v := mesh.View{Self: "h1", Block: netip.MustParsePrefix("10.244.6.0/23"), Ready: true,
		Lease: hostclock.Instant{Boot: "b", Since: 25 * time.Hour}, LeaseRenewed: renewed, LeaseEndsAt: renewed.Add(24 * time.Hour)}
	st, ok := handoffState(v, testOpts)
	want := nodestate.State{Node: "h1", Block: v.Block, Pool: testOpts.Pool, HostIP: testOpts.HostIP, MTU: 1500,
		Lease: nodestate.Lease{Ends: v.Lease, Renewed: renewed, EndsAt: renewed.Add(24 * time.Hour)}}
	if !ok || st != want {
		t.Fatalf("handoffState = %+v, %v; want %+v", st, ok, want)
	}
	if err := st.Validate(); err != nil {
		t.Fatalf("hand-off state does not validate: %v", err)
	}

	// With --pool6 the IPv6 block is the one at the IPv4 block's index
	// (10.244.6.0/23 is block 3 of 10.244.0.0/16), also on the routes.
	dual := testOpts
	dual.Pool6, dual.BlockSize6 = netip.MustParsePrefix("fd00:10:244::/48"), 64
	st, ok = handoffState(v, dual)
	want.Block6, want.Pool6 = netip.MustParsePrefix("fd00:10:244:3::/64"), dual.Pool6
	if !ok || st != want {
		t.Fatalf("dual-stack handoffState = %+v, %v; want %+v", st, ok, want)
	}
	if err := st.Validate(); err != nil {
		t.Fatalf("dual-stack hand-off state does not validate: %v", err)
	}

	// With --policy-socket node.json names grapevine-policy's admission
	// socket, which makes the plugin wait on it for each new pod.
	policy := testOpts
	policy.PolicySocket = "/run/gv-test/policy.sock"
	if st, ok := handoffState(v, policy); !ok || st.PolicySocket != policy.PolicySocket || st.Validate() != nil {
		t.Fatalf("handoffState with --policy-socket = %+v, %v; want policySocket %s", st, ok, policy.PolicySocket)
	}
	if d := desiredState(v, nil, dual); d.Pool6 != dual.Pool6 || d.OwnBlock6 != want.Block6 {
		t.Errorf("dual-stack desiredState has pool6 %s, own block6 %s; want %s, %s", d.Pool6, d.OwnBlock6, dual.Pool6, want.Block6)
	}
	if d := desiredState(v, nil, testOpts); d.Pool6.IsValid() || d.OwnBlock6.IsValid() {
		t.Errorf("IPv4-only desiredState has pool6 %s, own block6 %s", d.Pool6, d.OwnBlock6)
	}

	// A kept peer's IPv6 block (the twin of its IPv4 block) goes via its
	// IPv6 host address, only when this host and the peer both have one;
	// otherwise it is listed with no next hop, for node to say why.
	kept := map[string]keptRoute{
		"h2": {Block: netip.MustParsePrefix("10.244.2.0/23"), HostIP: netip.MustParseAddr("172.16.254.2"),
			HostIP6: netip.MustParseAddr("fd00:172:16:254::2"), Gossip: true},
		"h3": {Block: netip.MustParsePrefix("10.244.4.0/23"), HostIP: netip.MustParseAddr("172.16.254.3"), Gossip: true},
	}
	noVia := []node.PeerRoute{
		{Peer: "h2", Block: netip.MustParsePrefix("fd00:10:244:1::/64")},
		{Peer: "h3", Block: netip.MustParsePrefix("fd00:10:244:2::/64")},
	}
	if d := desiredState(v, kept, dual); !reflect.DeepEqual(d.Peers6, noVia) {
		t.Errorf("a host without an IPv6 address has IPv6 peers %v, want %v", d.Peers6, noVia)
	}
	if d := desiredState(v, kept, testOpts); len(d.Peers6) != 0 {
		t.Errorf("an IPv4-only host has IPv6 peers %v", d.Peers6)
	}
	dual.HostIP6 = netip.MustParseAddr("fd00:172:16:254::1")
	d := desiredState(v, kept, dual)
	want6 := []node.PeerRoute{{Peer: "h2", Block: netip.MustParsePrefix("fd00:10:244:1::/64"), Via: netip.MustParseAddr("fd00:172:16:254::2")}, noVia[1]}
	if !reflect.DeepEqual(d.Peers6, want6) || len(d.Peers) != 2 {
		t.Errorf("dual-stack desiredState peers %v, IPv6 peers %v; want both IPv4 peers and IPv6 %v", d.Peers, d.Peers6, want6)
	}
}

// TestStaleHandoff: the previous run's hand-off stays only while the
// restart rule covers the block it names, or the mesh has not decided yet.
func TestStaleHandoff(t *testing.T) {
	saved, other := netip.MustParsePrefix("10.244.6.0/23"), netip.MustParsePrefix("10.244.8.0/23")
	for _, tc := range []struct {
		name      string
		v         mesh.View
		handedOff netip.Prefix
		stale     string // "" if the hand-off stays, else part of why not
	}{
		{"nothing handed off", mesh.View{Restart: mesh.RestartRefused, RestartReason: "too old"}, netip.Prefix{}, ""},
		{"undecided: first moments of a restart", mesh.View{Reason: "joining"}, saved, ""},
		{"restored", mesh.View{Restart: mesh.RestartRestored, Block: saved, Ready: true}, saved, ""},
		{"restored, then the rule expired", mesh.View{Restart: mesh.RestartRestored, Block: saved, Reason: "ledger leader out of reach"},
			saved, "no longer covers block 10.244.6.0/23: ledger leader out of reach"},
		{"restored, then fenced", mesh.View{Restart: mesh.RestartRestored, Reason: "lost its block"}, saved, "no longer covers"},
		{"restored another block than node.json names", mesh.View{Restart: mesh.RestartRestored, Block: other, Ready: true},
			saved, "node.json names block 10.244.6.0/23, but this node holds block 10.244.8.0/23"},
		{"refused", mesh.View{Restart: mesh.RestartRefused, RestartReason: "last confirmed 2h0m0s ago", Reason: "waiting for the ledger"},
			saved, "the restart rule does not apply to block 10.244.6.0/23: last confirmed 2h0m0s ago"},
		{"refused, the ledger gives another block", mesh.View{Restart: mesh.RestartRefused, RestartReason: "released", Block: other, Ready: true},
			saved, "does not apply"},
		{"refused, then the ledger confirmed the same block", mesh.View{Restart: mesh.RestartRefused, RestartReason: "released", Block: saved, Ready: true},
			saved, ""},
		{"no block saved", mesh.View{Restart: mesh.RestartNoBlock, Reason: "joining"}, saved, "saved no block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := staleHandoff(tc.v, tc.handedOff)
			if (got == "") != (tc.stale == "") || !strings.Contains(got, tc.stale) {
				t.Fatalf("staleHandoff = %q, want %q", got, tc.stale)
			}
		})
	}
}

func TestBuildStatusRouteStates(t *testing.T) {
	v := mesh.View{
		Self:  "h1",
		Block: netip.MustParsePrefix("10.244.0.0/23"),
		Ready: true,
		Members: []mesh.Member{
			member("h2", "alive", "172.16.254.2", "10.244.2.0/23"),
			member("h3", "dead", "172.16.254.3", "10.244.4.0/23"),
			member("h4", "alive", "172.16.254.4", ""),
			member("h5", "dead", "172.16.254.5", "10.244.8.0/23"),
			member("h6", "left", "172.16.254.6", "10.244.10.0/23"), // an agent restarting
			member("h7", "left", "172.16.254.7", "10.244.12.0/23"), // stopped, then its host went
			member("h8", "left", "172.16.254.8", ""),               // its block released
		},
	}
	paths := map[netip.Addr]probe.Verdict{
		netip.MustParseAddr("172.16.254.2"): {Up: true, LastReply: time.Unix(100, 0)},
		netip.MustParseAddr("172.16.254.5"): {Up: true, LastReply: time.Unix(101, 0)},
		netip.MustParseAddr("172.16.254.6"): {Up: true, LastReply: time.Unix(102, 0)},
		netip.MustParseAddr("172.16.254.3"): {Misses: 3, LastReply: time.Unix(90, 0)},
		netip.MustParseAddr("172.16.254.7"): {Misses: 3, LastReply: time.Unix(91, 0)},
		netip.MustParseAddr("172.16.254.8"): {Up: true, LastReply: time.Unix(103, 0)},
	}
	prev := byID(map[string]keptRoute{
		"h5": {Block: netip.MustParsePrefix("10.244.8.0/23"), HostIP: netip.MustParseAddr("172.16.254.5"), Gossip: true},
		"h6": {Block: netip.MustParsePrefix("10.244.10.0/23"), HostIP: netip.MustParseAddr("172.16.254.6"), Gossip: true, DataPath: true},
		"h7": {Block: netip.MustParsePrefix("10.244.12.0/23"), HostIP: netip.MustParseAddr("172.16.254.7"), DataPath: true},
		"h8": {Block: netip.MustParsePrefix("10.244.14.0/23"), HostIP: netip.MustParseAddr("172.16.254.8"), DataPath: true},
	})
	kept := keptRoutes(v, prev, paths, nil)
	withdrawn := withdrawals(v, prev, kept, paths, nil, nil)
	d := desiredState(v, kept, testOpts)
	k := node.NewFakeKernel()
	k.AddLink("em1", netip.MustParsePrefix("172.16.254.1/24"))
	res, err := node.NewReconciler(k, nil, nil).Reconcile(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	got := buildStatus(v, kept, withdrawn, paths, res, true, "")
	states := map[string]string{}
	for _, m := range got.Members {
		states[m.Name] = fmt.Sprintf("%s/%s/%s/%v/%s/%s", m.State, m.Block, m.Route, m.KeptBy, m.DataPath, m.RouteReason)
	}
	want := map[string]string{
		"h2": "alive/10.244.2.0/23/programmed/[gossip data path]/up/",
		"h3": "dead/10.244.4.0/23/withdrawn/[]/down/dead; not routed: gone before this agent routed it",
		"h4": "alive//none/[]//",
		"h5": "dead/10.244.8.0/23/programmed/[data path]/up/dead; kept by data path",
		"h6": "left/10.244.10.0/23/programmed/[data path]/up/left; kept by data path",
		"h7": "left/10.244.12.0/23/withdrawn/[]/down/left; withdrawn: host not answering",
		"h8": "left//none/[]/up/left; withdrawn: the ledger no longer assigns it 10.244.14.0/23",
	}
	if !reflect.DeepEqual(states, want) {
		t.Fatalf("member states:\n got %v\nwant %v", states, want)
	}
	// What doctor counts as routed (status.Member.Routed) is what the
	// agent routes: the programmed members, however kept.
	for _, m := range got.Members {
		if want := m.Route == node.PeerProgrammed; m.Routed() != want {
			t.Errorf("%s (route %q): Routed() = %v, want %v", m.Name, m.Route, m.Routed(), want)
		}
	}
	if m := got.Members[0]; !m.DataPathSeen.Equal(time.Unix(100, 0)) {
		t.Errorf("h2's last reply = %v", m.DataPathSeen)
	}
}

// TestTwoMembersOneName: a second host under a live host's name (a cloned
// VM that kept its host name) is a second member, keyed by its node ID:
// the holder keeps its route, the impostor gets none even when it is the
// one gossip lists last, and the status names the conflict with both host
// IPs and says why the impostor is not routed (lab trace 10).
func TestTwoMembersOneName(t *testing.T) {
	b2 := netip.MustParsePrefix("10.244.2.0/23")
	ip2, ip9 := netip.MustParseAddr("172.16.254.2"), netip.MustParseAddr("172.16.254.9")
	holder := member("h2", "alive", ip2.String(), b2.String())
	impostor := member("h2", "alive", ip9.String(), "")
	impostor.ID = testID("h2-clone")
	for _, order := range [][]mesh.Member{{holder, impostor}, {impostor, holder}} {
		v := mesh.View{
			Self: "h1", HostIP: testOpts.HostIP, Block: netip.MustParsePrefix("10.244.0.0/23"), Ready: true,
			Members: order,
			NameConflicts: []mesh.NameConflict{{Name: "h2", Nodes: []mesh.NameClaimant{
				{ID: holder.ID, HostIP: ip2, Holder: true}, {ID: impostor.ID, HostIP: ip9},
			}}},
		}
		paths := map[netip.Addr]probe.Verdict{ip2: {Up: true}, ip9: {Up: true}}
		// The holder routed last pass; the impostor's ID never was.
		prev := map[string]keptRoute{memberKey(holder): {Block: b2, HostIP: ip2, Gossip: true, DataPath: true}}
		kept := keptRoutes(v, prev, paths, nil)
		if want := map[string]keptRoute{memberKey(holder): {Block: b2, HostIP: ip2, Gossip: true, DataPath: true}}; !reflect.DeepEqual(kept, want) {
			t.Fatalf("keptRoutes = %+v, want only the holder's route %+v", kept, want)
		}
		withdrawn := withdrawals(v, prev, kept, paths, nil, nil)
		d := desiredState(v, kept, testOpts)
		if want := []node.PeerRoute{{Peer: memberKey(holder), Block: b2, Via: ip2}}; !reflect.DeepEqual(d.Peers, want) {
			t.Fatalf("Peers = %+v, want %+v", d.Peers, want)
		}
		k := node.NewFakeKernel()
		k.AddLink("em1", netip.MustParsePrefix("172.16.254.1/24"))
		res, err := node.NewReconciler(k, nil, nil).Reconcile(t.Context(), d)
		if err != nil {
			t.Fatal(err)
		}
		st := buildStatus(v, kept, withdrawn, paths, res, true, "")
		byIP := map[string]status.Member{}
		for _, m := range st.Members {
			byIP[m.HostIP] = m
		}
		if m := byIP[ip2.String()]; m.Name != "h2" || m.ID != memberKey(holder) || m.Route != node.PeerProgrammed || m.Block != b2.String() {
			t.Errorf("holder: %+v", m)
		}
		if m := byIP[ip9.String()]; m.Name != "h2" || m.ID != memberKey(impostor) || m.Route != status.RouteNone || m.Block != "" ||
			!strings.Contains(m.RouteReason, "held by the node at "+ip2.String()) {
			t.Errorf("impostor: %+v", m)
		}
		var table strings.Builder
		if err := printStatus(&table, st); err != nil {
			t.Fatal(err)
		}
		line := "NAME CONFLICT: h2 is used by " + ip2.String() + " (ID " + memberKey(holder) + ", holds the block), " +
			ip9.String() + " (ID " + memberKey(impostor) + ", refused by the ledger)"
		if !strings.Contains(table.String(), line) {
			t.Errorf("status table lacks %q:\n%s", line, table.String())
		}
	}
	// After a partition both may hold a block under the name: neither is
	// said to be held off by the other.
	both := mesh.View{NameConflicts: []mesh.NameConflict{{Name: "h2", Nodes: []mesh.NameClaimant{
		{ID: holder.ID, HostIP: ip2, Holder: true}, {ID: impostor.ID, HostIP: ip9, Holder: true},
	}}}}
	if got := nameHeldElsewhere(both, impostor); got != "" {
		t.Errorf("with two holders, the second is said to be held off by %s", got)
	}
}

func TestWithdrawals(t *testing.T) {
	b2 := netip.MustParsePrefix("10.244.2.0/23")
	ip2 := netip.MustParseAddr("172.16.254.2")
	up := map[netip.Addr]probe.Verdict{ip2: {Up: true}}
	down := map[netip.Addr]probe.Verdict{ip2: {Misses: 3}}
	routed := map[string]keptRoute{"h2": {Block: b2, HostIP: ip2, Gossip: true, DataPath: true}}
	tests := []struct {
		name   string
		m      mesh.Member
		prev   map[string]keptRoute
		kept   map[string]keptRoute
		paths  map[netip.Addr]probe.Verdict
		silent bool
		before map[string]string
		want   string
	}{
		{name: "alive and routed", m: member("h2", "alive", "172.16.254.2", "10.244.2.0/23"), prev: routed, kept: routed, paths: up},
		{name: "left, kept on the data path", m: member("h2", "left", "172.16.254.2", "10.244.2.0/23"), prev: routed,
			kept: map[string]keptRoute{"h2": {Block: b2, HostIP: ip2, DataPath: true}}, paths: up},
		{name: "left, host down", m: member("h2", "left", "172.16.254.2", "10.244.2.0/23"), prev: routed, paths: down,
			want: "withdrawn: host not answering"},
		{name: "left, probes off", m: member("h2", "left", "172.16.254.2", "10.244.2.0/23"), prev: routed,
			want: "withdrawn: data-path probes are off"},
		{name: "dead, block released", m: member("h2", "dead", "172.16.254.2", ""), prev: routed, paths: up,
			want: "withdrawn: the ledger no longer assigns it 10.244.2.0/23"},
		{name: "left, block routed to another member", m: member("h2", "left", "172.16.254.2", "10.244.2.0/23"), prev: routed, paths: up,
			want: "withdrawn: 10.244.2.0/23 is routed elsewhere"},
		{name: "a later pass remembers why, the host no longer probed", m: member("h2", "left", "172.16.254.2", "10.244.2.0/23"),
			before: map[string]string{"h2": "withdrawn: host not answering"}, want: "withdrawn: host not answering"},
		{name: "gone before this run routed it", m: member("h2", "dead", "172.16.254.2", "10.244.4.0/23"), paths: up,
			want: "not routed: gone before this agent routed it"},
		{name: "suspect, host and agent silent", m: member("h2", "suspect", "172.16.254.2", "10.244.2.0/23"), prev: routed,
			paths: down, silent: true, want: "withdrawn: host not answering, nor its agent"},
		{name: "silent, a later pass remembers why", m: member("h2", "alive", "172.16.254.2", "10.244.2.0/23"), silent: true,
			before: map[string]string{"h2": "withdrawn: host not answering, nor its agent"},
			want:   "withdrawn: host not answering, nor its agent"},
		{name: "suspect and routed", m: member("h2", "suspect", "172.16.254.2", "10.244.2.0/23"), prev: routed, kept: routed, paths: up},
		{name: "gone without a block", m: member("h2", "left", "172.16.254.2", ""), paths: up},
		{name: "back alive: forgotten", m: member("h2", "alive", "172.16.254.2", ""), before: map[string]string{"h2": "withdrawn: host not answering"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := mesh.View{Self: "h1", Members: []mesh.Member{tt.m}}
			got := withdrawals(v, byID(tt.prev), byID(tt.kept), tt.paths, map[string]bool{key("h2"): tt.silent}, byID(tt.before))
			if got[key("h2")] != tt.want || len(got) > 1 || (tt.want == "" && len(got) != 0) {
				t.Errorf("withdrawals = %q, want h2: %q", got, tt.want)
			}
		})
	}
}

func TestRouteReason(t *testing.T) {
	b := netip.MustParsePrefix("10.244.2.0/23")
	ip := netip.MustParseAddr("172.16.254.2")
	byGossip := keptRoute{Block: b, HostIP: ip, Gossip: true, DataPath: true}
	byPath := keptRoute{Block: b, HostIP: ip, DataPath: true}
	tests := []struct {
		name      string
		m         mesh.Member
		route     keptRoute
		isKept    bool
		withdrawn string
		heldBy    string
		want      string
	}{
		{"alive, routed on gossip", member("h2", "alive", "172.16.254.2", "10.244.2.0/23"), byGossip, true, "", "", ""},
		{"alive without a block", member("h2", "alive", "172.16.254.2", ""), keptRoute{}, false, "", "", ""},
		{"left, host answering", member("h2", "left", "172.16.254.2", "10.244.2.0/23"), byPath, true, "", "", "left; kept by data path"},
		{"dead, host answering", member("h2", "dead", "172.16.254.2", "10.244.2.0/23"), byPath, true, "", "", "dead; kept by data path"},
		{"left, host down", member("h2", "left", "172.16.254.2", "10.244.2.0/23"), keptRoute{}, false, "withdrawn: host not answering", "", "left; withdrawn: host not answering"},
		{"alive, another host holds its name", member("h2", "alive", "172.16.254.9", ""), keptRoute{}, false, "", "172.16.254.2",
			"not routed: name h2 is held by the node at 172.16.254.2; the ledger refuses this one's claims"},
		{"alive, advertising another block than the ledger's", advertising(member("h2", "alive", "172.16.254.2", "10.244.2.0/23"), "10.244.4.0/23"),
			keptRoute{}, false, "", "", "not routed: advertises block 10.244.4.0/23, the ledger assigns 10.244.2.0/23"},
		{"alive, advertising no block yet: routed on the ledger's word", advertising(member("h2", "alive", "172.16.254.2", "10.244.2.0/23"), ""),
			byGossip, true, "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := routeReason(tt.m, tt.route, tt.isKept, tt.withdrawn, tt.heldBy); got != tt.want {
				t.Errorf("routeReason = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestValidatePool(t *testing.T) {
	tests := []struct {
		pool    string
		size    int
		wantErr string
	}{
		{"10.244.0.0/16", 23, ""},
		{"10.244.0.0/16", 16, ""},
		{"10.244.0.0/16", 15, "between"},
		{"10.244.0.0/16", 31, "between"},
		{"10.244.1.0/16", 23, "not a network address"},
		{"fd00::/48", 64, ""},
		{"fd00::/104", 120, ""},
		{"fd00::/48", 121, "between"},
	}
	for _, tt := range tests {
		err := validatePool(netip.MustParsePrefix(tt.pool), tt.size)
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("validatePool(%s, %d) = %v, want error containing %q", tt.pool, tt.size, err, tt.wantErr)
		}
	}
}

func TestReadGossipKey(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i)
	}
	got, err := readGossipKey(write("good", base64.StdEncoding.EncodeToString(key)+"\n"))
	if err != nil || !reflect.DeepEqual(got, key) {
		t.Fatalf("readGossipKey(good) = %x, %v", got, err)
	}
	for name, content := range map[string]string{
		"short":  base64.StdEncoding.EncodeToString(key[:10]),
		"binary": "not base64 at all!",
	} {
		if _, err := readGossipKey(write(name, content)); err == nil {
			t.Errorf("readGossipKey(%s) accepted a bad key", name)
		}
	}
	if _, err := readGossipKey(filepath.Join(dir, "missing")); err == nil {
		t.Error("readGossipKey accepted a missing file")
	}
}

func TestStatusRendering(t *testing.T) {
	r := status.Report{
		Node: "h1", HostIP: "172.16.254.1", Ready: false, Reason: "no ledger leader reachable",
		Ledger: status.Ledger{ClusterID: "0123456789abcdef", Role: "nonvoter", Leader: "h2", Voters: []string{"h2", "h3", "h4"}, LastIndex: 42,
			Foreign: []string{"x1 (cluster fedcba9876543210)"}},
		Members: []status.Member{
			{Name: "h3", Addr: "172.16.254.3", HostIP: "172.16.254.3", State: "dead", Route: status.RouteNone},
			{Name: "x1", Addr: "172.16.254.9", HostIP: "172.16.254.9", State: "alive", Foreign: true, Route: status.RouteNone},
		},
	}
	var table strings.Builder
	if err := printStatus(&table, r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"block -  NOT READY: no ledger leader reachable",
		"ledger 0123456789abcdef  role nonvoter  leader h2  voters h2,h3,h4  last index 42",
		"FOREIGN LEDGER MEMBERS (not routed): x1 (cluster fedcba9876543210)",
		"h3      dead           172.16.254.3  -      none",
		"x1      alive,foreign  172.16.254.9  -      none",
	} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	js, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(js), `"block"`) || strings.Contains(string(js), `"-"`) {
		t.Errorf("JSON must omit unset values, got %s", js)
	}
}

func TestMayReconcile(t *testing.T) {
	peer := member("h2", "alive", "172.16.254.2", "10.244.2.0/23")
	tests := []struct {
		name      string
		view      mesh.View
		inherited int
		age       time.Duration
		want      bool
	}{
		{"not ready", mesh.View{Reason: "joining"}, 0, 0, false},
		{"fresh host, ready alone", mesh.View{Ready: true}, 0, 0, true},
		{"restarted, peers not back yet", mesh.View{Ready: true}, 3, time.Second, false},
		{"restarted, a peer is back", mesh.View{Ready: true, Members: []mesh.Member{peer}}, 3, time.Second, true},
		{"restarted, alone after the grace", mesh.View{Ready: true}, 3, restartGrace, true},
	}
	for _, tt := range tests {
		a := &agent{inheritedPeerRoutes: tt.inherited, started: time.Now().Add(-tt.age)}
		if got := a.mayReconcile(tt.view); got != tt.want {
			t.Errorf("%s: mayReconcile = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// parseAgentFlags runs the agent command's flag parsing and validation only.
func parseAgentFlags(t *testing.T, args ...string) (agentOptions, error) {
	t.Helper()
	_, err, started := runCLI(t, append([]string{"agent", "--node-name", "h1"}, args...)...)
	if started == nil {
		return agentOptions{}, err
	}
	return *started, err
}

func TestCNIVersionFlag(t *testing.T) {
	opts, err := parseAgentFlags(t)
	if err != nil || opts.CNIVersion != "" {
		t.Fatalf("default: CNIVersion %q, %v; want empty (1.0.0 offering 1.1.0)", opts.CNIVersion, err)
	}
	opts, err = parseAgentFlags(t, "--cni-version", "0.4.0")
	if err != nil || opts.CNIVersion != "0.4.0" {
		t.Fatalf("--cni-version 0.4.0: CNIVersion %q, %v", opts.CNIVersion, err)
	}
	t.Setenv("GRAPEVINE_CNI_VERSION", "1.1.0")
	if opts, err = parseAgentFlags(t); err != nil || opts.CNIVersion != "1.1.0" {
		t.Fatalf("GRAPEVINE_CNI_VERSION=1.1.0: CNIVersion %q, %v", opts.CNIVersion, err)
	}
	_, err = parseAgentFlags(t, "--cni-version", "1.2.0")
	if err == nil || !strings.Contains(err.Error(), "--cni-version") || !strings.Contains(err.Error(), "1.0.0, 1.1.0") {
		t.Fatalf("--cni-version 1.2.0: %v, want an error naming the flag and the supported versions", err)
	}
}
