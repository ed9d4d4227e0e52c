package main

import (
	"strings"
	"testing"

	"github.com/grapevine-net/grapevine/doctor"
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
