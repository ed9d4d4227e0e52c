package status

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/report.json from the test's report")

// full is a report with every field set, so that each JSON name shows.
func full() Report {
	at := time.Date(2026, 12, 7, 14, 0, 0, 0, time.UTC)
	return Report{
		Node: "h1", NodeID: "0f3c", HostIP: "172.16.254.1", Block: "10.244.0.0/23", Ready: false,
		Block6: "fd00:10:244::/64", HostIP6: "fd00:172:16:254::1",
		Reason: "reconcile: injected", Degraded: "restart pods",
		LeaseRenewed: at, LeaseEnds: at.Add(time.Hour),
		PendingReleases:  []string{"h9: 10.244.18.0/23 free at 2026-12-07T15:00:00Z"},
		ForwardAccept:    []string{"iptables-nft filter FORWARD policy DROP: the pool is accepted by the agent's rules (written over nftables netlink)"},
		ForwardUnhandled: []string{"iptables-legacy filter FORWARD not handled: no binary"},
		ForwardError:     "forward: list nftables chains: permission denied",
		Encapsulation:    "cross-subnet",
		Settings:         &Settings{Iface: "em1", Pool: "10.244.0.0/16", Masquerade: true, GossipPort: 7962, LedgerPort: 7963, PodMTU: 1450},
		Ledger:           Ledger{ClusterID: "c1", Role: "leader", Leader: "h1", Voters: []string{"h1", "h2"}, LastIndex: 42, Foreign: []string{"x1 (cluster c2)"}},
		NetworkPolicy: NetworkPolicy{Enabled: true, Socket: "/run/grapevine/policy.sock", Unreachable: "dial unix /run/grapevine/policy.sock: connection refused", Synced: true, Policies: 3, Pods: 5, LastSync: at, LastSyncAgeSeconds: 1.5,
			Error: "network policy: write table inet grapevine-policy: invalid argument"},
		NameConflicts: []NameConflict{{Name: "h7", Nodes: []NameClaimant{{ID: "aa", HostIP: "172.16.254.7", Holder: true, Self: true}}}},
		Members: []Member{{
			Name: "h2", ID: "bb", Addr: "172.16.254.2", HostIP: "172.16.254.2", Block: "10.244.2.0/23", State: "alive",
			ClusterID: "c1", Foreign: true, Route: "programmed", Path: "vxlan", PathReason: "always",
			Block6: "fd00:10:244:1::/64", HostIP6: "fd00:172:16:254::2", Path6: "direct", Path6Reason: "fd00:172:16:254::2 is on em1's network fd00:172:16:254::/64",
			KeptBy: []string{"gossip", "data path"}, RouteReason: "left; kept by data path",
			GossipSeen: at, DataPath: "up", DataPathSeen: at,
			DataPathHealth: &PathHealth{Requests: 60, Lost: 3, Loss: 0.05, RTTp50ms: 0.1, RTTp99ms: 0.4},
		}},
	}
}

// TestReportWireNames: the report's JSON is testdata/report.json, name for
// name (scripts read `grapevine status -o json`; renaming a field breaks
// them), and that file reads back into the same report. Run with -update
// after adding a field on purpose.
func TestReportWireNames(t *testing.T) {
	golden := filepath.Join("testdata", "report.json")
	got, err := json.MarshalIndent(full(), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf("the report's JSON differs from %s:\n%s", golden, got)
	}
	var back Report
	if err := json.Unmarshal(want, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, full()) {
		t.Errorf("%s reads back as\n%+v\nwant\n%+v", golden, back, full())
	}
}

func TestMemberRouted(t *testing.T) {
	for _, c := range []struct {
		m    Member
		want bool
	}{
		{Member{Block: "10.244.2.0/23", Route: "programmed"}, true},
		{Member{Block: "10.244.2.0/23", Route: "pending"}, true},
		{Member{Block: "10.244.2.0/23", Route: "error: next hop not on link"}, true},
		{Member{Block: "10.244.2.0/23", Route: RouteWithdrawn}, false},
		{Member{Route: RouteNone}, false},
		{Member{Block: "10.244.2.0/23", Route: "programmed", Foreign: true}, false},
	} {
		if got := c.m.Routed(); got != c.want {
			t.Errorf("%+v: Routed() = %v, want %v", c.m, got, c.want)
		}
	}
}
