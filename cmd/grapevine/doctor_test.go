package main

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/doctor"
	"github.com/grapevine-net/grapevine/status"
)

func TestPrintFindings(t *testing.T) {
	fs := []doctor.Finding{
		{Check: doctor.CheckIPForward, Severity: doctor.OK, Seen: "net.ipv4.ip_forward = 1"},
		{Check: doctor.CheckProxyARP, Severity: doctor.Fail, Subject: "gv1234", Seen: "proxy_arp = 0", Cause: "turned off", Fix: "sysctl -w"},
		{Check: doctor.CheckPeerDataPath, Severity: doctor.Warn, Subject: "h2", Seen: "loss 5%", Cause: "a lossy link", Fix: "check the link"},
	}
	tests := []struct {
		name         string
		verbose      bool
		want, absent []string
	}{
		{"failures and warnings only", false,
			[]string{"FAIL  pod-proxy-arp gv1234: proxy_arp = 0\n      cause: turned off\n      fix:   sysctl -w\n", "WARN  peer-data-path h2: loss 5%", "1 passed, 1 warnings, 1 failed"},
			[]string{"ip_forward"}},
		{"verbose lists passed checks", true,
			[]string{"OK    ip-forward: net.ipv4.ip_forward = 1\n", "FAIL  pod-proxy-arp gv1234"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			if err := printFindings(&out, fs, tt.verbose); err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			for _, a := range tt.absent {
				if strings.Contains(out.String(), a) {
					t.Errorf("output has %q:\n%s", a, out.String())
				}
			}
		})
	}
	err := failedChecks(fs)
	if err == nil || err.Error() != "1 check(s) failed: pod-proxy-arp" {
		t.Fatalf("failedChecks = %v", err)
	}
	if err := failedChecks(fs[:1]); err != nil {
		t.Fatalf("failedChecks of passed checks = %v", err)
	}
}

// TestDoctorReadsStatus: the status the agent serves (JSON on the status
// socket) reads back, as runDoctor reads it, into the very report, field
// for field: nothing doctor's checks read is lost to omitempty or a type
// that does not survive JSON. (status's TestReportWireNames pins the
// names scripts read.)
func TestDoctorReadsStatus(t *testing.T) {
	r := status.Report{
		Node: "h1", HostIP: "172.16.254.1", Block: "10.244.0.0/23", Ready: true, Degraded: "restart pods",
		LeaseEnds: time.Date(2026, 12, 7, 15, 0, 0, 0, time.UTC), Encapsulation: "always",
		ForwardAccept: []string{"iptables-nft filter FORWARD policy DROP: the pool is accepted by the agent's rules (written over nftables netlink)"},
		Settings:      &status.Settings{Iface: "em1", Pool: "10.244.0.0/16", Masquerade: true, GossipPort: 7962, LedgerPort: 7963, PodMTU: 1450},
		Members: []status.Member{{
			Name: "h2", Addr: "172.16.254.2", HostIP: "172.16.254.2", Block: "10.244.2.0/23", State: "alive", Route: "programmed",
			Path: "vxlan", PathReason: "always", DataPath: "up", DataPathSeen: time.Date(2026, 12, 7, 14, 0, 0, 0, time.UTC),
			DataPathHealth: &status.PathHealth{Requests: 60, Lost: 3, Loss: 0.05, RTTp50ms: 0.1, RTTp99ms: 0.4},
		}, {Name: "x1", State: "alive", Foreign: true, Route: status.RouteNone}},
	}
	js, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var st status.Report
	if err := json.Unmarshal(js, &st); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(st, r) {
		t.Fatalf("doctor read\n%+v\nfrom %s, want\n%+v", st, js, r)
	}
}

// TestPrintSummaries: doctor --all's table has a line per host with its
// counts and one per warning or failure; a host that gave no findings
// says why.
func TestPrintSummaries(t *testing.T) {
	var b strings.Builder
	err := printSummaries(&b, []doctor.Summary{
		{Host: "h1", Passed: 20},
		{Host: "h2", Passed: 18, Failed: 1, Warnings: 1, Findings: []doctor.Finding{
			{Check: doctor.CheckIPForward, Severity: doctor.Fail, Seen: "net.ipv4.ip_forward = 0"},
			{Check: doctor.CheckClock, Severity: doctor.Warn, Subject: "h1", Seen: "h1's clock is 2s ahead of this host's (±0s)"},
		}},
		{Host: "h3", Err: "mesh: report of 172.16.254.3:7963: no report"},
	})
	if err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"HOST  RESULT",
		"h1    20 passed, 0 warnings, 0 failed",
		"h2    18 passed, 1 warnings, 1 failed",
		"FAIL                             ip-forward    -        net.ipv4.ip_forward = 0",
		"h3    NOT CHECKED                                             mesh: report of 172.16.254.3:7963: no report",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
