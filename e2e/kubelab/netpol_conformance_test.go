//go:build kubernetes_e2e

package kubelab_test

import (
	"encoding/xml"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/runtimes"
)

// TestNetworkPolicyConformance runs Kubernetes' own NetworkPolicy e2e specs
// (test/e2e/network/netpol, built by netpol-e2e.sh as e2e-netpol.test, with
// agnhost) against the lab cluster running the manifest with enforcement on.
// `make e2e-netpol` runs it; it needs GRAPEVINE_NETPOL_BIN, the directory of
// e2e-netpol.test, agnhost and agnhost.version. GRAPEVINE_NETPOL_FOCUS and
// GRAPEVINE_NETPOL_SKIP are the suite's --ginkgo.focus and --ginkgo.skip,
// GRAPEVINE_NETPOL_REPORT the directory for its log and JUnit report.
func TestNetworkPolicyConformance(t *testing.T) {
	bin := os.Getenv("GRAPEVINE_NETPOL_BIN")
	if bin == "" {
		t.Fatal("GRAPEVINE_NETPOL_BIN must be set: run `make e2e-netpol`")
	}
	version, err := os.ReadFile(filepath.Join(bin, "agnhost.version"))
	if err != nil {
		t.Fatal(err)
	}
	report := os.Getenv("GRAPEVINE_NETPOL_REPORT")
	if report == "" {
		report = t.TempDir()
	}
	if err := os.MkdirAll(report, 0o755); err != nil {
		t.Fatal(err)
	}
	// The suite's pods run registry.k8s.io/e2e-test-images/agnhost:<version>
	// with IfNotPresent: imported, it is never pulled.
	agnhost := runtimes.Image{
		Ref:        "registry.k8s.io/e2e-test-images/agnhost:" + strings.TrimSpace(string(version)),
		Entrypoint: []string{"/agnhost", "pause"},
		Files:      map[string]string{"/agnhost": filepath.Join(bin, "agnhost")},
	}
	archive := filepath.Join(t.TempDir(), "agnhost.tar")
	if err := agnhost.WriteArchive(archive, runtimes.BusyboxPath); err != nil {
		t.Fatal(err)
	}
	timeout := 3 * time.Hour
	if d, ok := t.Deadline(); ok {
		timeout = time.Until(d) - time.Minute
	}
	ctx, k, l, image := startCluster(t, timeout, archive)
	installGrapevine(ctx, k, l, image)
	k.agentPods(ctx, image)

	focus, skip := os.Getenv("GRAPEVINE_NETPOL_FOCUS"), os.Getenv("GRAPEVINE_NETPOL_SKIP")
	if focus == "" {
		focus = `\[sig-network\] Netpol`
	}
	junit := filepath.Join(report, "junit.xml")
	logPath := filepath.Join(report, "e2e-netpol.log")
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	args := []string{
		"--ginkgo.focus=" + focus, "--ginkgo.v", "--ginkgo.no-color",
		"--ginkgo.junit-report=" + junit, "--ginkgo.timeout=" + timeout.String(),
		"--report-dir=" + report,
	}
	if skip != "" {
		args = append(args, "--ginkgo.skip="+skip)
	}
	cmd := k.c.Command(ctx, filepath.Join(bin, "e2e-netpol.test"), args...)
	cmd.Stdout, cmd.Stderr = log, log
	started := time.Now()
	t.Logf("running e2e-netpol.test %s (log: %s)", strings.Join(args, " "), logPath)
	runErr := cmd.Run()
	took := time.Since(started).Round(time.Second)

	suites, err := readJUnit(junit)
	if err != nil {
		t.Fatalf("e2e-netpol.test after %s: %v; no report: %v", took, runErr, err)
	}
	counts := map[string]int{}
	for _, s := range suites.Suites {
		for _, c := range s.Cases {
			if strings.HasPrefix(c.Name, "[Report") {
				continue // the suite's reporters, not specs
			}
			status := c.status()
			counts[status]++
			if status == "skipped" {
				continue
			}
			line := fmt.Sprintf("%s %.0fs %s", status, c.Time, c.Name)
			switch {
			case c.Failure != nil:
				line += ": " + firstLine(c.Failure.Message)
			case c.Error != nil:
				line += ": " + firstLine(c.Error.Message)
			}
			t.Log(line)
		}
	}
	t.Logf("upstream NetworkPolicy specs: %d passed, %d failed, %d skipped in %s (focus %q, skip %q)",
		counts["passed"], counts["failed"], counts["skipped"], took, focus, skip)
	if runErr != nil {
		t.Errorf("e2e-netpol.test: %v (log: %s)", runErr, logPath)
	}
	if counts["passed"]+counts["failed"] == 0 {
		t.Errorf("no spec matched focus %q and skip %q", focus, skip)
	}
}

type junitReport struct {
	Suites []struct {
		Cases []junitCase `xml:"testcase"`
	} `xml:"testsuite"`
}

type junitCase struct {
	Name    string  `xml:"name,attr"`
	Time    float64 `xml:"time,attr"`
	Status  string  `xml:"status,attr"`
	Skipped *struct {
		Message string `xml:"message,attr"`
	} `xml:"skipped"`
	Failure *struct {
		Message string `xml:"message,attr"`
	} `xml:"failure"`
	Error *struct {
		Message string `xml:"message,attr"`
	} `xml:"error"`
}

func (c junitCase) status() string {
	switch {
	case c.Skipped != nil:
		return "skipped"
	case c.Failure != nil || c.Error != nil:
		return "failed"
	}
	return "passed"
}

func readJUnit(path string) (junitReport, error) {
	var r junitReport
	data, err := os.ReadFile(path)
	if err != nil {
		return r, err
	}
	return r, xml.Unmarshal(data, &r)
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}
