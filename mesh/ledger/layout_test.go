package ledger

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

// TestRestartedVoterWithAnotherPoolCannotLead: a voter of a running ledger restarted
// with another pool or block size is refused at Open, so it never runs raft:
// it cannot lead, count the members dead for metadata only it rejects, and
// reclaim their blocks. Restarted as configured before, it rejoins.
func TestRestartedVoterWithAnotherPoolCannotLead(t *testing.T) {
	c, nodes := startCluster(t, nil, "n1", "n2", "n3")
	for _, n := range nodes {
		c.claim(n, netip.Prefix{})
	}
	before := c.converged()
	lead := c.leader()
	c.kill(lead)
	for name, mod := range map[string]func(*Config){
		"another pool":       func(cfg *Config) { cfg.Pool = pfx("10.245.0.0/22") },
		"another block size": func(cfg *Config) { cfg.BlockBits = 23 },
	} {
		cfg := c.base
		cfg.ID, cfg.Name, cfg.Advertise = lead.id, lead.name, lead.addr
		cfg.Logger, cfg.Registerer = testLogger(), prometheus.NewRegistry()
		cfg.Network, cfg.Stores, cfg.Tune = c.net.Host(lead.addr), lead.stores, c.tune
		mod(&cfg)
		l, err := Open(cfg)
		if err == nil {
			l.closeStores()
			t.Fatalf("%s: a voter restarted with pool %s and /%d blocks opened its ledger of %s and /%d", name, cfg.Pool, cfg.BlockBits, testPool, 24)
		}
		if !errors.Is(err, ErrPoolMismatch) {
			t.Errorf("%s: %v, want ErrPoolMismatch", name, err)
		}
		for _, want := range []string{cfg.Pool.String(), testPool.String(), before.ClusterID.String()} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %q does not name %s", name, err, want)
			}
		}
	}
	// The two others keep their blocks and elect a leader among themselves.
	c.leader()
	c.start(lead, false)
	if st := c.converged(); !equalState(st, before) {
		t.Fatalf("ledger after the refused restarts %v, want %v", st.Blocks, before.Blocks)
	}
}

// TestStoredLayoutFromLog: without a snapshot, Open finds the ledger's pool
// in the Found entry among the first entries of the log.
func TestStoredLayoutFromLog(t *testing.T) {
	addr := netip.MustParseAddrPort("192.0.2.1:7963")
	conf := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: raft.ServerID(idA.String()), Address: raft.ServerAddress(addr.String())}}}
	found, err := encodeCommand(Found{ClusterID: cluster1, Pool: testPool, BlockBits: 24})
	if err != nil {
		t.Fatal(err)
	}
	claim, err := encodeCommand(Claim{ID: idA, Name: "a", HostIP: ipA})
	if err != nil {
		t.Fatal(err)
	}
	entries := []*raft.Log{
		{Index: 1, Term: 1, Type: raft.LogConfiguration, Data: raft.EncodeConfiguration(conf)},
		{Index: 2, Term: 2, Type: raft.LogNoop},
		{Index: 3, Term: 2, Type: raft.LogCommand, Data: []byte("not a command")},
		{Index: 4, Term: 2, Type: raft.LogCommand, Data: found},
		{Index: 5, Term: 2, Type: raft.LogCommand, Data: claim},
	}
	for _, tt := range []struct {
		name      string
		entries   []*raft.Log
		pool      netip.Prefix
		blockBits int
		mismatch  bool
	}{
		{"same layout", entries, testPool, 24, false},
		{"another pool", entries, pfx("10.245.0.0/22"), 24, true},
		{"another block size", entries, testPool, 23, true},
		{"no state", nil, pfx("10.245.0.0/22"), 23, false},
		{"no Found entry in the log", entries[:3], pfx("10.245.0.0/22"), 23, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			stores := NewMemStores()
			if len(tt.entries) > 0 {
				if err := stores.Log.StoreLogs(tt.entries); err != nil {
					t.Fatal(err)
				}
			}
			l, err := Open(Config{
				ID: idA, Name: "a", Advertise: addr, Pool: tt.pool, BlockBits: tt.blockBits, Stores: stores,
				Logger: testLogger(), Registerer: prometheus.NewRegistry(), Network: openFailsNetwork{},
			})
			switch {
			case tt.mismatch && !errors.Is(err, ErrPoolMismatch):
				t.Fatalf("Open: %v, want ErrPoolMismatch", err)
			case !tt.mismatch && !errors.Is(err, errListenForTest):
				t.Fatalf("Open: %v, want it past the layout check (to the listener)", err)
			}
			if l != nil {
				t.Fatal("Open returned a ledger")
			}
		})
	}
}

var errListenForTest = errors.New("listen refused by the test")

// openFailsNetwork refuses to listen: Open stops there, after every check
// of the stored state, without taking a port.
type openFailsNetwork struct{}

func (openFailsNetwork) Listen() (net.Listener, error) { return nil, errListenForTest }

func (openFailsNetwork) Dial(context.Context, netip.AddrPort) (net.Conn, error) {
	return nil, errListenForTest
}
