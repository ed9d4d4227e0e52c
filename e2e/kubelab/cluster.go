// Package kubelab runs a real Kubernetes cluster on lab hosts: etcd,
// kube-apiserver, kube-controller-manager and kube-scheduler on the first
// host (as kubeadm puts the control plane on the first node), and on every
// host a node of containerd, kubelet and kube-proxy. The binaries are the
// released ones, built from the Go module proxy by binaries.sh; certificates
// are made here. No kubeadm, no registry: images are imported into each
// node's containerd from archives.
//
// Every program runs inside its host's network namespace and in a private
// mount namespace (runtimes.Root) where /run, /var/lib, /var/tmp and
// /var/log are directories of the cluster, and /etc and /opt are overlays
// whose changes land there too: hostPath volumes such as /opt/cni/bin and
// /etc/cni/net.d are the node's own, and nothing of the machine's file
// system changes. The sysctls a kubelet insists on (vm.overcommit_memory,
// kernel.panic, ...) are machine-wide, not per namespace, so each node sees
// files with the values it wants in their place, and the kubelet runs with
// protectKernelDefaults so it never tries to write them. Each kubelet's
// pods live in a cgroup tree of their own, removed on Close.
package kubelab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/runtimes"
)

// Cluster-wide addresses, as kubeadm's defaults with
// --pod-network-cidr=10.244.0.0/16; a dual-stack cluster adds the IPv6
// ranges, IPv4 first (the cluster's primary family, as kubeadm's
// --pod-network-cidr=10.244.0.0/16,fd00:10:244::/48 and
// --service-cidr=10.96.0.0/12,fd00:10:96::/112 make it); an IPv6-only
// cluster has the IPv6 ranges alone.
const (
	ServiceCIDR     = "10.96.0.0/12"
	KubernetesSvcIP = "10.96.0.1"
	PodCIDR         = "10.244.0.0/16"
	// ServiceCIDR6 is a /112: the API server takes no IPv6 service range
	// wider than /108.
	ServiceCIDR6 = "fd00:10:96::/112"
	// PodCIDR6 is the agent's --pool6 example; the controller manager cuts
	// it into a /64 per node (--node-cidr-mask-size-ipv6's default), as
	// Grapevine's IPv6 blocks are, though Grapevine does not use those.
	PodCIDR6 = "fd00:10:244::/48"
	// KubernetesSvcIP6 is the kubernetes Service's cluster IP in an
	// IPv6-only cluster: the first of ServiceCIDR6.
	KubernetesSvcIP6 = "fd00:10:96::1"
	apiServerPort    = 6443
)

// Config describes a cluster to start.
type Config struct {
	// Hosts run one node each; the first also runs the control plane.
	Hosts []*lab.Host
	// NodeNames name the nodes, one per host.
	NodeNames []string
	// Dir holds certificates, configuration, logs and the nodes' file systems.
	Dir string
	// KubeBin holds kube-apiserver, kube-controller-manager, kube-scheduler,
	// kubelet, kube-proxy, kubectl and etcd.
	KubeBin string
	// Crictl is the crictl binary, for the nodes' containerd.
	Crictl string
	// Images are archives imported into every node's containerd.
	Images []string
	// DualStack gives every host an IPv6 address on the lab LAN, which its
	// kubelet reports beside the IPv4 one (--node-ip), turns on IPv6
	// forwarding in the hosts' namespaces (kubeadm's preflight requires it
	// of a dual-stack node), and gives the control plane and kube-proxy
	// both families' ranges.
	DualStack bool
	// IPv6Only makes every host IPv6-only (lab.Host.MakeIPv6Only: its
	// IPv4 address goes, Host.IP becomes its IPv6 address) before anything
	// starts, turns on IPv6 forwarding in the hosts' namespaces, and gives
	// the control plane and kube-proxy the IPv6 ranges alone: the API
	// server is reached, and the kubelets register, over IPv6. Not with
	// DualStack.
	IPv6Only bool
	Log      *slog.Logger
}

// Cluster is a running cluster.
type Cluster struct {
	Dir    string
	Server string // the API server's URL on the lab LAN
	Nodes  []*Node

	cfg   Config
	pki   *pki
	admin string // the admin kubeconfig (system:masters)
	cp    *runtimes.Root
	procs []*process // control plane, in start order

	closeOnce sync.Once
	closeErr  error
}

