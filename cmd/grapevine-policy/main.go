// Command grapevine-policy enforces Kubernetes NetworkPolicy for one node's
// pods (package netpol/enforce): it watches Pods, Namespaces and
// NetworkPolicies, keeps nftables table inet grapevine-policy in line with
// them, and answers the CNI plugin's admission of each new pod on a Unix
// socket. It runs beside the agent, as the DaemonSet's second container
// sharing the agent's run directory; the agent, given the same socket with
// --policy-socket, names it in node.json, which is how the plugin finds it.
// The agent carries no Kubernetes client library, so hosts without
// Kubernetes run a lean agent alone.
//
// With --socket set to empty, network policy is off: grapevine-policy
// removes the table a previous run left (whose denial of unknown addresses
// would cut off every new pod, which the plugin no longer announces) and
// then only serves its health endpoint.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/urfave/cli/v2"

	"github.com/grapevine-net/grapevine/internal/daemonflag"
	"github.com/grapevine-net/grapevine/netpol"
	"github.com/grapevine-net/grapevine/netpol/enforce"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// DefaultMetricsAddr is where /metrics and /healthz are served unless told
// otherwise: beside the agent's 127.0.0.1:9962.
const DefaultMetricsAddr = "127.0.0.1:9963"

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := newApp(run).RunContext(ctx, os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "grapevine-policy:", err)
		os.Exit(1)
	}
}

// options are the flags after parsing and defaults.
type options struct {
	NodeName string
	RunDir   string
	// Socket is the admission socket; "" turns network policy off.
	Socket      string
	Kubeconfig  string
	MetricsAddr string
}

// runner runs with validated options until ctx ends; tests of the command
// line pass one that starts nothing.
type runner func(ctx context.Context, o options, log *slog.Logger) error

// newApp builds the command line. Every error it returns is one sentence
// for the operator.
func newApp(run runner) *cli.App {
	return &cli.App{
		Name:    "grapevine-policy",
		Usage:   "enforce Kubernetes NetworkPolicy for this node's pods in nftables table inet " + netpol.TableName + ", beside the grapevine agent",
		Version: version,
		// One command: no subcommands, no help command.
		UsageText:       "grapevine-policy [options]",
		HideHelpCommand: true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "node-name", EnvVars: daemonflag.EnvVars("node-name"), Usage: "this node's name in Kubernetes: its pods are the ones enforced (default: hostname)"},
			&cli.StringFlag{Name: "run-dir", Value: nodestate.DefaultRunDir, EnvVars: daemonflag.EnvVars("run-dir"), Usage: "the agent's run directory, whose node.json says which blocks this node hands out"},
			&cli.StringFlag{Name: "policy-socket", Aliases: []string{"socket"}, EnvVars: daemonflag.EnvVars("policy-socket"),
				Usage: "the admission socket the CNI plugin asks before each new pod starts; give the agent the same --policy-socket (default: " + enforce.SocketName + " in --run-dir; empty: network policy off, and the table is removed)"},
			&cli.StringFlag{Name: "kubeconfig", EnvVars: daemonflag.EnvVars("kubeconfig"), Usage: "kubeconfig file to reach the Kubernetes API with (default: the in-cluster service account)"},
			&cli.StringFlag{Name: "metrics-addr", Value: DefaultMetricsAddr, EnvVars: daemonflag.EnvVars("metrics-addr"), Usage: "address for /metrics and /healthz (empty: off)"},
			&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: daemonflag.EnvVars("log-level"), Usage: "debug, info, warn or error"},
		},
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return fmt.Errorf("%w (see grapevine-policy --help)", err)
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("grapevine-policy takes no arguments, got %q (flags start with --; see grapevine-policy --help)", strings.Join(c.Args().Slice(), " "))
			}
			log, err := daemonflag.Logger(c.String("log-level"), c.App.ErrWriter)
			if err != nil {
				return err
			}
			o, err := parseOptions(c)
			if err != nil {
				return err
			}
			return run(c.Context, o, log)
		},
	}
}

