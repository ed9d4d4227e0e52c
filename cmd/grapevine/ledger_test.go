package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/ledger"
	"github.com/grapevine-net/grapevine/status"
)

// TestLedgerRecoverRefuses: bad input is refused with the flag's name, and a
// state directory without a ledger is not mistaken for one.
func TestLedgerRecoverRefuses(t *testing.T) {
	app := &cli.App{Name: "grapevine", Commands: []*cli.Command{ledgerCommand()}}
	dir := t.TempDir()
	runDir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--state-dir", dir, "--host-ip", "not-an-ip"}, "--host-ip"},
		{[]string{"--state-dir", dir, "--host-ip", "192.0.2.1", "--ledger-port", "0"}, "--ledger-port"},
		{[]string{"--state-dir", dir, "--host-ip", "192.0.2.1", "--port", "70000"}, "--port"},
		{[]string{"--state-dir", dir, "--host-ip", "192.0.2.1", "--probe-timeout", "0s"}, "--probe-timeout"},
		{[]string{"--state-dir", dir, "--host-ip", "192.0.2.1"}, "recover the ledger in " + dir},
	} {
		err := app.Run(append([]string{"grapevine", "ledger", "recover", "--run-dir", runDir}, tc.args...))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ledger recover %v: %v, want an error naming %q", tc.args, err, tc.want)
		}
	}
}

