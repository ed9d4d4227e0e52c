#!/bin/sh
# Builds the Kubernetes control plane, kubelet, kube-proxy, kubectl and etcd
# that the lab cluster runs, from the Go module proxy alone, into
# $OUT (default .cache/kubernetes/<version>). A finished build is kept: a
# second run with the same versions only checks the stamp and exits.
#
# Neither k8s.io/kubernetes nor go.etcd.io/etcd/server/v3 can be built with
# "go install ...@version": their go.mod files point sibling modules at
# local directories with replace directives (./staging/..., ../api), and the
# published module zips do not contain those directories. So each module
# is copied, its local replaces are dropped in favour of the published
# modules of the same release, and it is built with -mod=mod.
set -eu

K8S_VERSION=${K8S_VERSION:-v1.34.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.6}
OUT=${OUT:-.cache/kubernetes/$K8S_VERSION}
STAMP="$OUT/.built-$K8S_VERSION-$ETCD_VERSION"
BINARIES="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl"

if [ -f "$STAMP" ]; then
	echo "kubernetes $K8S_VERSION and etcd $ETCD_VERSION already built in $OUT"
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
echo "building $BINARIES (several minutes on 2 cores)"
# The version the binaries report; the release scripts normally set it from git.
minor=$(echo "$K8S_VERSION" | cut -d. -f2)
ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
	ldflags="$ldflags -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
pkgs=""
for b in $BINARIES; do pkgs="$pkgs ./cmd/$b"; done
# shellcheck disable=SC2086
(cd "$WORK/kubernetes" && go build -trimpath -ldflags "$ldflags" -o "$OUT/" $pkgs)

echo "fetching and building etcd $ETCD_VERSION"
unpack go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "$WORK/etcd" "$ETCD_VERSION"
(cd "$WORK/etcd" && go build -trimpath -ldflags "-s -w" -o "$OUT/etcd" .)

touch "$STAMP"
echo "built into $OUT:"
ls -l "$OUT"
