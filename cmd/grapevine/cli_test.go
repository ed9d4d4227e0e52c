package main

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
)

// runCLI runs the command line with args and an agent runner that starts
// nothing; it returns what was printed, the error and the options the agent
// would have started with (nil if it would not have started).
func runCLI(t *testing.T, args ...string) (string, error, *agentOptions) {
	t.Helper()
	var started *agentOptions
	app := newApp(func(_ context.Context, o agentOptions, log *slog.Logger) error {
		started = &o
		return nil
	})
	var out bytes.Buffer
	app.Writer, app.ErrWriter = &out, &out
	app.ExitErrHandler = func(*cli.Context, error) {} // never os.Exit in a test
	err := app.RunContext(t.Context(), append([]string{"grapevine"}, args...))
	return out.String(), err, started
}

// TestBadInput: every mistake on the command line ends in one sentence that
// says what is wrong and what is accepted, before the agent starts anything.
func TestBadInput(t *testing.T) {
	tests := []struct {
		args []string
		want []string // the error contains each
	}{
		{[]string{"agent", "--pool", "10.0.0.0/33"}, []string{`--pool "10.0.0.0/33"`, `prefix length "33" is not a number from 0 to 32`, "10.244.0.0/16"}},
		{[]string{"agent", "--pool", "10.0.0.0"}, []string{`--pool "10.0.0.0" has no prefix length`}},
		{[]string{"agent", "--pool", "ten/8"}, []string{`"ten" is not an IP address`}},
		{[]string{"agent", "--pool", "fd00::/129"}, []string{`prefix length "129" is not a number from 0 to 128`}},
		{[]string{"agent", "--pool", "fd00::/48", "--block-size", "121"}, []string{"--block-size 121", "between the pool's prefix length /48 and /120"}},
		{[]string{"agent", "--pool", "fd00::/48", "--pool6", "fd01::/48"}, []string{"an IPv6-only cluster has one pool"}},
		{[]string{"agent", "--pool", "fd00::/48", "--pool6", "fd01::/48", "--host-ip6", "fd01::1"}, []string{"--pool6 or --block-size6 with the IPv6 --pool fd00::/48", "drop --pool6 and --block-size6"}},
		{[]string{"agent", "--pool", "fd00::/48", "--block-size6", "64"}, []string{"--pool6 or --block-size6 with the IPv6 --pool fd00::/48"}},
		{[]string{"agent", "--pool", "fd00::/48", "--host-ip6", "fd01::1"}, []string{"--host-ip6 with the IPv6 --pool fd00::/48", "--host-ip is its IPv6 address"}},
		{[]string{"agent", "--pool", "fd00::/48", "--host-ip6", "fe80::1"}, []string{"--host-ip6 with the IPv6 --pool fd00::/48"}},
		{[]string{"agent", "--pool", "fd00::/48", "--host-ip", "172.16.0.1"}, []string{"--host-ip 172.16.0.1", "must be a global IPv6 address"}},
		{[]string{"agent", "--host-ip", "fd00:172::1"}, []string{"--host-ip fd00:172::1 is IPv6 but --pool 10.244.0.0/16 is IPv4", "--host-ip6"}},
		{[]string{"agent", "--pool", "10.244.1.0/16"}, []string{"not a network address (did you mean 10.244.0.0/16?)"}},
		{[]string{"agent", "--block-size", "31"}, []string{"--block-size 31", "between the pool's prefix length /16 and /30"}},
		{[]string{"agent", "--block-size", "8"}, []string{"--block-size 8", "between"}},
		{[]string{"agent", "--pool", "10.0.0.0/8", "--block-size", "30"}, []string{"more than 2^20 blocks"}},
		{[]string{"agent", "--pool6", "10.0.0.0/8"}, []string{`--pool6 "10.0.0.0/8" is not an IPv6 CIDR`}},
		{[]string{"agent", "--pool6", "fd00::"}, []string{`--pool6 "fd00::" is not an IPv6 CIDR`}},
		{[]string{"agent", "--pool6", "fd00::1/48"}, []string{"not a network address (did you mean fd00::/48?)"}},
		{[]string{"agent", "--pool6", "fd00::/48", "--block-size6", "121"}, []string{"--block-size6 121", "between the pool6's prefix length /48 and /120"}},
		{[]string{"agent", "--pool6", "fd00::/60", "--block-size", "24"}, []string{"--pool6 fd00::/60 --block-size6 64 with --pool 10.244.0.0/16 --block-size 24", "fewer than the 2^8 blocks"}},
		{[]string{"agent", "--block-size6", "64"}, []string{"--block-size6 64 without --pool6"}},
		{[]string{"agent", "--host-ip6", "fd00::1"}, []string{"--host-ip6 fd00::1 without --pool6"}},
		{[]string{"agent", "--pool6", "fd00::/48", "--host-ip6", "fe80::1"}, []string{`--host-ip6 "fe80::1" is not a global IPv6 address`}},
		{[]string{"agent", "--log-level", "loud"}, []string{`--log-level "loud" is not a level: use debug, info, warn or error`}},
		{[]string{"agent", "--lease", "-5m"}, []string{"--lease", "-5m0s is shorter than a second"}},
		{[]string{"agent", "--reclaim-after", "500ms"}, []string{"--lease", "500ms is shorter than a second"}},
		{[]string{"agent", "--node-name", "bad name!"}, []string{`--node-name: node name "bad name!" has spaces`}},
		{[]string{"agent", "--node-name", strings.Repeat("n", 254)}, []string{"--node-name", "1-253 characters"}},
		{[]string{"agent", "--port", "70000"}, []string{"--port: port 70000 is out of range 1-65535"}},
		{[]string{"agent", "--port", "0"}, []string{"--port: port 0 is out of range"}},
		{[]string{"agent", "--port", "abc"}, []string{`invalid value "abc" for flag -port`, "see grapevine agent --help"}},
		{[]string{"agent", "--poool", "10.0.0.0/8"}, []string{"flag provided but not defined: -poool", "see grapevine agent --help"}},
		{[]string{"agent", "--bootstrap-expect", "5"}, []string{"--bootstrap-expect: 5 founders", "at most the number of voters (3)"}},
		{[]string{"agent", "--bootstrap-expect", "3", "--join-kubernetes"}, []string{"--bootstrap-expect with --join-kubernetes", "drop --bootstrap-expect"}},
		{[]string{"ledger", "reset", "--state-dir", "state"}, []string{`--state-dir "state" must be an absolute path`}},
		{[]string{"agent", "--mtu", "100"}, []string{"--mtu 100 is out of range: 0 (the interface's) or 576-65535"}},
		{[]string{"agent", "--resync-interval", "0s"}, []string{"--resync-interval 0s: must be longer than zero"}},
		{[]string{"agent", "--metrics-addr", "9962"}, []string{`--metrics-addr "9962" is not host:port`}},
		{[]string{"agent", "--host-ip", "10.0.0"}, []string{`--host-ip "10.0.0" is not an IP address`}},
		{[]string{"agent", "--gossip-key-file", "/nonexistent/gossip.key"}, []string{"gossip key", "/nonexistent/gossip.key", "no such file"}},
		{[]string{"agent", "--gossip-key-file", "/dev/zero"}, []string{"/dev/zero: gossip key file is not a regular file"}},
		{[]string{"agent", "--state-dir", "state"}, []string{`--state-dir "state" must be an absolute path`}},
		{[]string{"agent", "--run-dir", ""}, []string{`--run-dir "" must be an absolute path`}},
		{[]string{"agent", "--cni-conf-dir", "net.d"}, []string{`--cni-conf-dir "net.d" must be an absolute path`}},
		{[]string{"agent", "--policy-socket", "policy.sock"}, []string{`--policy-socket "policy.sock" must be an absolute path`}},
		{[]string{"agent", "extra-arg"}, []string{`agent takes no arguments, got "extra-arg"`}},
		{[]string{"agent", "--pool", "10.1.0.0/16", "extra-arg"}, []string{`agent takes no arguments, got "extra-arg"`}},
		{[]string{"status", "h1"}, []string{`status takes no arguments, got "h1"`}},
		{[]string{"status", "-o", "yaml"}, []string{`-o "yaml": want table or json`}},
		{[]string{"keygen", "32"}, []string{`keygen takes no arguments, got "32"`}},
		{[]string{"version", "now"}, []string{`version takes no arguments`}},
		{[]string{"install-cni", "/opt/cni/bin"}, []string{`install-cni takes no arguments, got "/opt/cni/bin"`}},
		{[]string{"release"}, []string{"release takes exactly one node name, got 0 arguments"}},
		{[]string{"release", "h1", "h2"}, []string{"release takes exactly one node name, got 2 arguments"}},
		{[]string{"versoin"}, []string{`unknown command "versoin"`, "version"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out, err, started := runCLI(t, tt.args...)
			if err == nil {
				t.Fatalf("accepted; printed %q", out)
			}
			if started != nil {
				t.Errorf("the agent started despite the error %q", err)
			}
			msg := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not say %q", msg, w)
				}
			}
			for _, internal := range []string{"mesh: ", "netip.", "slog:", "agent: ", "\n"} {
				if strings.Contains(msg, internal) {
					t.Errorf("error %q contains %q", msg, internal)
				}
			}
			if strings.Contains(out, "Incorrect Usage") || strings.Contains(out, "USAGE:") {
				t.Errorf("a usage dump was printed with the error:\n%s", out)
			}
		})
	}
}

