package ledger

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

// tcpLedger runs a ledger on loopback TCP (never another interface).
type tcpLedger struct {
	l      *Ledger
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

func startTCP(t *testing.T, name string, key []byte, found bool, pool netip.Prefix) *tcpLedger {
	t.Helper()
	reg := prometheus.NewRegistry()
	l, err := Open(Config{
		ID: NewNodeID(), Name: name, Key: key, Found: found,
		Advertise: netip.MustParseAddrPort("127.0.0.1:0"),
		Bind:      netip.MustParseAddrPort("127.0.0.1:0"),
		Dir:       t.TempDir(), // bolt + file snapshots, as in production
		Pool:      pool, BlockBits: 24, Voters: 3,
		Logger: testLogger().With("node", name), Registerer: reg, Tune: fastRaft,
	})
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &tcpLedger{l: l, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-n.done:
			if err != nil {
				t.Errorf("run %s: %v", name, err)
			}
		case <-time.After(waitLong):
			t.Errorf("%s did not shut down", name)
		}
	})
	if found {
		waitFor(t, waitLong, name+" founded", func() bool { st, _ := l.State(); return st.Founded() })
	}
	return n
}

func (n *tcpLedger) rejected(t *testing.T, reason string) float64 {
	return counterValue(t, n.reg, "grapevine_ledger_rpc_rejected_total", map[string]string{"reason": reason})
}

func TestForeignKeyCannotJoinVoteOrApply(t *testing.T) {
	a := startTCP(t, "a", testKey, true, testPool)
	ctx, cancel := context.WithTimeout(context.Background(), waitShort)
	defer cancel()

	// Joining without the key, or with another key, fails in the handshake.
	keyless := startTCP(t, "keyless", nil, false, testPool)
	if err := keyless.l.RequestJoin(ctx, ClusterID{}, []netip.AddrPort{a.l.Addr()}); err == nil {
		t.Fatal("a node without the key joined")
	}
	otherKey := []byte("fedcba9876543210fedcba9876543210")
	other := startTCP(t, "other", otherKey, false, testPool)
	if err := other.l.RequestJoin(ctx, ClusterID{}, []netip.AddrPort{a.l.Addr()}); err == nil {
		t.Fatal("a node with another key joined")
	}
	waitFor(t, waitShort, "refused handshakes counted", func() bool { return a.rejected(t, "tls") >= 2 })

	// Raft traffic: a vote request and a forged entry, sent without the key
	// and with another key, never reach raft.
	forged, _ := encodeCommand(Claim{ID: NodeID{0xee}, Name: "forger", HostIP: ipA, Hint: pfx("10.244.3.0/24")})
	for _, clientTLS := range []*tls.Config{nil, mustClientTLS(t, otherKey)} {
		stream := &streamLayer{m: &mux{raft: make(chan net.Conn)}, dialer: testDialer(clientTLS, ClusterID{}), advertise: netip.MustParseAddrPort("127.0.0.1:1"), closed: make(chan struct{})}
		trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{Stream: stream, MaxPool: 1, Timeout: 5 * time.Second, Logger: newHCLog(testLogger(), "attacker")})
		target := raft.ServerAddress(a.l.Addr().String())
		var vote raft.RequestVoteResponse
		err := trans.RequestVote(raft.ServerID(a.l.ID().String()), target, &raft.RequestVoteRequest{
			RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("attacker"), Addr: []byte("127.0.0.1:1")}, Term: 1 << 40, LastLogIndex: 1 << 40, LastLogTerm: 1 << 40,
		}, &vote)
		if err == nil && vote.Granted {
			t.Fatal("vote granted to a peer without the key")
		}
		var app raft.AppendEntriesResponse
		err = trans.AppendEntries(raft.ServerID(a.l.ID().String()), target, &raft.AppendEntriesRequest{
			RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("attacker"), Addr: []byte("127.0.0.1:1")}, Term: 1 << 40, PrevLogEntry: 0, PrevLogTerm: 0,
			Entries:           []*raft.Log{{Index: 1 << 30, Term: 1 << 40, Type: raft.LogCommand, Data: forged}},
			LeaderCommitIndex: 1 << 30,
		}, &app)
		if err == nil && app.Success {
			t.Fatal("entries accepted from a peer without the key")
		}
		trans.Close()
	}
	if info := a.l.Info(); info.Role != "leader" {
		t.Fatalf("the founder lost its leadership to a peer without the key: %+v", info)
	}
	st, _ := a.l.State()
	if _, forgedIn := st.Blocks[pfx("10.244.3.0/24")]; forgedIn {
		t.Fatal("forged entry applied")
	}
	// and the ledger still works
	if _, err := a.l.Claim(ctx, netip.Prefix{}, ipA); err != nil {
		t.Fatal(err)
	}
}

