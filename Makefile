# Grapevine: a routed L3 pod network with gossip instead of BGP and etcd.
#
#   make demo       a 3-host lab in network namespaces, pods pinging across hosts (root)
#   make demo-dual-stack  the same lab dual-stack: pods ping over IPv4 and IPv6 (root)
#   make demo-down  remove the demo lab
#   make test       vet, format check and every test (root for the namespace tests)
#   make e2e-kubernetes  docs/kubernetes/grapevine.yaml on a 3-node Kubernetes
#                   cluster in the lab (root; builds Kubernetes once, ~5 min)
#   make e2e-netpol Kubernetes' own NetworkPolicy e2e specs against that
#                   cluster (root; builds them and agnhost once; long)
#   make bench      benchmarks side by side with the reference plugins (root)
#   make soak       the ledger's randomized fault simulation, many seeds (long)
#   make dist       static release binaries in dist/
#   make image      container image (needs a container engine)
#   make image-archive  the same image as dist/grapevine-image.tar, built offline
#                   without a container engine (docker/podman load, ctr import)

GO            ?= go
BIN           := $(CURDIR)/bin
CNI_BIN       := $(BIN)/cni
CNI_PLUGINS   := github.com/containernetworking/plugins
CNI_PLUGINS_VERSION := v1.10.0
REFERENCE_PLUGINS := meta/portmap main/loopback main/ptp ipam/host-local
# crictl drives containerd in the runtime tests (e2e/runtimes_test.go).
CRICTL_VERSION := v1.34.0
VERSION       ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GO_BUILD      := CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)"
IMAGE         ?= grapevine:dev
TEST_TIMEOUT  ?= 12m

export GRAPEVINE_BIN_DIR := $(BIN)
export GRAPEVINE_CNI_PATH := $(CNI_BIN)

.PHONY: all build cni-plugins crictl kubernetes-binaries netpol-e2e-binaries e2e-kubernetes e2e-netpol test vet fmt-check unit demo demo-dual-stack demo-down bench soak dist image image-archive fuzz clean

all: build

build:
	@mkdir -p $(CNI_BIN)
	$(GO_BUILD) -o $(BIN)/ ./cmd/...
	cp $(BIN)/grapevine-cni $(BIN)/grapevine-ipam $(CNI_BIN)/

