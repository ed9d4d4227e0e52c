package mesh

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"
	"time"
)

func testRecord() Record {
	return Record{
		Node:   "node-a",
		Block:  netip.MustParsePrefix("10.244.24.0/23"),
		HostIP: netip.MustParseAddr("172.16.254.113"),
		Since:  time.UnixMilli(1_700_000_000_000),
		Gen:    4,
	}
}

// join merges records of one node the way the table does.
func join(recs ...Record) Record {
	var out Record
	for i, r := range recs {
		if i == 0 || r.newer(out) {
			out = r
		}
	}
	return out
}

func TestRecordMergeIsAJoin(t *testing.T) {
	base := testRecord()
	variants := []Record{base}
	for _, f := range []func(*Record){
		func(r *Record) { r.Gen++ },
		func(r *Record) { r.Released = true },
		func(r *Record) { r.DeadAt = time.UnixMilli(1_700_000_100_000) },
		func(r *Record) { r.DeadAt = time.UnixMilli(1_700_000_200_000) },
		func(r *Record) { r.Since = time.UnixMilli(1_700_000_000_500) },
		func(r *Record) { r.Block = netip.MustParsePrefix("10.244.26.0/23") },
		func(r *Record) { r.HostIP = netip.MustParseAddr("172.16.254.114") },
		func(r *Record) { r.Gen += 2; r.Released = true },
	} {
		r := base
		f(&r)
		variants = append(variants, r)
	}
	want := join(variants...)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		perm := append([]Record(nil), variants...)
		rng.Shuffle(len(perm), func(i, j int) { perm[i], perm[j] = perm[j], perm[i] })
		// Repeat some records: merging is idempotent.
		perm = append(perm, perm[:rng.IntN(len(perm))]...)
		// Merge in two halves and then together: associativity.
		cut := rng.IntN(len(perm))
		if got := join(join(perm[:cut]...), join(perm[cut:]...)); cut > 0 && cut < len(perm) && !reflect.DeepEqual(got, want) {
			t.Fatalf("grouped merge gave %+v, want %+v", got, want)
		}
		if got := join(perm...); !reflect.DeepEqual(got, want) {
			t.Fatalf("merge order changed the result: %+v, want %+v", got, want)
		}
	}
	if want.Gen != base.Gen+2 || !want.Released {
		t.Fatalf("the highest generation must win, got %+v", want)
	}
}

