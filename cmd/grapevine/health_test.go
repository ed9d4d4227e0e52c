package main

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/node/probe"
	"github.com/grapevine-net/grapevine/status"
)

func TestHealthColumn(t *testing.T) {
	host := netip.MustParseAddr("172.16.254.2")
	tests := []struct {
		name   string
		health map[netip.Addr]probe.Health
		want   string
	}{
		{"not probed", nil, "-"},
		{"probed, nothing resolved yet", map[netip.Addr]probe.Health{host: {}}, "-"},
		{"healthy", map[netip.Addr]probe.Health{host: {Requests: 60, RTTp50: 80 * time.Microsecond, RTTp99: 310 * time.Microsecond}}, "0.08/0.31ms 0%"},
		{"some loss", map[netip.Addr]probe.Health{host: {Requests: 40, Lost: 10, Loss: 0.25, RTTp50: time.Millisecond, RTTp99: 12500 * time.Microsecond}}, "1/12.5ms 25%"},
		{"nothing answered", map[netip.Addr]probe.Health{host: {Requests: 8, Lost: 8, Loss: 1}}, "-/- 100%"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := healthColumn(healthOf(tt.health, host)); got != tt.want {
				t.Fatalf("column %q, want %q", got, tt.want)
			}
		})
	}
}

func TestStatusHealthJSON(t *testing.T) {
	host := netip.MustParseAddr("172.16.254.2")
	m := status.Member{Name: "h2", HostIP: host.String(), State: "alive", Route: "programmed",
		DataPathHealth: healthOf(map[netip.Addr]probe.Health{host: {Requests: 4, Lost: 1, Loss: 0.25, RTTp50: 2 * time.Millisecond, RTTp99: 5 * time.Millisecond}}, host)}
	js, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	want := `"dataPathHealth":{"requests":4,"lost":1,"loss":0.25,"rttP50ms":2,"rttP99ms":5}`
	if !strings.Contains(string(js), want) {
		t.Fatalf("JSON %s lacks %s", js, want)
	}
	var table strings.Builder
	if err := printStatus(&table, status.Report{Node: "h1", Members: []status.Member{m}}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "RTT P50/P99, LOSS (1m)") || !strings.Contains(table.String(), "2/5ms 25%") {
		t.Fatalf("table lacks the health column:\n%s", table.String())
	}
}
