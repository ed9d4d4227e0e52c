package main

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/node"
	"github.com/grapevine-net/grapevine/node/probe"
	"github.com/grapevine-net/grapevine/status"
)

// On a dual-stack node the status shows this node's IPv6 block and host
// address, and per member its IPv6 block and IPv6 path with the reason
// (direct for h2 on the shared IPv6 network, VXLAN for h3 without IPv6);
// an IPv4-only node's status and table have none of it.
func TestStatusShowsIPv6Paths(t *testing.T) {
	h2 := member("h2", "alive", "172.16.254.2", "10.244.2.0/23")
	h2.HostIP6 = netip.MustParseAddr("fd00:172:16:254::2")
	v := mesh.View{
		Self:    "h1",
		Block:   netip.MustParsePrefix("10.244.0.0/23"),
		Ready:   true,
		Members: []mesh.Member{h2, member("h3", "alive", "172.16.254.3", "10.244.4.0/23")},
	}
	o := testOpts
	o.Pool6, o.BlockSize6 = netip.MustParsePrefix("fd00:10:244::/48"), 64
	o.HostIP6 = netip.MustParseAddr("fd00:172:16:254::1")
	o.Encapsulation = node.EncapsulationCrossSubnet
	kept := keptRoutes(v, nil, nil, nil)
	k := node.NewFakeKernel()
	k.AddLink("em1", netip.MustParsePrefix("172.16.254.1/24"), netip.MustParsePrefix("fd00:172:16:254::1/64"))
	res, err := node.NewReconciler(k, nil, nil).Reconcile(t.Context(), desiredState(v, kept, o))
	if err != nil {
		t.Fatal(err)
	}
	r := ipv6Status(buildStatus(v, kept, nil, nil, res, true, ""), v, res, o)
	if r.Block6 != "fd00:10:244::/64" || r.HostIP6 != "fd00:172:16:254::1" {
		t.Errorf("status has block6 %q, hostIP6 %q", r.Block6, r.HostIP6)
	}
	want := map[string]status.Member{
		"h2": {Block6: "fd00:10:244:1::/64", HostIP6: "fd00:172:16:254::2", Path6: "direct", Path6Reason: "fd00:172:16:254::2 is on em1's network fd00:172:16:254::/64"},
		"h3": {Block6: "fd00:10:244:2::/64", Path6: "vxlan", Path6Reason: node.ErrNoIPv6Underlay.Error() + "; over VXLAN to 172.16.254.3"},
	}
	for _, m := range r.Members {
		w := want[m.Name]
		if m.Block6 != w.Block6 || m.HostIP6 != w.HostIP6 || m.Path6 != w.Path6 || m.Path6Reason != w.Path6Reason {
			t.Errorf("%s: block6 %q host6 %q path6 %q (%q); want %q %q %q (%q)", m.Name, m.Block6, m.HostIP6, m.Path6, m.Path6Reason,
				w.Block6, w.HostIP6, w.Path6, w.Path6Reason)
		}
	}
	body, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{`"block6":"fd00:10:244::/64"`, `"path6":"direct"`, `"path6":"vxlan"`} {
		if !strings.Contains(string(body), field) {
			t.Errorf("JSON lacks %s: %s", field, body)
		}
	}
	var table strings.Builder
	if err := printStatus(&table, r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"IPv6: host fd00:172:16:254::1  block6 fd00:10:244::/64", "BLOCK6", "IPV6 PATH",
		"direct: fd00:172:16:254::2 is on em1's network", "vxlan: " + node.ErrNoIPv6Underlay.Error()} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}

	// IPv4 only: nothing of the above.
	r4 := ipv6Status(buildStatus(v, kept, nil, nil, res, true, ""), v, res, testOpts)
	table.Reset()
	if err := printStatus(&table, r4); err != nil {
		t.Fatal(err)
	}
	body, _ = json.Marshal(r4)
	if strings.Contains(string(body), "6\"") || strings.Contains(table.String(), "IPv6") || strings.Contains(table.String(), "BLOCK6") {
		t.Errorf("IPv4-only status shows IPv6:\n%s\n%s", body, table.String())
	}
}

// The direct IPv6 route follows the IPv4 route's rule on its own data path:
// kept on gossip, and once gossip is gone only while the peer's IPv6 host
// address answers; its IPv6 host address is probed on a host with one.
func TestIPv6KeepRule(t *testing.T) {
	h2 := member("h2", "alive", "172.16.254.2", "10.244.2.0/23")
	h2.HostIP6 = netip.MustParseAddr("fd00:172:16:254::2")
	v := mesh.View{Self: "h1", Block: netip.MustParsePrefix("10.244.0.0/23"), Ready: true, Members: []mesh.Member{h2}}
	o := testOpts
	o.Pool6, o.BlockSize6 = netip.MustParsePrefix("fd00:10:244::/48"), 64
	o.HostIP6 = netip.MustParseAddr("fd00:172:16:254::1")
	host4, host6 := h2.HostIP, h2.HostIP6
	block6 := netip.MustParsePrefix("fd00:10:244:1::/64")

	if got := probeTargets6(v, nil, o); len(got) != 1 || got[0] != host6 {
		t.Errorf("probeTargets6 = %v, want [%s]", got, host6)
	}
	if got := probeTargets6(v, nil, testOpts); len(got) != 0 {
		t.Errorf("an IPv4-only host probes %v", got)
	}
	noHost6 := o
	noHost6.HostIP6 = netip.Addr{}
	if got := probeTargets6(v, nil, noHost6); len(got) != 0 {
		t.Errorf("a host without an IPv6 address probes %v", got)
	}

	up := func(hosts ...netip.Addr) map[netip.Addr]probe.Verdict {
		m := map[netip.Addr]probe.Verdict{}
		for _, h := range hosts {
			m[h] = probe.Verdict{Up: true}
		}
		return m
	}
	kept := keptRoutes(v, nil, up(host4), nil)
	if d := desiredState(v, kept, o); len(d.Peers6) != 1 || d.Peers6[0].Via != host6 || d.Peers6[0].Block != block6 {
		t.Fatalf("alive on gossip, IPv6 not answering: IPv6 peers %v, want %s via %s", d.Peers6, block6, host6)
	}
	dead := v
	dead.Members = []mesh.Member{member("h2", "dead", "172.16.254.2", "10.244.2.0/23")}
	for _, tt := range []struct {
		name   string
		paths  map[netip.Addr]probe.Verdict
		want6  bool
		reason string
	}{
		{"both answer", up(host4, host6), true, "kept by both data paths"},
		{"IPv6 silent", up(host4), false, "IPv6 host address does not answer"},
	} {
		k := keptRoutes(dead, kept, tt.paths, nil)
		if _, ok := k[memberKey(h2)]; !ok {
			t.Fatalf("%s: IPv4 route withdrawn while its host answers", tt.name)
		}
		d := desiredState(dead, k, o)
		if got := len(d.Peers6) == 1 && d.Peers6[0].Via == host6; got != tt.want6 {
			t.Errorf("%s (%s): IPv6 peers %v, want routed %v", tt.name, tt.reason, d.Peers6, tt.want6)
		}
		if got := probeTargets6(dead, k, o); len(got) != 1 || got[0] != host6 {
			t.Errorf("%s: the kept route's IPv6 host is not probed: %v", tt.name, got)
		}
	}
}
