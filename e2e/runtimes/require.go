package runtimes

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// CrictlVersion is the crictl the tests are run with (.ci/run, Makefile).
const CrictlVersion = "v1.34.0"

// Require returns the paths of the named commands. A missing command skips
// t, naming the Debian packages to install, except under CI (CI=true),
// where the runtime tests must run and a missing command fails t. crictl is
// looked up in $GRAPEVINE_BIN_DIR (where `make crictl` puts it) before
// $PATH.
func Require(t testing.TB, names ...string) map[string]string {
	t.Helper()
	paths := map[string]string{}
	var missing []string
	for _, name := range names {
		if dir := os.Getenv("GRAPEVINE_BIN_DIR"); dir != "" {
			if p := filepath.Join(dir, name); isExecutable(p) {
				paths[name] = p
				continue
			}
		}
		p, err := exec.LookPath(name)
		if err != nil {
			missing = append(missing, name)
			continue
		}
		paths[name] = p
	}
	if _, err := os.Stat(BusyboxPath); err != nil {
		missing = append(missing, BusyboxPath)
	}
	if len(missing) == 0 {
		return paths
	}
	msg := "missing " + strings.Join(missing, ", ") +
		": apt-get install containerd runc podman busybox-static, and `make crictl` or go install sigs.k8s.io/cri-tools/cmd/crictl@" + CrictlVersion
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI=true: the runtime tests must run)")
	}
	t.Skip(msg)
	return nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