// Start starts the control plane, then every node, and returns once the API
// server answers and every kubelet has registered its Node. On error what
// was started is stopped again.
func Start(ctx context.Context, cfg Config) (_ *Cluster, err error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.DualStack && cfg.IPv6Only {
		return nil, errors.New("kubelab: a cluster is dual-stack or IPv6-only, not both")
	}
	if cfg.IPv6Only {
		// Before the addresses of the API server and the nodes are taken
		// from Host.IP, which this changes.
		for _, h := range cfg.Hosts {
			if err := enableIPv6Forwarding(h); err != nil {
				return nil, err
			}
			if _, err := h.MakeIPv6Only(ctx); err != nil {
				return nil, err
			}
		}
	}
	first := cfg.Hosts[0]
	c := &Cluster{
		Dir:    cfg.Dir,
		Server: fmt.Sprintf("https://%s", netip.AddrPortFrom(first.IP, apiServerPort)),
		cfg:    cfg,
		admin:  filepath.Join(cfg.Dir, "admin.conf"),
	}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if c.pki, err = newPKI(filepath.Join(cfg.Dir, "pki")); err != nil {
		return nil, err
	}
	admin, err := c.pki.issue("admin", "kubernetes-admin", []string{"system:masters"}, false, nil, nil)
	if err != nil {
		return nil, err
	}
	if err := c.pki.kubeconfig(c.admin, c.Server, admin); err != nil {
		return nil, err
	}
	if err := c.startControlPlane(ctx, first); err != nil {
		return nil, err
	}
	for i, h := range cfg.Hosts {
		n, err := c.startNode(ctx, h, cfg.NodeNames[i])
		if err != nil {
			return nil, err
		}
		c.Nodes = append(c.Nodes, n)
	}
	for _, n := range c.Nodes {
		if err := waitFor(ctx, "node "+n.Name+" registered", n.kubelet, 200*time.Millisecond, func(ctx context.Context) error {
			_, err := c.Kubectl(ctx, "get", "node", n.Name)
			return err
		}); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// startControlPlane runs etcd, the API server, the controller manager and
// the scheduler in a Root on host h and waits until the API server is ready.
func (c *Cluster) startControlPlane(ctx context.Context, h *lab.Host) error {
	dir := filepath.Join(c.Dir, "control-plane")
	root, err := runtimes.NewRoot(ctx, runtimes.RootConfig{NetNS: h.Path(), Dir: filepath.Join(dir, "root"), Name: "kubelab-cp-" + filepath.Base(h.Path())})
	if err != nil {
		return err
	}
	c.cp = root
	p := c.pki
	serving, err := p.issue("apiserver", "kube-apiserver", nil, true,
		[]string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"},
		[]net.IP{net.ParseIP(KubernetesSvcIP), net.ParseIP(KubernetesSvcIP6), h.IP.AsSlice(), net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	kubeletClient, err := p.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, false, nil, nil)
	if err != nil {
		return err
	}
	kubeconfigs := map[string]string{}
	for _, who := range []struct{ name, user string }{
		{"controller-manager", "system:kube-controller-manager"},
		{"scheduler", "system:kube-scheduler"},
	} {
		id, err := p.issue(who.name, who.user, nil, false, nil, nil)
		if err != nil {
			return err
		}
		kubeconfigs[who.name] = filepath.Join(dir, who.name+".conf")
		if err := p.kubeconfig(kubeconfigs[who.name], c.Server, id); err != nil {
			return err
		}
	}

	bin := func(name string) string { return filepath.Join(c.cfg.KubeBin, name) }
	run := func(name string, args ...string) error {
		proc, err := start(name, root.Command(context.Background(), bin(name), args...), filepath.Join(dir, name+".log"))
		if err != nil {
			return err
		}
		c.procs = append(c.procs, proc)
		return nil
	}
	if err := run("etcd",
		"--name=control-plane", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=control-plane=http://127.0.0.1:2380", "--listen-metrics-urls=http://127.0.0.1:2381",
		// One test's cluster: no need to survive a power cut.
		"--unsafe-no-fsync"); err != nil {
		return err
	}
	if err := run("kube-apiserver",
		"--etcd-servers=http://127.0.0.1:2379",
		"--advertise-address="+h.IP.String(), "--secure-port="+fmt.Sprint(apiServerPort),
		"--service-cluster-ip-range="+c.cidrs(ServiceCIDR, ServiceCIDR6),
		"--tls-cert-file="+serving.Cert, "--tls-private-key-file="+serving.Key,
		"--client-ca-file="+p.CA(),
		"--kubelet-client-certificate="+kubeletClient.Cert, "--kubelet-client-key="+kubeletClient.Key,
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+p.path("sa.key"), "--service-account-signing-key-file="+p.path("sa.key"),
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		"--cert-dir="+filepath.Join(dir, "apiserver-certs")); err != nil {
		return err
	}
	apiserver := c.procs[len(c.procs)-1]
	if err := waitFor(ctx, "API server ready", apiserver, 250*time.Millisecond, func(ctx context.Context) error {
		_, err := c.Kubectl(ctx, "get", "--raw", "/readyz")
		return err
	}); err != nil {
		return err
	}
	common := func(name string) []string {
		return []string{"--kubeconfig=" + kubeconfigs[name], "--authentication-kubeconfig=" + kubeconfigs[name],
			"--authorization-kubeconfig=" + kubeconfigs[name], "--bind-address=127.0.0.1", "--leader-elect=false",
			"--cert-dir=" + filepath.Join(dir, name+"-certs")}
	}
	if err := run("kube-controller-manager", append(common("controller-manager"),
		"--service-account-private-key-file="+p.path("sa.key"), "--root-ca-file="+p.CA(),
		"--use-service-account-credentials=true", "--cluster-name=grapevine-lab",
		// As kubeadm init --pod-network-cidr sets them. Grapevine ignores
		// the per-node spec.podCIDR this hands out: blocks are the ledger's.
		"--allocate-node-cidrs=true", "--cluster-cidr="+c.cidrs(PodCIDR, PodCIDR6))...); err != nil {
		return err
	}
	return run("kube-scheduler", common("scheduler")...)
}

// cidrs is the IPv4 range, followed by the IPv6 one in a dual-stack
// cluster, or the IPv6 one alone in an IPv6-only cluster: the form of the
// control plane's and kube-proxy's range flags.
func (c *Cluster) cidrs(v4, v6 string) string {
	switch {
	case c.cfg.DualStack:
		return v4 + "," + v6
	case c.cfg.IPv6Only:
		return v6
	}
	return v4
}

// Node returns the node named name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Kubectl runs kubectl as the cluster's administrator, from the control
// plane's host, and returns its standard output.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	return c.KubectlIn(ctx, "", args...)
}

// KubectlIn is Kubectl with stdin as the command's standard input.
func (c *Cluster) KubectlIn(ctx context.Context, stdin string, args ...string) ([]byte, error) {
	cmd := c.cp.Command(ctx, filepath.Join(c.cfg.KubeBin, "kubectl"), append([]string{"--kubeconfig=" + c.admin}, args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Command is a program to run on the control plane's host, in its
// namespaces, as the cluster's administrator: KUBECONFIG is the admin's
// kubeconfig (for a test suite such as Kubernetes' own e2e specs).
func (c *Cluster) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := c.cp.Command(ctx, name, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.admin)
	return cmd
}

// LogTails returns the end of every control plane log, for a failed test.
func (c *Cluster) LogTails(n int) string {
	var b strings.Builder
	for _, p := range c.procs {
		fmt.Fprintf(&b, "--- %s (last %d lines)\n%s\n", p.name, n, p.LogTail(n))
	}
	for _, node := range c.Nodes {
		b.WriteString(node.LogTails(n))
	}
	return b.String()
}

// Close stops the nodes, then the control plane, and removes their cgroups
// and mounts. The directory stays for the caller to remove.
// Close is idempotent.
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() {
		var errs []error
		for _, n := range c.Nodes {
			errs = append(errs, n.Stop())
		}
		for i := len(c.procs) - 1; i >= 0; i-- {
			c.procs[i].Stop(10 * time.Second)
		}
		if c.cp != nil {
			errs = append(errs, c.cp.Close())
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

// writeFile writes data to path, creating its directory.
func writeFile(path, data string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(data), 0o644)
}