// TestGoodInput: valid flags reach the agent as options, and nothing is
// printed or logged before it starts (the mesh warns about unencrypted
// gossip itself, once; see TestAgentLoop).
func TestGoodInput(t *testing.T) {
	out, err, started := runCLI(t, "agent", "--node-name", "n1", "--pool", "10.10.0.0/16", "--block-size", "24",
		"--reclaim-after", "5m", "--port", "7000", "--mtu", "1400", "--bootstrap-expect", "3", "--join", "10.0.0.2", "--join", "10.0.0.3:7000", "--join", "",
		"--host-ip", "10.0.0.1", "--metrics-addr", "", "--log-level", "WARN")
	if err != nil {
		t.Fatal(err)
	}
	if out != "" {
		t.Errorf("printed before the agent started: %q", out)
	}
	if started == nil {
		t.Fatal("agent not started")
	}
	o := *started
	if o.NodeName != "n1" || o.Pool != netip.MustParsePrefix("10.10.0.0/16") || o.BlockSize != 24 || o.Lease != 5*time.Minute ||
		o.Port != 7000 || o.MTU != 1400 || len(o.Join) != 2 || o.BootstrapExpect != 3 || o.HostIP != netip.MustParseAddr("10.0.0.1") || o.MetricsAddr != "" {
		t.Errorf("options = %+v", o)
	}
	if o.Pool6.IsValid() {
		t.Errorf("without --pool6 the agent got pool6 %s", o.Pool6)
	}
	_, err, started = runCLI(t, "agent", "--node-name", "n1", "--pool", "10.10.0.0/16", "--block-size", "24",
		"--pool6", "fd00:10:10::/112", "--block-size6", "120", "--metrics-addr", "")
	if err != nil || started == nil || started.Pool6 != netip.MustParsePrefix("fd00:10:10::/112") || started.BlockSize6 != 120 {
		t.Errorf("agent with --pool6 = %+v, %v", started, err)
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-v"}} {
		out, err, _ := runCLI(t, args...)
		if err != nil || out != "grapevine version "+version+"\n" {
			t.Errorf("grapevine %s = %q, %v; want \"grapevine version %s\\n\"", args[0], out, err, version)
		}
	}
}
