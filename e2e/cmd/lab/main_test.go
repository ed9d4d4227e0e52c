package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/internal/testneeds"
)

// buildLab checks what running the lab command needs (root, the built
// binaries, no demo lab up already, since up refuses a second), builds it,
// and returns its path with a context for the test's runs of it.
func buildLab(t *testing.T) (context.Context, string) {
	t.Helper()
	testneeds.Root(t, "the lab (network namespaces)")
	binDir, cniPath := os.Getenv("GRAPEVINE_BIN_DIR"), os.Getenv("GRAPEVINE_CNI_PATH")
	if binDir == "" || cniPath == "" {
		t.Skip("needs the built binaries: set GRAPEVINE_BIN_DIR and GRAPEVINE_CNI_PATH (make test does)")
	}
	recs, err := lab.Records()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.OwnerPID == 0 {
			t.Skipf("a demo lab (%s) is up on this machine, and up refuses a second one", r.ID)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	t.Cleanup(cancel)
	labBin := filepath.Join(t.TempDir(), "lab")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", labBin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build lab: %v\n%s", err, out)
	}
	return ctx, labBin
}

// TestUpDown runs the demo as `make demo` and `make demo-down` do: up leaves
// a working lab behind after exiting; a second up says the lab is up and
// exits 0; down removes all of it and returns only once the agents have
// exited and been reaped.
func TestUpDown(t *testing.T) {
	ctx, labBin := buildLab(t)
	out, err := exec.CommandContext(ctx, labBin, "up", "--hosts", "2", "--pods", "1").CombinedOutput()
	m := regexp.MustCompile(`lab ` + lab.NamePrefix + `([0-9a-f]+):`).FindSubmatch(out)
	if m != nil {
		id := string(m[1])
		t.Cleanup(func() { exec.Command(labBin, "down", "--id", id).Run() })
	}
	if err != nil {
		t.Fatalf("lab up: %v\n%s", err, out)
	}
	if m == nil {
		t.Fatalf("lab up did not name its lab:\n%s", out)
	}
	id := string(m[1])
	t.Logf("lab up:\n%s", out)
	for _, want := range []string{
		"proto 74",
		"blackhole",
		"the server saw us as 10.244.",        // pod to pod: no NAT
		"the server saw us as 172.16.254.1\n", // pod to outside: masqueraded
		"make demo-down",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("lab up output lacks %q", want)
		}
	}

	// The lab outlives up: the agents answer and the echo server still runs.
	prefix := lab.NamePrefix + id + "-"
	h1 := lab.Namespace{Name: prefix + "h1"}
	pids, err := exec.CommandContext(ctx, "ip", "netns", "pids", h1.Name).Output()
	if err != nil {
		t.Fatal(err)
	}
	agents := 0
	for _, pid := range strings.Fields(string(pids)) {
		cmdline, _ := os.ReadFile(filepath.Join("/proc", pid, "cmdline"))
		if strings.Contains(string(cmdline), "grapevine\x00agent") {
			agents++
		}
	}
	if agents != 1 {
		t.Errorf("%d agents run in %s after up exited, want 1", agents, h1.Name)
	}
	var agentPIDs []int
	for _, name := range []string{prefix + "h1", prefix + "h2"} {
		pids, err := exec.CommandContext(ctx, "ip", "netns", "pids", name).Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range strings.Fields(string(pids)) {
			if pid, err := strconv.Atoi(f); err == nil {
				agentPIDs = append(agentPIDs, pid)
			}
		}
	}

	again, err := exec.CommandContext(ctx, labBin, "up", "--hosts", "2", "--pods", "1").CombinedOutput()
	if err != nil || !strings.Contains(string(again), "lab "+lab.NamePrefix+id+" is already up") ||
		!strings.Contains(string(again), "make demo-down") {
		t.Errorf("second lab up: %v, want exit 0 saying the lab is up:\n%s", err, again)
	}
	if _, err := h1.Ping(ctx, netip.MustParseAddr("172.16.254.2")); err != nil {
		t.Errorf("h1 -> h2 after up exited: %v", err)
	}

	out, err = exec.CommandContext(ctx, labBin, "down", "--id", id).CombinedOutput()
	if err != nil {
		t.Fatalf("lab down: %v\n%s", err, out)
	}
	if names, _ := lab.Namespaces(prefix); len(names) != 0 {
		t.Errorf("namespaces left after down: %v", names)
	}
	for _, pid := range agentPIDs {
		if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			t.Errorf("process %d of the lab is still in the process table after down: %s", pid, stat)
		}
	}
	if _, err := os.Stat(filepath.Join(lab.RegistryDir, id)); !os.IsNotExist(err) {
		t.Errorf("lab directory left after down (%v)", err)
	}
}

// TestUpDualStack runs the demo as `make demo-dual-stack` does: the pods
// ping each other over IPv6 as well, the outside host sees a pod's IPv6
// connection come from its node's IPv6 address, and the printed commands
// include the IPv6 ping; down removes the lab.
func TestUpDualStack(t *testing.T) {
	ctx, labBin := buildLab(t)
	out, err := exec.CommandContext(ctx, labBin, "up", "--hosts", "2", "--pods", "1", "--dual-stack").CombinedOutput()
	m := regexp.MustCompile(`lab ` + lab.NamePrefix + `([0-9a-f]+):`).FindSubmatch(out)
	if m != nil {
		id := string(m[1])
		t.Cleanup(func() { exec.Command(labBin, "down", "--id", id).Run() })
	}
	if err != nil {
		t.Fatalf("lab up --dual-stack: %v\n%s", err, out)
	}
	if m == nil {
		t.Fatalf("lab up did not name its lab:\n%s", out)
	}
	t.Logf("lab up --dual-stack:\n%s", out)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`\$ ping fd00:10:244:[0-9a-f:]+   # from`),
		regexp.MustCompile(`reply from fd00:10:244:[0-9a-f:]+: seq=3`),
		regexp.MustCompile(`the server saw us as 172\.16\.254\.1\n`),
		regexp.MustCompile(`the server saw us as fd00:172:16:254::1\n`),
		regexp.MustCompile(`Over IPv6:\n  ip netns exec \S+ \S+ ping fd00:10:244:`),
	} {
		if !want.Match(out) {
			t.Errorf("lab up --dual-stack output lacks %s", want)
		}
	}
	if out, err := exec.CommandContext(ctx, labBin, "down", "--id", string(m[1])).CombinedOutput(); err != nil {
		t.Fatalf("lab down: %v\n%s", err, out)
	}
}
