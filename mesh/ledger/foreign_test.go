package ledger

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// Issue 18, traces 3 and 11: two ledgers founded separately with one key
// (a founder that lost its disk, say). The raft layer of one must never
// reach the replica of the other: its AppendEntries and RequestVote are
// refused at the hello and counted, and neither replica changes.
func TestForeignLedgerRaftRefused(t *testing.T) {
	a := startTCP(t, "a", testKey, true, testPool)
	b := startTCP(t, "b", testKey, true, testPool)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if _, err := a.l.Claim(ctx, netip.Prefix{}, ipA); err != nil {
		t.Fatal(err)
	}
	if _, err := b.l.Claim(ctx, netip.Prefix{}, ipB); err != nil {
		t.Fatal(err)
	}
	stA, _ := a.l.State()
	stB, _ := b.l.State()
	termB := b.l.raft.Load().Stats()["term"]

	// a's leader takes b into its configuration, as the old ledger's leader
	// would the forked founder of trace 3, and keeps replicating to it.
	ra := a.l.raft.Load()
	if err := ra.AddNonvoter(raft.ServerID(b.l.ID().String()), raft.ServerAddress(b.l.Addr().String()), 0, waitShort).Error(); err != nil {
		t.Fatalf("a adds b to its configuration: %v", err)
	}
	waitFor(t, waitLong, "b to refuse a's raft connections", func() bool { return b.rejected(t, "foreign-cluster") >= 3 })

	// A forged vote for a huge term and forged entries, sent with a's own
	// identity (its cluster and node ID) over a's dialer.
	stream := &streamLayer{m: &mux{raft: make(chan net.Conn)}, dialer: a.l.dialer(), advertise: a.l.Addr(), closed: make(chan struct{})}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{Stream: stream, MaxPool: 1, Timeout: 5 * time.Second, Logger: newHCLog(testLogger(), "a-to-b")})
	defer trans.Close()
	target, targetID := raft.ServerAddress(b.l.Addr().String()), raft.ServerID(b.l.ID().String())
	header := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(a.l.ID().String()), Addr: []byte(a.l.Addr().String())}
	var vote raft.RequestVoteResponse
	if err := trans.RequestVote(targetID, target, &raft.RequestVoteRequest{RPCHeader: header, Term: 1 << 40, LastLogIndex: 1 << 40, LastLogTerm: 1 << 40}, &vote); !errors.Is(err, ErrForeignCluster) {
		t.Fatalf("vote request to another ledger: %v (granted %v), want ErrForeignCluster", err, vote.Granted)
	}
	forged, _ := encodeCommand(Claim{ID: NodeID{0xee}, Name: "forger", HostIP: ipA, Hint: pfx("10.244.3.0/24")})
	var app raft.AppendEntriesResponse
	if err := trans.AppendEntries(targetID, target, &raft.AppendEntriesRequest{
		RPCHeader: header, Term: 1 << 40, Entries: []*raft.Log{{Index: 1 << 30, Term: 1 << 40, Type: raft.LogCommand, Data: forged}}, LeaderCommitIndex: 1 << 30,
	}, &app); !errors.Is(err, ErrForeignCluster) {
		t.Fatalf("entries to another ledger: %v (success %v), want ErrForeignCluster", err, app.Success)
	}

	// Neither replica changed; b still leads its own ledger alone, at its term.
	if st, _ := b.l.State(); !equalState(st, stB) {
		t.Fatalf("b's replica changed: %+v, was %+v", st, stB)
	}
	if st, _ := a.l.State(); !equalState(st, stA) {
		t.Fatalf("a's replica changed: %+v, was %+v", st, stA)
	}
	if info := b.l.Info(); info.Role != "leader" || len(info.Voters) != 1 || info.ClusterID != stB.ClusterID {
		t.Fatalf("b's place in its ledger changed: %+v", info)
	}
	if term := b.l.raft.Load().Stats()["term"]; term != termB {
		t.Fatalf("b's term moved from %s to %s", termB, term)
	}
	if f := b.l.raft.Load().GetConfiguration(); f.Error() != nil || len(f.Configuration().Servers) != 1 {
		t.Fatalf("b's configuration: %+v (%v)", f.Configuration(), f.Error())
	}
}
