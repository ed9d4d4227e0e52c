// Command bench runs Grapevine's benchmarks and prints one table in which
// every figure stands beside its peer: the reference CNI plugins measured in
// the same run, the bare host path, or a published anchor. It writes the
// same figures as JSON. It needs root (network namespaces) and the binaries
// `make build cni-plugins` puts in bin/; `make bench` runs it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/grapevine-net/grapevine/e2e/bench"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		binDir       = flag.String("bin-dir", envOr("GRAPEVINE_BIN_DIR", "bin"), "directory with the grapevine binary")
		cniDir       = flag.String("cni-dir", envOr("GRAPEVINE_CNI_PATH", "bin/cni"), "directory with grapevine-cni, grapevine-ipam, ptp, host-local and portmap")
		out          = flag.String("o", "bench-results.json", "where to write the figures as JSON")
		only         = flag.String("only", "", "comma-separated measurements to run (cni,routes,probes,mesh,lab,routed,crash,ipv6,netpol); empty: all")
		pods         = flag.Int("pods", 200, "pods per CNI chain")
		dualPods     = flag.Int("dual-stack-pods", 20, "pods per chain of the dual-stack CNI run (ptp waits ~1.8 s for DAD per pod); 0: skip it")
		portmap      = flag.Bool("portmap", false, "chain portmap after both CNI plugins")
		joinTrials   = flag.Int("join-trials", 5, "trials of each join and leave")
		crashTrials  = flag.Int("crash-trials", 5, "crash trials")
		frozenTrial  = flag.Int("frozen-trials", 5, "trials of an agent frozen for -freeze")
		restarts     = flag.Int("restart-trials", 5, "agent restarts counted in lost pod pings")
		freeze       = flag.Duration("freeze", 30*time.Second, "how long an agent is frozen (SIGSTOP) in each frozen trial")
		idle         = flag.Duration("idle", 60*time.Second, "window over which idle CPU is measured")
		iperf        = flag.Duration("iperf", 5*time.Second, "duration of each iperf3 run")
		iperfRounds  = flag.Int("iperf-rounds", 8, "iperf3 runs of each path, alternating")
		policyApply  = flag.Int("policy-apply-trials", 11, "compile+apply trials of the 1,000-pod x 200-policy update")
		connWindow   = flag.Duration("conn-window", 3*time.Second, "how long each round of new TCP connections lasts, with and without policies")
		connRounds   = flag.Int("conn-rounds", 8, "rounds of new TCP connections with policies, and as many without, alternating")
		meshNodes    = flag.String("mesh-nodes", "64,256", "comma-separated sizes of the in-process mesh, one simulation each (1000: see docs/benchmarks.md, it does not converge on 2 cores)")
		meshDilation = flag.String("mesh-dilation", "auto", "comma-separated time dilation of each mesh size (auto: bench.MeshDilation)")
		meshSteady   = flag.Duration("mesh-steady", 10*time.Second, "simulated window over which steady traffic is counted")
		meshTimeout  = flag.Duration("mesh-timeout", 5*time.Minute, "how long (wall time) each in-process mesh may take to converge")
		cpuProfile   = flag.String("cpuprofile", "", "write a CPU profile of this process (the in-process mesh, the CNI driver) to this file")
		memProfile   = flag.String("memprofile", "", "write a heap profile of each in-process mesh, taken once it has converged, to this file with the mesh size appended (-256)")
		verbose      = flag.Bool("v", false, "log progress in detail")
	)
	flag.Parse()

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	sel := map[string]bool{}
	for _, s := range strings.Split(*only, ",") {
		if s = strings.TrimSpace(s); s != "" {
			sel[s] = true
		}
	}
	want := func(name string) bool { return len(sel) == 0 || sel[name] }
	for name := range sel {
		if !slices.Contains([]string{"cni", "routes", "probes", "mesh", "lab", "routed", "crash", "ipv6", "netpol"}, name) {
			return fmt.Errorf("unknown measurement %q in -only", name)
		}
	}

	meshes, err := bench.ParseMeshSizes(*meshNodes, *meshDilation)
	if err != nil {
		return err
	}

	bins, err := filepath.Abs(*binDir)
	if err != nil {
		return err
	}
	cni, err := filepath.Abs(*cniDir)
	if err != nil {
		return err
	}
	if err := checkPrerequisites(bins, cni, want); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	rep := &bench.Report{Started: time.Now(), Machine: bench.DescribeMachine()}
	measure := func(name string, f func() ([]bench.Row, error)) {
		if ctx.Err() != nil {
			return
		}
		log.Info("measuring", "what", name)
		t0 := time.Now()
		rows, err := f()
		if err != nil {
			log.Error("measurement failed", "what", name, "err", err)
			rep.Errors = append(rep.Errors, fmt.Sprintf("%s: %v", name, err))
		}
		rep.Add(rows...)
		log.Info("measured", "what", name, "took", time.Since(t0).Round(time.Millisecond))
	}
	if want("cni") {
		measure("CNI ADD/DEL", func() ([]bench.Row, error) {
			return bench.MeasureCNI(ctx, bench.CNIConfig{CNIPath: []string{cni}, Pods: *pods, Portmap: *portmap, DualStackPods: *dualPods})
		})
	}
	if want("lab") {
		measure("lab: join, leave, crash, frozen and restarted agent, idle, data path", func() ([]bench.Row, error) {
			return bench.MeasureLab(ctx, bench.LabConfig{
				BinDir: bins, CNIPath: []string{cni}, JoinTrials: *joinTrials, CrashTrials: *crashTrials,
				FrozenTrials: *frozenTrial, Freeze: *freeze, RestartTrials: *restarts,
				IdleWindow: *idle, IperfDuration: *iperf, IperfRounds: *iperfRounds, Logger: log,
			})
		})
	}
	if want("routed") {
		measure("routed lab: cross-subnet join, VXLAN data path", func() ([]bench.Row, error) {
			return bench.MeasureRouted(ctx, bench.LabConfig{
				BinDir: bins, CNIPath: []string{cni}, JoinTrials: *joinTrials,
				IperfDuration: *iperf, IperfRounds: *iperfRounds, Logger: log,
			})
		})
	}
	if want("crash") {
		measure("routed lab: crashes of direct and VXLAN peers, one and two at once; a frozen agent behind the router", func() ([]bench.Row, error) {
			return bench.MeasureCrashes(ctx, bench.LabConfig{
				BinDir: bins, CNIPath: []string{cni}, CrashTrials: *crashTrials,
				FrozenTrials: *frozenTrial, Freeze: *freeze, Logger: log,
			})
		})
	}
	if want("ipv6") {
		measure("dual-stack lab: IPv6 data path, IPv6 crash withdrawal", func() ([]bench.Row, error) {
			return bench.MeasureIPv6(ctx, bench.LabConfig{
				BinDir: bins, CNIPath: []string{cni}, CrashTrials: *crashTrials,
				IperfDuration: *iperf, IperfRounds: *iperfRounds, Logger: log,
			})
		})
	}
	if want("netpol") {
		measure("NetworkPolicy: a large update in one transaction, new connections with policies", func() ([]bench.Row, error) {
			return bench.MeasureNetpol(ctx, bench.NetpolConfig{
				BinDir: bins, CNIPath: []string{cni}, ApplyTrials: *policyApply,
				ConnWindow: *connWindow, ConnRounds: *connRounds, Logger: log,
			})
		})
	}
	if want("routes") {
		measure("route programming", func() ([]bench.Row, error) {
			return bench.MeasureRoutes(ctx, bench.RoutesConfig{Peers: 2000, Trials: 7, NoopTrials: 51})
		})
	}
	if want("probes") {
		measure("data-path probes", func() ([]bench.Row, error) {
			return bench.MeasureProbes(ctx, bench.ProbeConfig{Peers: 256, Rounds: 500})
		})
	}
	// Last: a cluster that cannot converge may leave goroutines behind
	// until this process exits.
	if want("mesh") {
		for _, m := range meshes {
			measure(fmt.Sprintf("%d agents in one process, time dilated %gx", m.Nodes, m.Dilation.Factor()), func() ([]bench.Row, error) {
				m.Steady, m.Timeout, m.Logger = *meshSteady, *meshTimeout, log
				if *memProfile != "" {
					path := fmt.Sprintf("%s-%d", *memProfile, m.Nodes)
					m.Converged = func() {
						if err := writeHeapProfile(path); err != nil {
							log.Error("heap profile", "err", err)
						}
					}
				}
				return bench.MeasureMesh(ctx, m)
			})
		}
	}
	rep.Machine.LoadEnd = bench.LoadAverage()
	rep.Elapsed = time.Since(rep.Started).Round(time.Second).String()
	rep.SortRows()

	fmt.Println()
	if err := rep.Print(os.Stdout); err != nil {
		return err
	}
	if err := rep.WriteJSON(*out); err != nil {
		return err
	}
	fmt.Printf("\nfigures written to %s\n", *out)
	if ctx.Err() != nil {
		return errors.New("interrupted")
	}
	if len(rep.Errors) > 0 {
		return fmt.Errorf("%d measurements failed", len(rep.Errors))
	}
	return nil
}