// testDialer dials over loopback TCP as a node with a fresh ID in ledger
// cluster (zero: none), counting nothing.
func testDialer(clientTLS *tls.Config, cluster ClusterID) *dialer {
	self := hello{version: helloVersion, cluster: cluster, node: NewNodeID()}
	return &dialer{net: TCPNetwork(netip.AddrPort{}), tls: clientTLS, self: func() hello { return self }, reject: func(string) {}}
}

func mustClientTLS(t *testing.T, key []byte) *tls.Config {
	_, c, err := tlsConfigs(key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestJoinWithTheKeyOverTCP(t *testing.T) {
	a := startTCP(t, "a", testKey, true, testPool)
	b := startTCP(t, "b", testKey, false, testPool)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	var err error
	waitFor(t, waitLong, "b accepted", func() bool {
		err = b.l.RequestJoin(ctx, ClusterID{}, []netip.AddrPort{a.l.Addr()})
		return err == nil
	})
	g, err := b.l.Claim(ctx, netip.Prefix{}, ipB)
	if err != nil {
		t.Fatal(err)
	}
	blk := g.Block
	waitFor(t, waitLong, "b's replica to show its block", func() bool {
		st, _ := b.l.State()
		return st.Blocks[blk].ID == b.l.ID()
	})
	if a.rejected(t, "tls") != 0 {
		t.Fatal("handshake between holders of the key refused")
	}
}

// rawRPC sends bytes on a ledger RPC connection (with the key: a confused
// or hostile member) and returns the answer, if any.
func rawRPC(t *testing.T, addr netip.AddrPort, payload []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitShort)
	defer cancel()
	c, err := testDialer(mustClientTLS(t, testKey), ClusterID{}).dial(ctx, addr, muxRPC)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitShort))
	if _, err := c.Write(payload); err != nil {
		return nil, err
	}
	return readFrame(c)
}

func frame(body string) []byte {
	b := make([]byte, 4+len(body))
	binary.BigEndian.PutUint32(b, uint32(len(body)))
	copy(b[4:], body)
	return b
}

func TestMalformedRPCRejectedAndCounted(t *testing.T) {
	a := startTCP(t, "a", testKey, true, testPool)
	for _, body := range []string{
		`garbage`, `{"v":1,"op":"claim"}`, `{"v":1,"op":"claim","claim":{"ID":"00000000000000000000000000000000","Name":"x","HostIP":"192.0.2.1","Hint":""}}`,
		`{"v":1,"op":"join","join":{"id":"01000000000000000000000000000000","name":"x","addr":"0.0.0.0:0","cluster":"0000000000000000","pool":"10.244.0.0/22","bits":24}}`,
		`{"v":1,"op":"release","release":{"name":"a b"}}`, `{"v":9,"op":"release","release":{"name":"ab"}}`,
	} {
		ans, err := rawRPC(t, a.l.Addr(), frame(body))
		if err != nil {
			t.Fatalf("%s: no answer: %v", body, err)
		}
		resp, err := decodeResponse(ans)
		if err != nil || !errors.Is(resp.err(), ErrBadRequest) {
			t.Fatalf("%s: answer %s (%v), want bad-request", body, ans, err)
		}
	}
	if got := a.rejected(t, "decode"); got != 6 {
		t.Fatalf("%v malformed RPCs counted, want 6", got)
	}
	// An oversized frame is refused from its header, without reading it.
	hdr := make([]byte, 4)
	binary.BigEndian.PutUint32(hdr, 1<<30)
	if ans, err := rawRPC(t, a.l.Addr(), hdr); err == nil {
		if resp, _ := decodeResponse(ans); !errors.Is(resp.err(), ErrBadRequest) {
			t.Fatalf("oversized frame answered %s", ans)
		}
	}
	waitFor(t, waitShort, "oversized frame counted", func() bool { return a.rejected(t, "size") == 1 })

	// An unknown mux byte, and a plaintext connection to a keyed node.
	ctx, cancel := context.WithTimeout(context.Background(), waitShort)
	defer cancel()
	if c, err := testDialer(mustClientTLS(t, testKey), ClusterID{}).dial(ctx, a.l.Addr(), 'X'); err == nil {
		c.SetDeadline(time.Now().Add(waitShort))
		c.Read(make([]byte, 1))
		c.Close()
	}
	var d net.Dialer
	if c, err := d.DialContext(ctx, "tcp", a.l.Addr().String()); err == nil {
		c.Write(frame(`{"v":1}`))
		c.SetDeadline(time.Now().Add(waitShort))
		c.Read(make([]byte, 1))
		c.Close()
	}
	waitFor(t, waitShort, "bad mux byte and plaintext counted", func() bool {
		return a.rejected(t, "mux") == 1 && a.rejected(t, "tls") == 1
	})
	if _, err := a.l.Claim(ctx, netip.Prefix{}, ipA); err != nil {
		t.Fatalf("ledger broken after malformed input: %v", err)
	}
}

