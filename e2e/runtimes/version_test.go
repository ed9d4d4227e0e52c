package runtimes

import (
	"os"
	"regexp"
	"testing"
)

// TestCrictlVersionMatchesMakefile: the tests say which crictl to install
// (Require's message), the Makefile installs one; they must be the same.
func TestCrictlVersionMatchesMakefile(t *testing.T) {
	makefile, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^CRICTL_VERSION\s*:?=\s*(\S+)`).FindSubmatch(makefile)
	if m == nil {
		t.Fatal("no CRICTL_VERSION in the Makefile")
	}
	if got := string(m[1]); got != CrictlVersion {
		t.Errorf("Makefile installs crictl %s, the runtime tests name %s", got, CrictlVersion)
	}
}
