package main

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/node"
	"github.com/grapevine-net/grapevine/status"
)

// On a dual-stack node the status shows this node's IPv6 block and host
// address, and per member its IPv6 block and IPv6 path with the reason;
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
		"h3": {Block6: "fd00:10:244:2::/64", Path6: "none", Path6Reason: node.ErrNoIPv6Underlay.Error()},
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
	for _, field := range []string{`"block6":"fd00:10:244::/64"`, `"path6":"direct"`, `"path6Reason":"` + node.ErrNoIPv6Underlay.Error()} {
		if !strings.Contains(string(body), field) {
			t.Errorf("JSON lacks %s: %s", field, body)
		}
	}
	var table strings.Builder
	if err := printStatus(&table, r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"IPv6: host fd00:172:16:254::1  block6 fd00:10:244::/64", "BLOCK6", "IPV6 PATH",
		"direct: fd00:172:16:254::2 is on em1's network", "none: " + node.ErrNoIPv6Underlay.Error()} {
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
