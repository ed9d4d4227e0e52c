package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/runtimes"
	"github.com/grapevine-net/grapevine/internal/testneeds"
)

// runpSamples is the least number of sandboxes measured per candidate.
const runpSamples = 5

// BenchmarkCrictlRunp measures the time from `crictl runp` to a ready
// sandbox under containerd on one lab host, with Grapevine (the agent's
// conflist) beside the reference ptp and host-local plugins, both chained
// with portmap. Two containerd instances run side by side, one per
// conflist, and sandboxes alternate between them. It reports the median of
// at least runpSamples sandboxes per candidate, in milliseconds. Run it
// through `make bench`, which provides the binaries.
func BenchmarkCrictlRunp(b *testing.B) {
	testneeds.Root(b, "the lab (network namespaces)")
	binDir, cniPath := os.Getenv("GRAPEVINE_BIN_DIR"), os.Getenv("GRAPEVINE_CNI_PATH")
	if binDir == "" || cniPath == "" {
		b.Skip("GRAPEVINE_BIN_DIR and GRAPEVINE_CNI_PATH not set: run through make bench")
	}
	tools := runtimes.Require(b, "containerd", "containerd-shim-runc-v2", "runc", "ctr", "crictl")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	l, err := lab.New(ctx, lab.Config{Hosts: 1, BinDir: binDir, CNIPath: filepath.SplitList(cniPath),
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := l.Close(ctx); err != nil {
			b.Error(err)
		}
	})
	h := l.Host(1)
	if err := l.StartAgents(ctx); err != nil {
		b.Fatal(err)
	}
	if _, err := h.WaitReady(ctx); err != nil {
		b.Fatal(err)
	}

	img := writeImages(b)
	gvDirs := cniDirs(b, l, h)
	ptpDirs := runtimes.CNIDirs{ConfDir: filepath.Join(b.TempDir(), "net.d"), BinDir: gvDirs.BinDir}
	if err := writeRunpPTPConf(ptpDirs.ConfDir, filepath.Join(h.Dir, "ptp-ipam")); err != nil {
		b.Fatal(err)
	}
	candidates := []struct {
		name string
		cr   *runtimes.Containerd
	}{
		{"grapevine", startContainerdWith(b, ctx, newRoot(b, ctx, l, h, "bench-gv"), gvDirs, tools["crictl"], img)},
		{"ptp", startContainerdWith(b, ctx, newRoot(b, ctx, l, h, "bench-ptp"), ptpDirs, tools["crictl"], img)},
	}
	for _, c := range candidates {
		if err := waitNetworkReady(ctx, c.cr); err != nil {
			b.Fatal(err)
		}
		// The first sandbox also unpacks the pause image; not measured.
		if _, err := runpOnce(ctx, c.cr, "warm"); err != nil {
			b.Fatalf("%s: %v", c.name, err)
		}
	}

	samples := max(b.N, runpSamples)
	took := make([][]time.Duration, len(candidates))
	b.ResetTimer()
	for i := range samples {
		for j := range candidates {
			// Alternate the order so drift falls on both alike.
			c := (i + j) % len(candidates)
			d, err := runpOnce(ctx, candidates[c].cr, fmt.Sprintf("p%d", i))
			if err != nil {
				b.Fatalf("%s: %v", candidates[c].name, err)
			}
			took[c] = append(took[c], d)
		}
	}
	b.StopTimer()
	for c, ds := range took {
		slices.Sort(ds)
		b.ReportMetric(float64(ds[len(ds)/2].Microseconds())/1000, "ms-median-"+candidates[c].name)
		b.Logf("%s: runp to ready sandbox over %d sandboxes: median %v, min %v, max %v",
			candidates[c].name, len(ds), ds[len(ds)/2], ds[0], ds[len(ds)-1])
	}
}

// runpOnce starts a sandbox, returns how long `crictl runp` took to return
// it ready, and removes it again.
func runpOnce(ctx context.Context, cr *runtimes.Containerd, name string) (time.Duration, error) {
	sb, err := cr.RunPodSandbox(ctx, name)
	if err != nil {
		return 0, err
	}
	return sb.RunpTook, cr.RemovePod(ctx, sb.ID)
}

// writeRunpPTPConf writes the reference conflist: ptp with host-local on a
// range outside the pool, chained with portmap like the agent's.
func writeRunpPTPConf(dir, ipamDir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "benchptp", "plugins": [
  {"type": "ptp", "ipMasq": false, "mtu": 1500,
   "ipam": {"type": "host-local", "dataDir": %q,
            "ranges": [[{"subnet": "10.99.2.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}`, ipamDir)
	return os.WriteFile(filepath.Join(dir, "10-ptp.conflist"), []byte(conf), 0o644)
}
