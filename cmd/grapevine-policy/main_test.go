package main

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/grapevine-net/grapevine/netpol"
)

// runArgs runs the command line with args and the environment env, and
// returns the options it would run with or its error.
func runArgs(t *testing.T, env map[string]string, args ...string) (options, error) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	var got options
	app := newApp(func(_ context.Context, o options, _ *slog.Logger) error { got = o; return nil })
	var out bytes.Buffer
	app.Writer, app.ErrWriter = &out, &out
	err := app.RunContext(context.Background(), append([]string{"grapevine-policy"}, args...))
	return got, err
}

func TestOptions(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want options // NodeName checked only when set here
		err  string
	}{
		{name: "defaults: the run directory's socket", args: []string{"--node-name", "n1"},
			want: options{NodeName: "n1", RunDir: "/run/grapevine", Socket: "/run/grapevine/policy.sock", MetricsAddr: DefaultMetricsAddr}},
		{name: "socket follows the run directory", args: []string{"--node-name", "n1", "--run-dir", "/run/gv"},
			want: options{NodeName: "n1", RunDir: "/run/gv", Socket: "/run/gv/policy.sock", MetricsAddr: DefaultMetricsAddr}},
		{name: "empty socket from the environment: policy off", env: map[string]string{"GRAPEVINE_POLICY_SOCKET": "", "GRAPEVINE_NODE_NAME": "n2"},
			want: options{NodeName: "n2", RunDir: "/run/grapevine", Socket: "", MetricsAddr: DefaultMetricsAddr}},
		{name: "kubeconfig", args: []string{"--node-name", "n1", "--kubeconfig", "/etc/k.conf", "--metrics-addr", ""},
			want: options{NodeName: "n1", RunDir: "/run/grapevine", Socket: "/run/grapevine/policy.sock", Kubeconfig: "/etc/k.conf"}},
		{name: "relative socket", args: []string{"--policy-socket", "policy.sock"}, err: `--policy-socket "policy.sock" must be an absolute path`},
		{name: "relative run directory", args: []string{"--run-dir", "run"}, err: `--run-dir "run" must be an absolute path`},
		{name: "metrics address without port", args: []string{"--metrics-addr", "9963"}, err: `--metrics-addr "9963" is not host:port`},
		{name: "log level", args: []string{"--log-level", "loud"}, err: `--log-level "loud" is not a level`},
		{name: "argument", args: []string{"enforce"}, err: `takes no arguments, got "enforce"`},
		{name: "unknown flag", args: []string{"--network-policy"}, err: "see grapevine-policy --help"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := runArgs(t, tt.env, tt.args...)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Errorf("error %v, want one saying %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("options %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestRemoveTableWhenPolicyIsOff: with policy off, the table a previous
// run left goes, since its denial of unknown addresses would cut off every
// new pod, which the plugin no longer announces.
func TestRemoveTableWhenPolicyIsOff(t *testing.T) {
	kernel := &netpol.FakeKernel{}
	if err := kernel.Apply(netpol.Ruleset{Unknown: []netpol.AddrRange{{First: netip.MustParseAddr("10.244.0.1"), Last: netip.MustParseAddr("10.244.0.254")}}}); err != nil {
		t.Fatal(err)
	}
	removeTable(kernel, slog.New(slog.DiscardHandler))
	if _, exists := kernel.Current(); exists {
		t.Error("the previous run's policy table is still in force")
	}
}
