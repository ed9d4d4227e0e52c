package ledger

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestDecodeRequest(t *testing.T) {
	good := []rpcRequest{
		{Op: "join", Join: &joinRequest{ID: idA, Name: "a", Addr: netip.MustParseAddrPort("192.0.2.1:7963"), Pool: testPool, BlockBits: 24}},
		{Op: "join", Forwarded: true, Join: &joinRequest{ID: idA, Name: "a", Addr: netip.MustParseAddrPort("[2001:db8::1]:7963"), ClusterID: cluster1, Pool: pfx("fd00::/48"), BlockBits: 64}},
		{Op: "claim", Claim: &Claim{ID: idA, Name: "a", HostIP: ipA, Hint: pfx("10.244.1.0/24")}},
		{Op: "claim", Claim: &Claim{ID: idA, Name: "a", HostIP: ipA}},
		{Op: "release", Release: &releaseRequest{Name: "a"}},
		{Op: "report", Report: &reportRequest{}},
	}
	for _, r := range good {
		b, err := encodeRequest(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := decodeRequest(b); err != nil {
			t.Errorf("decode %s: %v", b, err)
		}
	}
	bad := []string{
		``, `[]`, `{"v":1}`, `{"v":1,"op":"claim"}`, `{"v":2,"op":"release","release":{"name":"a"}}`,
		`{"v":1,"op":"release","release":{"name":"a"},"claim":{}}`, `{"v":1,"op":"join","release":{"name":"a"}}`,
		`{"v":1,"op":"release","release":{"name":""}}`, `{"v":1,"op":"release","release":{"name":"a","x":1}}`,
		`{"v":1,"op":"release","release":{"name":"` + strings.Repeat("a", 300) + `"}}`,
		`{"v":1,"op":"join","join":{"id":"01000000000000000000000000000000","name":"a","addr":"192.0.2.1:0","cluster":"0000000000000000","pool":"10.244.0.0/22","bits":24}}`,
		`{"v":1,"op":"join","join":{"id":"01000000000000000000000000000000","name":"a","addr":"192.0.2.1:7963","cluster":"0000000000000000","pool":"10.244.0.0/22","bits":40}}`,
		`{"v":1,"op":"claim","claim":{"ID":"01000000000000000000000000000000","Name":"a","HostIP":"","Hint":""}}`,
		`{"v":1,"op":"claim","claim":{"ID":"01000000000000000000000000000000","Name":"a","HostIP":"fe80::1%eth0","Hint":""}}`,
		`{"v":1,"op":"release","release":{"name":"a"}} trailing`,
		`{"v":1,"op":"report","fwd":true,"report":{}}`, `{"v":1,"op":"report","report":{"x":1}}`,
		`{"v":1,"op":"report"}`, `{"v":1,"op":"report","report":{},"release":{"name":"a"}}`,
	}
	for _, in := range bad {
		if _, err := decodeRequest([]byte(in)); !errors.Is(err, ErrBadRequest) {
			t.Errorf("decode %q: %v, want ErrBadRequest", in, err)
		}
	}
	if _, err := decodeRequest(make([]byte, maxFrame+1)); !errors.Is(err, ErrBadRequest) {
		t.Error("oversized request accepted")
	}
}

// FuzzDecodeRequest: whatever a peer sends, decoding returns a validated
// request or an error, never a panic; what it accepts re-encodes to
// something it accepts again.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"v":1,"op":"release","release":{"name":"a"}}`,
		`{"v":1,"op":"claim","claim":{"ID":"01000000000000000000000000000000","Name":"a","HostIP":"192.0.2.1","Hint":"10.244.1.0/24"}}`,
		`{"v":1,"op":"join","fwd":true,"join":{"id":"01000000000000000000000000000000","name":"a","addr":"192.0.2.1:7963","cluster":"0900000000000000","pool":"10.244.0.0/22","bits":24}}`,
		`{"v":1,"op":"claim","claim":{}}`, `{`, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRequest(b)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error without kind: %v", err)
			}
			return
		}
		again, err := encodeRequest(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := decodeRequest(again); err != nil {
			t.Fatalf("accepted %q, but not its re-encoding %q: %v", b, again, err)
		}
	})
}

// FuzzDecodeCommand: the state machine's decoder, likewise.
func FuzzDecodeCommand(f *testing.F) {
	for _, c := range []Command{
		Found{ClusterID: cluster1, Pool: testPool, BlockBits: 24},
		Claim{ID: idA, Name: "a", HostIP: ipA, Hint: pfx("10.244.1.0/24")},
		Release{Block: pfx("10.244.1.0/24"), OwnerID: idA},
		Reclaim{Block: pfx("10.244.1.0/24"), OwnerID: idA, OwnerIndex: 3},
	} {
		b, _ := encodeCommand(c)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeCommand(b)
		if err != nil {
			return
		}
		s := foundedState()
		s.Apply(2, c) // must not panic, whatever the command holds
		checkInvariants(t, &s)
	})
}

// TestReport: a member asks another for its report over the ledger's
// connection and gets exactly what Config.Report made; a node without
// Report refuses with ErrNoReport.
func TestReport(t *testing.T) {
	report := `{"findings":[{"check":"ip-forward","severity":"fail"}]}`
	_, nodes := startCluster(t, func(cfg *Config) {
		cfg.Report = func(context.Context) ([]byte, error) { return []byte(report), nil }
	}, "a", "b")
	got, err := nodes[1].l.Report(t.Context(), nodes[0].addr)
	if err != nil || string(got) != report {
		t.Errorf("b asks a: %s, %v; want %s", got, err, report)
	}
}

func TestReportRefusedWithoutReport(t *testing.T) {
	_, nodes := startCluster(t, nil, "a", "b")
	if _, err := nodes[1].l.Report(t.Context(), nodes[0].addr); !errors.Is(err, ErrNoReport) {
		t.Errorf("report of a node without Config.Report: %v, want ErrNoReport", err)
	}
}