func TestMessageRoundTrip(t *testing.T) {
	r := testRecord()
	dead := r
	dead.Node, dead.DeadAt, dead.Released = "node-b", time.UnixMilli(1_700_000_500_000), true
	for name, tc := range map[string]struct {
		b    []byte
		want message
	}{
		"records":    {encodeRecords([]Record{r, dead}), message{Records: []Record{r, dead}}},
		"no records": {encodeRecords(nil), message{Records: []Record{}}},
		"request": {
			voteRequest{ID: 9, Claimant: "node-a", From: netip.MustParseAddrPort("172.16.254.113:7962"), Block: r.Block, Electorate: []string{"node-a", "node-b"}}.encode(),
			message{Request: &voteRequest{ID: 9, Claimant: "node-a", From: netip.MustParseAddrPort("172.16.254.113:7962"), Block: r.Block, Electorate: []string{"node-a", "node-b"}}},
		},
		"response": {
			voteResponse{ID: 9, Voter: "node-b", Missing: []peerAddr{{"node-c", netip.MustParseAddrPort("172.16.254.115:7962")}, {"node-d", netip.AddrPort{}}}}.encode(),
			message{Response: &voteResponse{ID: 9, Voter: "node-b", Missing: []peerAddr{{"node-c", netip.MustParseAddrPort("172.16.254.115:7962")}, {"node-d", netip.AddrPort{}}}}},
		},
		"abort": {voteAbort{ID: 9, Claimant: "node-a", Block: r.Block}.encode(), message{Abort: &voteAbort{ID: 9, Claimant: "node-a", Block: r.Block}}},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := decodeMessage(tc.b)
			if err != nil {
				t.Fatal(err)
			}
			if got.Request != nil && got.Request.Electorate == nil {
				got.Request.Electorate = []string{}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestDecodeMessageRejects(t *testing.T) {
	rec := encodeRecords([]Record{testRecord()})
	hugeCount := []byte{wireVersion, byte(msgRecords), 0xff, 0xff}
	for _, tc := range []struct {
		name, reason string
		b            []byte
	}{
		{"empty", "truncated", nil},
		{"version", "version", []byte{9, 1, 0, 0}},
		{"type", "type", []byte{wireVersion, 99}},
		{"truncated record", "truncated", rec[:len(rec)-1]},
		{"trailing bytes", "trailing", append(bytes.Clone(rec), 0)},
		{"huge count", "count", hugeCount},
		{"empty name", "name", append([]byte{wireVersion, byte(msgRecords), 0, 1, 0}, make([]byte, minRecordLen)...)},
		{"control character in name", "name", bytes.Replace(bytes.Clone(rec), []byte("node-a"), []byte("node\na"), 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeMessage(tc.b)
			var re *RejectError
			if !errors.As(err, &re) || re.Reason != tc.reason {
				t.Fatalf("got %v, want reason %q", err, tc.reason)
			}
		})
	}
}

func TestCheckRecord(t *testing.T) {
	from := testRecord().HostIP
	for _, tc := range []struct {
		name, reason string
		edit         func(*Record)
	}{
		{"outside pool", "block_outside_pool", func(r *Record) { r.Block = netip.MustParsePrefix("192.168.0.0/23") }},
		{"wrong size", "block_size", func(r *Record) { r.Block = netip.MustParsePrefix("10.244.24.0/24") }},
		{"unmasked", "block_unmasked", func(r *Record) { r.Block = netip.MustParsePrefix("10.244.25.0/23") }},
		{"foreign host IP", "foreign_host_ip", func(r *Record) { r.HostIP = netip.MustParseAddr("172.16.254.200") }},
		{"loopback host IP", "host_ip", func(r *Record) { r.HostIP = netip.MustParseAddr("127.0.0.1") }},
		{"no claim time", "since", func(r *Record) { r.Since = time.Time{} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := testRecord()
			tc.edit(&r)
			err := testRules.checkRecord(r, from)
			if got := rejectReason(err); got != tc.reason {
				t.Fatalf("got %v (reason %q), want reason %q", err, got, tc.reason)
			}
		})
	}
	if err := testRules.checkRecord(testRecord(), from); err != nil {
		t.Fatalf("valid record rejected: %v", err)
	}
}

// FuzzDecodeMessage feeds arbitrary bytes to the gossip message decoder: no
// panic, a reason for every rejection, and every accepted message encodes
// back to the same bytes.
func FuzzDecodeMessage(f *testing.F) {
	r := testRecord()
	f.Add(encodeRecords([]Record{r}))
	f.Add(voteRequest{ID: 1, Claimant: "a", From: netip.MustParseAddrPort("10.0.0.1:7962"), Block: r.Block, Electorate: []string{"a", "b"}}.encode())
	f.Add(voteResponse{ID: 1, Voter: "b", Missing: []peerAddr{{"c", netip.AddrPort{}}}}.encode())
	f.Add(voteAbort{ID: 1, Claimant: "a", Block: r.Block}.encode())
	f.Add([]byte{wireVersion, byte(msgRecords), 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		msg, err := decodeMessage(b)
		if err != nil {
			if rejectReason(err) == "other" {
				t.Fatalf("error without a reason: %v", err)
			}
			return
		}
		var again []byte
		switch {
		case msg.Records != nil:
			again = encodeRecords(msg.Records)
			for _, rec := range msg.Records {
				_ = testRules.checkRecord(rec, netip.Addr{}) // must not panic
			}
		case msg.Request != nil:
			again = msg.Request.encode()
		case msg.Response != nil:
			again = msg.Response.encode()
		case msg.Abort != nil:
			again = msg.Abort.encode()
		default:
			t.Fatal("accepted a message with no content")
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", again, b)
		}
	})
}

// TestMergeKeepsFirstDeath: a node that learns of a death late must not push
// the owner's ReclaimAfter out; a recorded death beats none; a new claim
// (higher generation) clears the death.
func TestMergeKeepsFirstDeath(t *testing.T) {
	base := Record{Node: "c", Block: netip.MustParsePrefix("10.244.2.0/23"), HostIP: netip.MustParseAddr("10.1.0.3"),
		Since: time.UnixMilli(1_700_000_000_000), Gen: 4}
	first, late := base, base
	first.DeadAt = time.UnixMilli(1_700_000_100_000)
	late.DeadAt = time.UnixMilli(1_700_003_700_000)
	back := base
	back.Gen = 5

	for _, tt := range []struct {
		name      string
		have, got Record
		want      Record
	}{
		{"late observation arrives second", first, late, first},
		{"late observation arrives first", late, first, first},
		{"a death beats none", base, late, late},
		{"none does not erase a death", first, base, first},
		{"a new generation clears the death", first, back, back},
	} {
		table := map[string]Record{"c": tt.have}
		m := &Mesh{table: table, promises: map[netip.Prefix]promise{}}
		m.mergeLocked(tt.got)
		if got := m.table["c"]; !got.DeadAt.Equal(tt.want.DeadAt) || got.Gen != tt.want.Gen {
			t.Errorf("%s: merged record has DeadAt %v Gen %d, want %v Gen %d", tt.name, got.DeadAt, got.Gen, tt.want.DeadAt, tt.want.Gen)
		}
	}
}