// TestLedgerReset: the ledger state and block.json are moved aside, the
// node ID stays, and the command says where they went.
func TestLedgerReset(t *testing.T) {
	dir := t.TempDir()
	for path, data := range map[string]string{"node-id": "0123456789abcdef0123456789abcdef\n", "block.json": "{}", "raft/snapshots/x": "s"} {
		p := filepath.Join(dir, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var out strings.Builder
	app := &cli.App{Name: "grapevine", Writer: &out, Commands: []*cli.Command{ledgerCommand()}}
	if err := app.Run([]string{"grapevine", "ledger", "reset", "--state-dir", dir}); err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{"raft", "block.json"} {
		if _, err := os.Stat(filepath.Join(dir, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after the reset: %v", gone, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "node-id")); err != nil {
		t.Errorf("node-id: %v", err)
	}
	moved, _ := filepath.Glob(filepath.Join(dir, "raft.reset-*", "snapshots", "x"))
	if len(moved) != 1 || !strings.Contains(out.String(), filepath.Dir(filepath.Dir(moved[0]))) {
		t.Errorf("moved %v; printed %q", moved, out.String())
	}
}

// TestMeshConfigFounding: which way an agent founds a ledger follows from
// its flags, and only one way at a time.
func TestMeshConfigFounding(t *testing.T) {
	for _, tc := range []struct {
		name      string
		o         agentOptions
		found     bool
		expect    int
		validates bool
	}{
		{"no --join: alone, at once", agentOptions{}, true, 0, true},
		{"--join: never", agentOptions{Join: []string{"192.0.2.1"}}, false, 0, true},
		{"--join --bootstrap-expect 3", agentOptions{Join: []string{"192.0.2.1"}, BootstrapExpect: 3}, false, 3, true},
		{"--bootstrap-expect 1 alone", agentOptions{BootstrapExpect: 1}, false, 1, true},
		{"--join-kubernetes: through the record", agentOptions{JoinKubernetes: true}, false, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.NodeName, tc.o.HostIP, tc.o.Voters, tc.o.StateDir = "n1", netip.MustParseAddr("192.0.2.9"), 3, t.TempDir()
			cfg := tc.o.meshConfig(slog.New(slog.DiscardHandler))
			if cfg.Found != tc.found || cfg.BootstrapExpect != tc.expect {
				t.Errorf("Found %v, BootstrapExpect %d; want %v, %d", cfg.Found, cfg.BootstrapExpect, tc.found, tc.expect)
			}
			if _, err := mesh.New(cfg); (err == nil) != tc.validates {
				t.Errorf("mesh.New: %v", err)
			}
		})
	}
}

// TestLedgerRecoverRefusedWhileAgentRuns: with the agent's status socket
// answering, recover refuses, naming the voters its gossip counts alive.
func TestLedgerRecoverRefusedWhileAgentRuns(t *testing.T) {
	runDir, err := os.MkdirTemp("", "gv") // short: a unix socket path has a length limit
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	ln, err := net.Listen("unix", filepath.Join(runDir, statusSocketName))
	if err != nil {
		t.Fatal(err)
	}
	report := status.Report{
		Node:   "n1",
		Ledger: status.Ledger{Voters: []string{"n1", "n2", "n3"}},
		Members: []status.Member{
			{Name: "n2", State: "alive"}, {Name: "n3", State: "dead"}, {Name: "n4", State: "alive"},
		},
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(report)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	app := &cli.App{Name: "grapevine", Commands: []*cli.Command{ledgerCommand()}}
	err = app.Run([]string{"grapevine", "ledger", "recover", "--run-dir", runDir, "--state-dir", t.TempDir(), "--host-ip", "192.0.2.1"})
	if err == nil || !strings.Contains(err.Error(), "the agent is running here and its gossip counts voter n2 alive") || strings.Contains(err.Error(), "n3") {
		t.Fatalf("recover with the agent running and voter n2 alive: %v", err)
	}
	report.Members[0].State = "left"
	err = app.Run([]string{"grapevine", "ledger", "recover", "--run-dir", runDir, "--state-dir", t.TempDir(), "--host-ip", "192.0.2.1"})
	if err == nil || !strings.Contains(err.Error(), "the agent is running here") || !strings.Contains(err.Error(), "stop it") {
		t.Fatalf("recover with the agent running: %v", err)
	}
}

// TestLedgerRecoverProbesVoters is trace 4 at the command: recover refuses
// while the voter it would drop answers on its ledger port, and names it;
// once it is silent, recover mints a new cluster ID and names the voter it
// dropped.
func TestLedgerRecoverProbesVoters(t *testing.T) {
	stateDir := t.TempDir()
	// The ledger this node holds was founded by another voter ("a"), as
	// when a node recovers the replica of a ledger whose voters are gone.
	voterAddr, cluster := foundLedgerOnDisk(t, filepath.Join(stateDir, "raft"))
	if _, err := ledger.LoadOrCreateNodeID(stateDir); err != nil {
		t.Fatal(err)
	}
	gossip := freePort(t)
	app := &cli.App{Name: "grapevine", Commands: []*cli.Command{ledgerCommand()}}
	var out strings.Builder
	app.Writer = &out
	args := []string{"grapevine", "ledger", "recover", "--run-dir", t.TempDir(), "--state-dir", stateDir,
		"--host-ip", "127.0.0.1", "--ledger-port", "7963", "--port", gossip, "--probe-timeout", "1s"}

	answering, err := net.Listen("tcp", voterAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	err = app.Run(args)
	answering.Close()
	t.Logf("grapevine: %v", err)
	if !errors.Is(err, ledger.ErrVoterAnswers) || !strings.Contains(err.Error(), "voter a ("+voterAddr.String()+") answers on "+voterAddr.String()) {
		t.Fatalf("recover while voter a answers: %v", err)
	}
	if out.Len() != 0 {
		t.Fatalf("a refused recovery printed %q", out.String())
	}

	if err := app.Run(args); err != nil {
		t.Fatalf("recover once voter a is silent: %v", err)
	}
	t.Logf("grapevine ledger recover:\n%s", out.String())
	for _, want := range []string{"recovered from ledger " + cluster.String(), "dropped voter: a (" + voterAddr.String() + ")", "foreign to the recovered ledger"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("recover printed %q, want it to say %q", out.String(), want)
		}
	}
	if strings.Contains(out.String(), "ledger "+cluster.String()+", recovered") {
		t.Errorf("recover kept the cluster ID: %q", out.String())
	}
}

// foundLedgerOnDisk founds a single-voter ledger in dir on loopback, has its
// node "a" claim a block, stops it, and returns the address it ran at and
// its cluster ID.
func foundLedgerOnDisk(t *testing.T, dir string) (netip.AddrPort, ledger.ClusterID) {
	t.Helper()
	l, err := ledger.Open(ledger.Config{
		ID: ledger.NewNodeID(), Name: "a", Found: true, Dir: dir, Voters: 1,
		Key:       []byte("0123456789abcdef"),
		Advertise: netip.MustParseAddrPort("127.0.0.1:0"), Bind: netip.MustParseAddrPort("127.0.0.1:0"),
		Pool: netip.MustParsePrefix("10.244.0.0/16"), BlockBits: 24,
		Logger: slog.New(slog.DiscardHandler), Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	claimCtx, claimCancel := context.WithTimeout(ctx, time.Minute)
	_, err = l.Claim(claimCtx, netip.Prefix{}, netip.MustParseAddr("127.0.0.1"))
	claimCancel()
	st, _ := l.State()
	cancel()
	if runErr := <-done; runErr != nil {
		t.Fatal(runErr)
	}
	if err != nil {
		t.Fatal(err)
	}
	return l.Addr(), st.ClusterID
}

// freePort returns a loopback TCP port nothing listens on (now).
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strings.TrimPrefix(ln.Addr().String(), "127.0.0.1:")
}
