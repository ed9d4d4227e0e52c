package nodestate

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/internal/hostclock"
)

func TestWriteReadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	want := State{
		Node:   "host1",
		Block:  netip.MustParsePrefix("172.20.24.0/23"),
		Pool:   netip.MustParsePrefix("172.20.0.0/16"),
		HostIP: netip.MustParseAddr("172.16.254.113"),
		MTU:    1500,
		// The agent enforces network policy.
		PolicySocket: "/run/grapevine/policy.sock",
	}
	if err := Write(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("Read = %+v, want %+v", got, want)
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, ".*tmp*"))
	if len(leftovers) != 0 {
		t.Fatalf("temporary files left behind: %v", leftovers)
	}
}

// An IPv4-only node.json, as agents before IPv6 wrote it, reads as before,
// and one written without an IPv6 block carries no IPv6 keys.
func TestIPv4OnlyStateKeepsItsFormat(t *testing.T) {
	dir := t.TempDir()
	old := `{"node":"a","block":"10.244.2.0/23","pool":"10.244.0.0/16","hostIP":"10.0.0.1","mtu":1500}`
	if err := os.WriteFile(Path(dir), []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := Read(dir)
	if err != nil || st.Block6.IsValid() || st.Pool6.IsValid() {
		t.Fatalf("Read of an IPv4-only node.json = %+v, %v", st, err)
	}
	if err := Write(dir, st); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(Path(dir))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "block6") || strings.Contains(string(data), "pool6") || strings.Contains(string(data), "policySocket") {
		t.Errorf("IPv4-only node.json without policy written with IPv6 or policy keys:\n%s", data)
	}
	st.Block6, st.Pool6 = netip.MustParsePrefix("fd00:10:244:2::/64"), netip.MustParsePrefix("fd00:10:244::/48")
	if err := Write(dir, st); err != nil {
		t.Fatal(err)
	}
	if got, err := Read(dir); err != nil || got != st {
		t.Errorf("dual-stack round trip = %+v, %v; want %+v", got, err, st)
	}
}

func TestReadMissingIsNotReady(t *testing.T) {
	_, err := Read(t.TempDir())
	if !errors.Is(err, ErrNotReady) {
		t.Fatalf("Read on empty dir: err = %v, want ErrNotReady", err)
	}
}

func TestReadRejectsBadState(t *testing.T) {
	cases := map[string]string{
		"no block":          `{"node":"a","pool":"10.244.0.0/16","hostIP":"10.0.0.1","mtu":1500}`,
		"outside pool":      `{"node":"a","block":"10.245.0.0/23","pool":"10.244.0.0/16","hostIP":"10.0.0.1"}`,
		"not masked":        `{"node":"a","block":"10.244.1.0/23","pool":"10.244.0.0/16","hostIP":"10.0.0.1"}`,
		"bad mtu":           `{"node":"a","block":"10.244.2.0/23","pool":"10.244.0.0/16","hostIP":"10.0.0.1","mtu":70000}`,
		"garbage":           `{"node":`,
		"wrong type":        `{"node":"a","block":42}`,
		"bigger than it":    `{"node":"a","block":"10.0.0.0/8","pool":"10.244.0.0/16"}`,
		"block6 alone":      `{"node":"a","block":"10.244.2.0/23","pool":"10.244.0.0/16","block6":"fd00:10:244:2::/64"}`,
		"pool6 alone":       `{"node":"a","block":"10.244.2.0/23","pool":"10.244.0.0/16","pool6":"fd00:10:244::/48"}`,
		"block6 outside":    `{"node":"a","block":"10.244.2.0/23","pool":"10.244.0.0/16","block6":"fd00:99::/64","pool6":"fd00:10:244::/48"}`,
		"block6 is IPv4":    `{"node":"a","block":"10.244.2.0/23","pool":"10.244.0.0/16","block6":"10.244.2.0/24","pool6":"10.244.0.0/16"}`,
		"block6 too long":   `{"node":"a","block":"10.244.2.0/23","pool":"10.244.0.0/16","block6":"fd00:10:244::/124","pool6":"fd00:10:244::/48"}`,
		"block6 not masked": `{"node":"a","block":"10.244.2.0/23","pool":"10.244.0.0/16","block6":"fd00:10:244::1/64","pool6":"fd00:10:244::/48"}`,
		"relative socket":   `{"node":"a","block":"10.244.2.0/23","pool":"10.244.0.0/16","policySocket":"policy.sock"}`,
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(Path(dir), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := Read(dir); err == nil {
				t.Fatalf("Read accepted %s", body)
			}
		})
	}
}

func TestRemoveIsIdempotent(t *testing.T) {
	dir := t.TempDir()
	if err := Remove(dir); err != nil {
		t.Fatal(err)
	}
}

func TestCheckMTU(t *testing.T) {
	for mtu, ok := range map[int]bool{0: true, 575: false, 576: true, 1500: true, 9000: true, 65535: true, 65536: false, -1: false} {
		if err := CheckMTU(mtu); (err == nil) != ok {
			t.Errorf("CheckMTU(%d) = %v, want ok=%v", mtu, err, ok)
		}
	}
}

func TestLeaseError(t *testing.T) {
	now := hostclock.Instant{Boot: "b1", Since: 10 * time.Hour}
	renewed := time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)
	leased := func(left time.Duration) State {
		return State{Block: netip.MustParsePrefix("10.244.2.0/23"), Lease: NewLease(now.Add(left-24*time.Hour), renewed, 24*time.Hour)}
	}
	otherBoot := leased(time.Hour)
	otherBoot.Lease.Ends.Boot = "b0"
	for _, tc := range []struct {
		name string
		st   State
		want string // "" : the lease holds
	}{
		{"an hour left", leased(time.Hour), ""},
		{"a nanosecond left", leased(1), ""},
		{"ends now", leased(0), "it ended at 2026-12-08T03:00:00Z"},
		{"ended an hour ago", leased(-time.Hour), "has not renewed its lease on block 10.244.2.0/23 since 2026-12-07T03:00:00Z"},
		{"granted in another boot", otherBoot, "before this host last booted"},
		{"no lease", State{Block: netip.MustParsePrefix("10.244.2.0/23")}, "holds no lease"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.st.LeaseError(now)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("LeaseError = %v, want the lease to hold", err)
			case tc.want != "" && (!errors.Is(err, ErrLeaseEnded) || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("LeaseError = %v, want ErrLeaseEnded saying %q", err, tc.want)
			}
		})
	}
}