# The reference plugins, built from source at the pinned version: portmap is
# chained after grapevine-cni; ptp and host-local are the benchmark's peers.
cni-plugins:
	@mkdir -p $(CNI_BIN)
	@for p in $(REFERENCE_PLUGINS); do \
		test -x $(CNI_BIN)/$${p#*/} || GOBIN=$(CNI_BIN) CGO_ENABLED=0 $(GO) install -trimpath -ldflags "-s -w" $(CNI_PLUGINS)/plugins/$$p@$(CNI_PLUGINS_VERSION) || exit 1; \
	done

crictl:
	@mkdir -p $(BIN)
	@test -x $(BIN)/crictl || GOBIN=$(BIN) CGO_ENABLED=0 $(GO) install sigs.k8s.io/cri-tools/cmd/crictl@$(CRICTL_VERSION)

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

test: vet fmt-check build cni-plugins crictl
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

# The Kubernetes the lab cluster runs, built from the Go module proxy and
# kept in .cache between runs (e2e/kubelab/binaries.sh says how).
KUBERNETES_VERSION ?= v1.34.2
ETCD_VERSION  ?= v3.6.6
KUBE_BIN      := $(CURDIR)/.cache/kubernetes/$(KUBERNETES_VERSION)

kubernetes-binaries:
	K8S_VERSION=$(KUBERNETES_VERSION) ETCD_VERSION=$(ETCD_VERSION) OUT=$(KUBE_BIN) sh e2e/kubelab/binaries.sh

# The manifest, unchanged but for the image, on etcd, the control plane and
# three kubelet+containerd nodes in lab namespaces, with the image built by
# image-archive (e2e/kubelab/kubernetes_test.go lists the checks); then the
# same on a dual-stack cluster with GRAPEVINE_POOL6 set and on an IPv6-only
# one with an IPv6 GRAPEVINE_POOL (under a minute each, so they run in CI
# too); then NetworkPolicy. KUBERNETES_TESTS picks some, such as
# KUBERNETES_TESTS=KubernetesDualStack.
KUBERNETES_TESTS ?= Kubernetes|KubernetesDualStack|KubernetesIPv6Only|NetworkPolicy
e2e-kubernetes: build cni-plugins crictl image-archive kubernetes-binaries
	$(GO) vet -tags kubernetes_e2e ./e2e/kubelab
	GRAPEVINE_KUBE_BIN=$(KUBE_BIN) GRAPEVINE_IMAGE_ARCHIVE=$(CURDIR)/dist/grapevine-image.tar GRAPEVINE_IMAGE=$(IMAGE) \
		$(GO) test -tags kubernetes_e2e -count=1 -timeout 30m -v -run '^Test($(KUBERNETES_TESTS))$$' ./e2e/kubelab

# Kubernetes' NetworkPolicy e2e specs (test/e2e/network/netpol) and agnhost,
# built from the Go module proxy like the cluster (e2e/kubelab/netpol-e2e.sh),
# run against the lab cluster with the manifest and enforcement on. The
# kernel here has no SCTP, so its specs are skipped unless NETPOL_SKIP says
# otherwise; the suite's log and JUnit report land in NETPOL_REPORT.
NETPOL_FOCUS  ?= \[sig-network\] Netpol
NETPOL_SKIP   ?= \[Feature:SCTPConnectivity\]
NETPOL_REPORT ?= $(CURDIR)/.cache/e2e-netpol
NETPOL_TIMEOUT ?= 3h

netpol-e2e-binaries:
	K8S_VERSION=$(KUBERNETES_VERSION) OUT=$(KUBE_BIN) nice -n 10 sh e2e/kubelab/netpol-e2e.sh

e2e-netpol: build cni-plugins crictl image-archive kubernetes-binaries netpol-e2e-binaries
	$(GO) vet -tags kubernetes_e2e ./e2e/kubelab
	GRAPEVINE_KUBE_BIN=$(KUBE_BIN) GRAPEVINE_IMAGE_ARCHIVE=$(CURDIR)/dist/grapevine-image.tar GRAPEVINE_IMAGE=$(IMAGE) \
		GRAPEVINE_NETPOL_BIN=$(KUBE_BIN) GRAPEVINE_NETPOL_REPORT=$(NETPOL_REPORT) \
		GRAPEVINE_NETPOL_FOCUS='$(NETPOL_FOCUS)' GRAPEVINE_NETPOL_SKIP='$(NETPOL_SKIP)' \
		$(GO) test -tags kubernetes_e2e -count=1 -timeout $(NETPOL_TIMEOUT) -v -run '^TestNetworkPolicyConformance$$' ./e2e/kubelab

demo: build cni-plugins
	$(GO) run ./e2e/cmd/lab up --hosts 3 --pods 2

demo-dual-stack: build cni-plugins
	$(GO) run ./e2e/cmd/lab up --hosts 3 --pods 2 --dual-stack

demo-down:
	$(GO) run ./e2e/cmd/lab down

bench: build cni-plugins crictl
	$(GO) run ./e2e/cmd/bench
	$(GO) test ./e2e -run '^$$' -bench CrictlRunp -benchtime 7x

# SOAK_SEEDS clusters, each through SOAK_STEPS random faults (partitions,
# crashes, restarts with and without state, clock skew, duplicate names,
# joins); make test runs 3 seeds of 10 steps. One seed replays with
# GRAPEVINE_SIM_SEED=N.
SOAK_SEEDS    ?= 200
SOAK_STEPS    ?= 30
soak:
	GRAPEVINE_SIM_SEEDS=$(SOAK_SEEDS) GRAPEVINE_SIM_STEPS=$(SOAK_STEPS) $(GO) test ./mesh -run '^TestFaultSimulation$$' -count=1 -timeout 12h -v

fuzz:
	$(GO) test ./mesh -run '^$$' -fuzz FuzzDecodeMeta -fuzztime 30s
	$(GO) test ./mesh/ledger -run '^$$' -fuzz FuzzDecodeRequest -fuzztime 30s
	$(GO) test ./plugin -run '^$$' -fuzz FuzzParseConfig -fuzztime 30s

dist:
	@mkdir -p dist
	$(GO_BUILD) -o dist/ ./cmd/...

image:
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE) .

# The image of the Dockerfile, from the binaries of dist and cni-plugins, with
# no registry or container engine; created at the last commit's time, so the
# same commit gives the same digest.
image-archive: dist cni-plugins
	SOURCE_DATE_EPOCH=$${SOURCE_DATE_EPOCH:-$$(git log -1 --format=%ct 2>/dev/null)} \
		$(GO) run ./e2e/cmd/imagearchive -bin-dir dist -cni-plugins $(CNI_BIN) \
		-tag $(IMAGE) -version $(VERSION) -o dist/grapevine-image.tar

clean:
	rm -rf bin dist
