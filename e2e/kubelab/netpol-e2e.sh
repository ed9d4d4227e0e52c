#!/bin/sh
# Builds the upstream NetworkPolicy conformance specs
# (test/e2e/network/netpol of k8s.io/kubernetes) and agnhost, the image their
# pods run, from the Go module proxy alone, into $OUT (default
# .cache/kubernetes/<version>), the way binaries.sh builds the cluster.
#
# Upstream's e2e.test links every e2e package (storage, DRA, windows...);
# compiling that on a small machine takes most of an hour. The binary built
# here is a test main that imports the framework and the netpol package only:
# the same specs, the same flags (--kubeconfig, --ginkgo.focus, ...), a tenth
# of the code.
set -eu

K8S_VERSION=${K8S_VERSION:-v1.34.2}
OUT=${OUT:-.cache/kubernetes/$K8S_VERSION}
STAMP="$OUT/.built-netpol-$K8S_VERSION"

if [ -f "$STAMP" ]; then
	echo "netpol e2e and agnhost $K8S_VERSION already built in $OUT"
	exit 0
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'chmod -R u+w "$WORK" 2>/dev/null; rm -rf "$WORK"' EXIT
export GOFLAGS=-mod=mod CGO_ENABLED=0

. "$(dirname "$0")/unpack.sh"

echo "fetching k8s.io/kubernetes@$K8S_VERSION"
unpack k8s.io/kubernetes "$K8S_VERSION" "$WORK/kubernetes" "v0.${K8S_VERSION#v1.}"

# The test main: e2e_test.go of test/e2e with the other spec packages left out.
mkdir -p "$WORK/kubernetes/test/e2e/netpolsuite"
cat >"$WORK/kubernetes/test/e2e/netpolsuite/netpol_test.go" <<'GO'
package netpolsuite

import (
	"flag"
	"os"
	"testing"

	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/gomega"

	"k8s.io/component-base/logs"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/test/e2e/framework"
	"k8s.io/kubernetes/test/e2e/framework/config"

	_ "k8s.io/kubernetes/test/e2e/feature"
	_ "k8s.io/kubernetes/test/e2e/framework/debug/init"
	_ "k8s.io/kubernetes/test/e2e/framework/node/init"
	_ "k8s.io/kubernetes/test/e2e/network/netpol"
	_ "k8s.io/kubernetes/test/utils/format"
)

func TestMain(m *testing.M) {
	config.CopyFlags(config.Flags, flag.CommandLine)
	framework.RegisterCommonFlags(flag.CommandLine)
	framework.RegisterClusterFlags(flag.CommandLine)
	flag.Parse()
	framework.AfterReadingAllFlags(&framework.TestContext)
	os.Exit(m.Run())
}

func TestE2E(t *testing.T) {
	logs.InitLogs()
	defer logs.FlushLogs()
	klog.EnableContextualLogging(true)
	gomega.RegisterFailHandler(framework.Fail)
	suiteConfig, reporterConfig := framework.CreateGinkgoConfig()
	ginkgo.RunSpecs(t, "NetworkPolicy e2e suite", suiteConfig, reporterConfig)
}
GO

echo "building the netpol e2e specs and agnhost (long on 2 cores)"
(cd "$WORK/kubernetes" && go test -c -trimpath -ldflags "-s -w" -o "$OUT/e2e-netpol.test" ./test/e2e/netpolsuite)
(cd "$WORK/kubernetes" && go build -trimpath -ldflags "-s -w" -o "$OUT/agnhost" ./test/images/agnhost)
cat "$WORK/kubernetes/test/images/agnhost/VERSION" >"$OUT/agnhost.version"

touch "$STAMP"
echo "built into $OUT:"
ls -l "$OUT/e2e-netpol.test" "$OUT/agnhost"