func TestSeparatelyFoundedLedgersRefuseEachOther(t *testing.T) {
	a := startTCP(t, "a", testKey, true, testPool)
	b := startTCP(t, "b", testKey, true, testPool)
	ctx, cancel := context.WithTimeout(context.Background(), waitShort)
	defer cancel()
	if err := definite(t, func() error { return b.l.RequestJoin(ctx, ClusterID{}, []netip.AddrPort{a.l.Addr()}) }); !errors.Is(err, ErrForeignCluster) {
		t.Fatalf("b joining a: %v, want ErrForeignCluster", err)
	}
	if err := definite(t, func() error { return a.l.RequestJoin(ctx, ClusterID{}, []netip.AddrPort{b.l.Addr()}) }); !errors.Is(err, ErrForeignCluster) {
		t.Fatalf("a joining b: %v, want ErrForeignCluster", err)
	}
	// and each stays a member of its own
	if err := a.l.RequestJoin(ctx, ClusterID{}, []netip.AddrPort{a.l.Addr()}); err == nil || errors.Is(err, ErrForeignCluster) {
		t.Fatalf("joining only through itself: %v, want no-address error", err)
	}
	st, _ := b.l.State()
	if a.rejected(t, "foreign-cluster") != 1 {
		t.Fatal("foreign join not counted")
	}
	sa, _ := a.l.State()
	if sa.ClusterID == st.ClusterID {
		t.Fatal("two foundings gave one cluster ID")
	}
	if len(a.l.Info().Voters) != 1 {
		t.Fatal("foreign node added")
	}
}

// A node in no ledger yet asks for the ledger it chose (ledgerToJoin); a
// leader of another adds it to none, or the node would hold a ledger its
// seeds do not (one recovered beside the cluster's, say).
func TestJoinMeantForAnotherLedgerRefused(t *testing.T) {
	a := startTCP(t, "a", testKey, true, testPool)
	b := startTCP(t, "b", testKey, true, testPool)
	fresh := startTCP(t, "fresh", testKey, false, testPool)
	ctx, cancel := context.WithTimeout(context.Background(), waitShort)
	defer cancel()
	sb, _ := b.l.State()
	if err := definite(t, func() error { return fresh.l.RequestJoin(ctx, sb.ClusterID, []netip.AddrPort{a.l.Addr()}) }); !errors.Is(err, ErrForeignCluster) {
		t.Fatalf("a join for b's ledger sent to a: %v, want ErrForeignCluster", err)
	}
	if f := a.l.raft.Load().GetConfiguration(); f.Error() != nil || len(f.Configuration().Servers) != 1 {
		t.Fatalf("a's ledger after a join meant for b's: %v %v, want a alone", f.Configuration().Servers, f.Error())
	}
	if err := definite(t, func() error { return fresh.l.RequestJoin(ctx, sb.ClusterID, []netip.AddrPort{b.l.Addr()}) }); err != nil {
		t.Fatalf("join b's ledger through b: %v", err)
	}
}

func TestPoolMismatchRefused(t *testing.T) {
	a := startTCP(t, "a", testKey, true, testPool)
	c := startTCP(t, "c", testKey, false, pfx("10.250.0.0/22"))
	ctx, cancel := context.WithTimeout(context.Background(), waitShort)
	defer cancel()
	if err := definite(t, func() error { return c.l.RequestJoin(ctx, ClusterID{}, []netip.AddrPort{a.l.Addr()}) }); !errors.Is(err, ErrPoolMismatch) {
		t.Fatalf("join with another pool: %v, want ErrPoolMismatch", err)
	}
	if a.rejected(t, "pool-mismatch") != 1 {
		t.Fatal("pool mismatch not counted")
	}
}

// A member restarted with another pool (same state) is refused at Open,
// before it could claim (see also TestRestartedVoterWithAnotherPoolCannotLead).
func TestRestartWithAnotherPoolRefused(t *testing.T) {
	c, nodes := startCluster(t, nil, "n1", "n2")
	n := nodes[1]
	c.converged()
	c.kill(n)
	cfg := c.base
	cfg.ID, cfg.Name, cfg.Advertise = n.id, n.name, n.addr
	cfg.Logger, cfg.Registerer = testLogger(), prometheus.NewRegistry()
	cfg.Network, cfg.Stores = c.net.Host(n.addr), n.stores
	cfg.Pool = pfx("10.250.0.0/22")
	if l, err := Open(cfg); !errors.Is(err, ErrPoolMismatch) {
		if l != nil {
			l.closeStores()
		}
		t.Fatalf("open with another pool: %v, want ErrPoolMismatch", err)
	}
}
