package mesh

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
)

func rejected(t *testing.T, reg *prometheus.Registry, name, reason string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestHostileRecordsAreRejected feeds the message handler what a hostile or
// broken peer could send: nothing of it may enter the table or a View, and
// every rejection is counted by reason.
func TestHostileRecordsAreRejected(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := New(Config{NodeName: "self", AdvertiseAddr: netip.MustParseAddr("10.0.0.1"), StateDir: t.TempDir(), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	// A live peer at 10.0.0.5 advertising a valid claim.
	peerMeta := Meta{HostIP: netip.MustParseAddr("10.0.0.5"), Pool: m.cfg.Pool, BlockBits: m.cfg.BlockBits,
		Block: netip.MustParsePrefix("10.244.8.0/23"), Since: time.UnixMilli(1_700_000_000_000), Gen: 2}
	raw, err := peerMeta.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	m.observe(&memberlist.Node{Name: "peer", Addr: net.IPv4(10, 0, 0, 5), Port: 7962, Meta: raw})

	good := Record{Node: "intruder", Block: netip.MustParsePrefix("10.244.40.0/23"), HostIP: netip.MustParseAddr("10.0.0.9"), Since: time.UnixMilli(1_700_000_000_000), Gen: 1}
	with := func(f func(*Record)) []byte {
		r := good
		f(&r)
		return encodeRecords([]Record{r})
	}
	hugeCount := binary.BigEndian.AppendUint16([]byte{wireVersion, byte(msgRecords)}, 0xffff)
	for _, tc := range []struct {
		name, metric, reason string
		msg                  []byte
	}{
		{"block outside the pool", "grapevine_mesh_rejected_records_total", "block_outside_pool", with(func(r *Record) { r.Block = netip.MustParsePrefix("192.168.0.0/23") })},
		{"block of the wrong size", "grapevine_mesh_rejected_records_total", "block_size", with(func(r *Record) { r.Block = netip.MustParsePrefix("10.244.40.0/24") })},
		{"loopback host IP", "grapevine_mesh_rejected_records_total", "host_ip", with(func(r *Record) { r.HostIP = netip.MustParseAddr("127.0.0.1") })},
		{"live peer's claim with a foreign host IP", "grapevine_mesh_rejected_records_total", "foreign_host_ip", with(func(r *Record) {
			r.Node, r.Gen, r.HostIP = "peer", 3, netip.MustParseAddr("10.0.0.99")
		})},
		{"absurd record count", "grapevine_mesh_rejected_records_total", "count", hugeCount},
		{"garbage", "grapevine_mesh_rejected_records_total", "version", []byte("GET / HTTP/1.1\r\n")},
		{"vote for a block outside the pool", "grapevine_mesh_rejected_records_total", "block_outside_pool", voteRequest{
			ID: 1, Claimant: "intruder", From: netip.MustParseAddrPort("10.0.0.9:7962"), Block: netip.MustParsePrefix("192.168.0.0/23"),
		}.encode()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := rejected(t, reg, tc.metric, tc.reason)
			m.handleMessage(tc.msg)
			if after := rejected(t, reg, tc.metric, tc.reason); after != before+1 {
				t.Fatalf("%s{reason=%q} went from %v to %v, want +1", tc.metric, tc.reason, before, after)
			}
		})
	}
	m.mu.Lock()
	_, intruder := m.table["intruder"]
	peerRec := m.table["peer"]
	m.mu.Unlock()
	if intruder {
		t.Error("a rejected record entered the table")
	}
	if peerRec.HostIP != peerMeta.HostIP || peerRec.Gen != peerMeta.Gen {
		t.Errorf("the peer's record was overwritten: %+v", peerRec)
	}
	for _, mem := range m.View().Members {
		if mem.Name == "peer" && mem.Block != peerMeta.Block {
			t.Errorf("peer routed to %s, want %s", mem.Block, peerMeta.Block)
		}
		if mem.Name == "intruder" {
			t.Errorf("intruder appears in the View: %+v", mem)
		}
	}
}