func parseOptions(c *cli.Context) (options, error) {
	o := options{
		NodeName:    c.String("node-name"),
		RunDir:      c.String("run-dir"),
		Socket:      c.String("policy-socket"),
		Kubeconfig:  c.String("kubeconfig"),
		MetricsAddr: c.String("metrics-addr"),
	}
	if !filepath.IsAbs(o.RunDir) {
		return o, fmt.Errorf("--run-dir %q must be an absolute path", o.RunDir)
	}
	// Set to empty (GRAPEVINE_POLICY_SOCKET=""), the socket turns policy
	// off; unset, it is the run directory's.
	if !c.IsSet("policy-socket") {
		o.Socket = filepath.Join(o.RunDir, enforce.SocketName)
	}
	if o.Socket != "" && !filepath.IsAbs(o.Socket) {
		return o, fmt.Errorf("--policy-socket %q must be an absolute path", o.Socket)
	}
	if o.NodeName == "" {
		var err error
		if o.NodeName, err = os.Hostname(); err != nil {
			return o, fmt.Errorf("--node-name not set and hostname unknown: %w", err)
		}
	}
	if o.MetricsAddr != "" {
		_, port, err := net.SplitHostPort(o.MetricsAddr)
		if err == nil {
			_, err = strconv.ParseUint(port, 10, 16)
		}
		if err != nil {
			return o, fmt.Errorf("--metrics-addr %q is not host:port such as %s (empty turns the endpoints off)", o.MetricsAddr, DefaultMetricsAddr)
		}
	}
	return o, nil
}

// run enforces until ctx ends, or, with policy off, removes the table and
// waits.
func run(ctx context.Context, o options, log *slog.Logger) error {
	oneProc()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	kernel := netpol.NewNFTKernel()
	log = log.With("node", o.NodeName)
	var e *enforce.Enforcer
	if o.Socket != "" {
		api, err := kubeAPI(o.Kubeconfig)
		if err != nil {
			return err
		}
		e, err = enforce.New(enforce.Config{
			API: api, NodeName: o.NodeName, Socket: o.Socket, Kernel: kernel,
			Blocks: enforce.NodeStateBlocks(o.RunDir), Registerer: reg, Logger: log,
		})
		if err != nil {
			return err
		}
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	serving, err := serveMetrics(ctx, o.MetricsAddr, reg, log)
	if err != nil {
		return err
	}
	defer serving.Wait()
	defer stop() // before Wait: deferred calls run last first
	if e == nil {
		removeTable(kernel, log)
		<-ctx.Done()
		return nil
	}
	log.Info("starting grapevine-policy", "version", version, "socket", o.Socket, "runDir", o.RunDir)
	if err := e.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("network policy enforcement stopped (the last ruleset stays in force): %w", err)
	}
	return nil
}

// kubeAPI is the API of the kubeconfig file at path, or the in-cluster one
// without it.
func kubeAPI(path string) (enforce.API, error) {
	const userAgent = "grapevine-policy"
	if path != "" {
		return enforce.KubeconfigAPI(path, userAgent)
	}
	api, err := enforce.InClusterAPI(userAgent)
	if err != nil {
		return api, fmt.Errorf("%w (outside a pod, give --kubeconfig)", err)
	}
	return api, nil
}

// removeTable removes the table a previous run left, now that policy is
// off: its policies would go stale, and its denial of unknown addresses
// would cut off every new pod, which the plugin no longer announces.
func removeTable(kernel netpol.Kernel, log *slog.Logger) {
	if err := kernel.Remove(); err != nil {
		log.Warn("network policy is off, but a previous run's table may still be in force: delete it with `nft delete table inet "+netpol.TableName+"`", "err", err)
		return
	}
	log.Info("network policy is off (empty --policy-socket): table inet " + netpol.TableName + " removed; the agent's --policy-socket must be empty too")
}

// serveMetrics serves /metrics and /healthz on addr ("" serves nothing)
// until ctx ends.
func serveMetrics(ctx context.Context, addr string, reg *prometheus.Registry, log *slog.Logger) (*sync.WaitGroup, error) {
	var wg sync.WaitGroup
	if addr == "" {
		return &wg, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "addr", addr, "err", err)
		}
	})
	wg.Go(func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shutdownCtx)
	})
	return &wg, nil
}

// oneProc runs on one processor unless the operator set GOMAXPROCS, as the
// agent does: enforcement does little and nothing in parallel, and idle it
// costs what it is woken for.
func oneProc() {
	if _, set := os.LookupEnv("GOMAXPROCS"); !set {
		runtime.GOMAXPROCS(1)
	}
}