// writeHeapProfile writes the heap profile of this process to path, after
// a garbage collection so that it shows what is live.
func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// checkPrerequisites says exactly what is missing before anything starts.
func checkPrerequisites(binDir, cniDir string, want func(string) bool) error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root: the benchmarks create network namespaces (run as root, e.g. sudo make bench)")
	}
	var pkgs []string
	if _, err := exec.LookPath("ip"); err != nil {
		pkgs = append(pkgs, "iproute2")
	}
	if want("lab") || want("routed") || want("ipv6") {
		if _, err := exec.LookPath("iperf3"); err != nil {
			pkgs = append(pkgs, "iperf3")
		}
	}
	if len(pkgs) > 0 {
		missing = append(missing, "packages: apt-get install -y "+strings.Join(pkgs, " "))
	}
	var bins []string
	if want("lab") || want("routed") || want("crash") || want("ipv6") || want("netpol") {
		bins = append(bins, filepath.Join(binDir, "grapevine"))
	}
	if want("cni") || want("lab") || want("routed") || want("crash") || want("ipv6") || want("netpol") {
		for _, p := range []string{"grapevine-cni", "grapevine-ipam", "ptp", "host-local", "portmap"} {
			bins = append(bins, filepath.Join(cniDir, p))
		}
	}
	for _, b := range bins {
		if _, err := os.Stat(b); err != nil {
			missing = append(missing, fmt.Sprintf("%s: run `make build cni-plugins` first", b))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing prerequisites:\n  %s", strings.Join(missing, "\n  "))
	}
	return nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
