package ledger

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// On disk (bolt log + file snapshots): a restarted founder keeps its
// ledger and its block, a second agent cannot open the same directory,
// and Recover rewrites the configuration in place.
func TestDiskRestartKeepsLedgerAndRecover(t *testing.T) {
	dir := t.TempDir()
	id := NewNodeID()
	cfg := Config{
		ID: id, Name: "a", Key: testKey, Found: true, Dir: dir,
		Advertise: netip.MustParseAddrPort("127.0.0.1:0"),
		Bind:      netip.MustParseAddrPort("127.0.0.1:0"),
		Pool:      testPool, BlockBits: 24, Voters: 3, Tune: fastRaft,
	}
	run := func() (*Ledger, func()) {
		t.Helper()
		c := cfg
		c.Logger = testLogger()
		c.Registerer = prometheus.NewRegistry()
		l, err := Open(c)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- l.Run(ctx) }()
		return l, func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Error(err)
				}
			case <-time.After(waitLong):
				t.Error("did not stop")
			}
		}
	}
	l, stop := run()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	g, err := l.Claim(ctx, pfx("10.244.2.0/24"), ipA)
	if err != nil {
		t.Fatal(err)
	}
	block := g.Block
	before, _ := l.State()

	// A second agent on the same state dir is refused.
	c2 := cfg
	c2.Logger, c2.Registerer = testLogger(), prometheus.NewRegistry()
	if _, err := Open(c2); err == nil || !strings.Contains(err.Error(), "another agent") {
		t.Fatalf("second Open on one dir: %v", err)
	}
	stop()

	l, stop = run()
	if st, _ := l.State(); !equalState(st, before) {
		t.Fatalf("restarted replica %+v, want %+v before raft runs", st, before)
	}
	if g, err := l.Claim(ctx, netip.Prefix{}, ipA); err != nil || g.Block != block {
		t.Fatalf("claim after restart: %s %v, want %s", g.Block, err, block)
	}
	stop()

	rec, err := Recover(dir, id, netip.MustParseAddrPort("127.0.0.1:7963"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if rec.ClusterID != before.ClusterID || rec.NewClusterID.IsZero() || rec.NewClusterID == before.ClusterID {
		t.Fatalf("recovery %+v from ledger %s: want a new cluster ID", rec, before.ClusterID)
	}
	before.ClusterID = rec.NewClusterID
	if _, err := Recover(t.TempDir(), id, netip.MustParseAddrPort("127.0.0.1:7963"), nil); err == nil {
		t.Fatal("recovered an empty directory")
	}
	l, stop = run()
	defer stop()
	waitFor(t, waitLong, "the recovered node to lead", func() bool { return l.Info().Role == "leader" })
	if st, _ := l.State(); !equalState(st, before) {
		t.Fatalf("state after recover %+v, want %+v", st, before)
	}
}

// TestSetAsideRefusesWhileOpen: the ledger state of a running agent (its
// log locked) is not moved.
func TestSetAsideRefusesWhileOpen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "raft")
	_, closeDisk, err := openDiskStores(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := SetAside(dir, dir+".aside"); err == nil || !strings.Contains(err.Error(), "stop the agent first") {
		t.Errorf("SetAside on an open log = %v, want a refusal", err)
	}
	closeDisk()
	if err := SetAside(dir, dir+".aside"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir+".aside", "raft.db")); err != nil {
		t.Error(err)
	}
}
