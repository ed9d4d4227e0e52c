// Package labtest runs lab-based tests: it finds or builds the binaries a
// lab drives, gives every test its own lab with cleanup (also on SIGINT,
// SIGTERM and, on the next run, after a timeout), and shows the agents' logs
// of a failed test.
package labtest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/internal/testneeds"
)

// Env is the environment shared by one test binary's lab tests.
type Env struct {
	tmp string // build output when binaries are not provided

	refOnce sync.Once
	refErr  error
	ownOnce sync.Once
	ownErr  error

	mu   sync.Mutex
	labs map[*lab.Lab][]func() // each lab with what runs before it closes
}

// NewEnv returns the environment for one test binary; its Main is TestMain.
func NewEnv() *Env { return &Env{labs: make(map[*lab.Lab][]func())} }

// BeforeClose has f run before l is removed, whether the test ends or the
// run is interrupted: for what a test started on the lab's hosts outside
// the lab's own processes (a Kubernetes cluster, say). The last added runs
// first.
func (e *Env) BeforeClose(l *lab.Lab, f func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.labs[l]; ok {
		e.labs[l] = append(e.labs[l], f)
	}
}

// runClosers runs what was registered for l with BeforeClose; e.mu held.
func (e *Env) runClosers(l *lab.Lab) {
	closers := e.labs[l]
	for i := len(closers) - 1; i >= 0; i-- {
		closers[i]()
	}
	e.labs[l] = nil
}

// Main runs the tests and exits. Without root it runs nothing that needs it:
// tests call Lab, which skips. It removes labs left behind by an earlier run
// that was killed, and on SIGINT or SIGTERM it removes this run's labs
// before exiting.
func (e *Env) Main(m *testing.M) {
	if os.Geteuid() == 0 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if ids, err := lab.RemoveOrphans(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "labtest: removing orphaned labs %v: %v\n", ids, err)
		} else if len(ids) > 0 {
			fmt.Fprintf(os.Stderr, "labtest: removed labs %v left by a killed run\n", ids)
		}
		cancel()
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		fmt.Fprintf(os.Stderr, "labtest: %v: removing labs\n", sig)
		e.closeAll()
		os.Exit(1)
	}()

	code := m.Run()
	e.closeAll()
	os.Exit(code)
}

func (e *Env) closeAll() {
	e.mu.Lock()
	defer e.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for l := range e.labs {
		e.runClosers(l)
		if err := l.Close(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "labtest: close lab %s: %v\n", l.ID, err)
		}
		delete(e.labs, l)
	}
	if e.tmp != "" {
		os.RemoveAll(e.tmp)
	}
}

// Options shape a test's lab.
type Options struct {
	Hosts int
	// Routed builds a second LAN behind a router, with Hosts2 hosts on it
	// (see lab.Config).
	Routed bool
	Hosts2 int
	// NoAgents leaves the agents stopped; otherwise every host's agent is
	// started and the test waits for a full mesh.
	NoAgents bool
	// CNIOnly needs only the CNI plugins, not the agent.
	CNIOnly bool
	// AgentArgs are appended to every host's agent command line.
	AgentArgs []string
	// AgentEnv is added to every host's agent environment.
	AgentEnv []string
}

// Lab builds a lab for t, removed when t ends. When t fails, the tail of
// every agent log is logged. It skips t when not run as root.
func (e *Env) Lab(t *testing.T, opt Options) *lab.Lab {
	t.Helper()
	testneeds.Root(t, "the lab (network namespaces)")
	binDir, cniPath := e.binaries(t, opt.CNIOnly)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := lab.New(ctx, lab.Config{
		Hosts:   opt.Hosts,
		Routed:  opt.Routed,
		Hosts2:  opt.Hosts2,
		BinDir:  binDir,
		CNIPath: cniPath,
		Logger:  slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatalf("build lab: %v", err)
	}
	for _, h := range l.Hosts() {
		h.ExtraArgs = opt.AgentArgs
		h.ExtraEnv = opt.AgentEnv
	}
	e.mu.Lock()
	e.labs[l] = nil
	e.mu.Unlock()
	t.Cleanup(func() {
		if t.Failed() {
			for _, h := range l.Hosts() {
				if _, err := os.Stat(h.LogPath()); err != nil {
					continue // no agent ever ran there
				}
				t.Logf("agent log of %s (last 40 lines):\n%s", h.Name, h.LogTail(40))
			}
		}
		e.mu.Lock()
		e.runClosers(l)
		delete(e.labs, l)
		e.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := l.Close(ctx); err != nil {
			t.Errorf("close lab: %v", err)
		}
	})
	if !opt.NoAgents && !opt.CNIOnly {
		if err := l.StartAgents(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := lab.WaitMesh(ctx, l.Hosts()); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// testWriter sends the lab's warnings to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// binaries returns the directory of the grapevine binaries (the agent and
// grapevine-policy) and the CNI plugin path: $GRAPEVINE_BIN_DIR and
// $GRAPEVINE_CNI_PATH when set (make test sets both), otherwise built once
// per test binary into a temporary directory.
// With cniOnly only the reference plugins are needed, so the harness can be
// tested while the grapevine binaries do not build.
func (e *Env) binaries(t *testing.T, cniOnly bool) (binDir string, cniPath []string) {
	t.Helper()
	binDir, cniDirs := os.Getenv("GRAPEVINE_BIN_DIR"), os.Getenv("GRAPEVINE_CNI_PATH")
	if binDir != "" && cniDirs != "" {
		return binDir, filepath.SplitList(cniDirs)
	}
	e.refOnce.Do(func() { e.refErr = e.buildReference() })
	if e.refErr != nil {
		t.Fatalf("no reference CNI plugins (set GRAPEVINE_CNI_PATH): %v", e.refErr)
	}
	bin, cni := filepath.Join(e.tmp, "bin"), filepath.Join(e.tmp, "cni")
	if !cniOnly {
		e.ownOnce.Do(func() { e.ownErr = e.buildOwn(bin, cni) })
		if e.ownErr != nil {
			t.Fatalf("no grapevine binaries (set GRAPEVINE_BIN_DIR and GRAPEVINE_CNI_PATH): %v", e.ownErr)
		}
	}
	return bin, []string{cni}
}

// referencePlugins are the upstream plugins the lab chains or compares with,
// at the version the Makefile pins.
var referencePlugins = []string{"meta/portmap", "main/loopback", "main/ptp", "ipam/host-local"}

const referencePluginsVersion = "v1.10.0"

func (e *Env) buildReference() (err error) {
	if e.tmp, err = os.MkdirTemp("", "gvl-bin-"); err != nil {
		return err
	}
	for _, p := range referencePlugins {
		cmd := exec.Command("go", "install", "github.com/containernetworking/plugins/plugins/"+p+"@"+referencePluginsVersion)
		cmd.Env = append(os.Environ(), "GOBIN="+filepath.Join(e.tmp, "cni"), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %w: %s", p, err, out)
		}
	}
	return nil
}

func (e *Env) buildOwn(bin, cni string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	for dir, pkgs := range map[string][]string{
		bin: {"./cmd/grapevine", "./cmd/grapevine-policy"}, // the image holds both
		cni: {"./cmd/grapevine-cni", "./cmd/grapevine-ipam"},
	} {
		cmd := exec.Command("go", append([]string{"build", "-o", dir + "/"}, pkgs...)...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %v: %w: %s", pkgs, err, out)
		}
	}
	return nil
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside the grapevine module")
	}
	return filepath.Dir(gomod), nil
}
