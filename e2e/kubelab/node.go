package kubelab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/runtimes"
)

// Node is one Kubernetes node on a lab host: containerd, kubelet and
// kube-proxy in a Root of their own.
type Node struct {
	Name string
	Host *lab.Host
	// IP6 is the host's IPv6 address in a dual-stack cluster (the node's
	// second InternalIP), zero otherwise (in an IPv6-only cluster the
	// node's one InternalIP is Host.IP).
	IP6 netip.Addr
	// Containerd is the node's container runtime, for crictl and ctr.
	Containerd *runtimes.Containerd

	dir     string
	root    *runtimes.Root
	kubelet *process
	proxy   *process

	stopOnce sync.Once
	stopErr  error
}

// kernelDefaults are the sysctls a kubelet wants (pkg/kubelet/cm
// setupKernelTunables). They are the machine's, not the network
// namespace's, so the node reads these values from files in their place.
var kernelDefaults = map[string]string{
	"/proc/sys/vm/overcommit_memory":      "1\n",
	"/proc/sys/vm/panic_on_oom":           "0\n",
	"/proc/sys/kernel/panic":              "10\n",
	"/proc/sys/kernel/panic_on_oops":      "1\n",
	"/proc/sys/kernel/keys/root_maxkeys":  "1000000\n",
	"/proc/sys/kernel/keys/root_maxbytes": "25000000\n",
}

// The kubelet's configuration: the machine's defaults except where a node
// sharing a machine with others must differ, each said why.
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %[1]s}
authorization: {mode: AlwaysAllow}
readOnlyPort: 0
cgroupDriver: cgroupfs
# Each node's pods in their own cgroup tree: three kubelets share a machine.
cgroupRoot: %[2]s
# Test machines still run cgroup v1; 1.34 supports it when told so.
failCgroupV1: false
failSwapOn: false
# Never write the machine's kernel tunables; the node sees the wanted values.
protectKernelDefaults: true
# Lowering its own OOM score needs CAP_SYS_RESOURCE, which CI machines lack.
oomScoreAdj: 0
# Not /usr/libexec/kubernetes, which is the machine's.
volumePluginDir: /var/lib/kubelet/volume-plugins
resolvConf: %[3]s
# Images are imported, not pulled: never collect them, whatever the disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%%"
  imagefs.available: "1%%"
  nodefs.inodesFree: "1%%"
`

const kubeProxyConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %[1]s
hostnameOverride: %[2]s
mode: iptables
clusterCIDR: %[3]s
oomScoreAdj: 0
metricsBindAddress: 127.0.0.1:10249
# The conntrack table size and timeouts are the machine's, not the
# namespace's: leave them alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`

// startNode starts containerd, imports the images, and starts kube-proxy and
// the kubelet on h.
func (c *Cluster) startNode(ctx context.Context, h *lab.Host, name string) (_ *Node, err error) {
	dir := filepath.Join(c.Dir, "nodes", name)
	n := &Node{Name: name, Host: h, dir: dir}
	defer func() {
		if err != nil {
			n.Stop()
		}
	}()
	n.root, err = runtimes.NewRoot(ctx, runtimes.RootConfig{
		NetNS: h.Path(),
		Dir:   filepath.Join(dir, "root"),
		Name:  "kubelab-" + filepath.Base(h.Path()),
		// The node's CNI directories start empty, whatever the machine has.
		Shadow:  []string{"/var/log", "/etc/cni", "/opt/cni"},
		Overlay: []string{"/etc", "/opt"},
		Masks:   kernelDefaults,
	})
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	// kubeadm's preflight requires forwarding on every node; a new network
	// namespace starts without it.
	if err := h.Do(func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644) }); err != nil {
		return nil, fmt.Errorf("node %s: enable forwarding: %w", name, err)
	}
	nodeIP := h.IP.String() // the IPv6 address in an IPv6-only cluster
	if c.cfg.DualStack {
		if err := enableIPv6Forwarding(h); err != nil {
			return nil, fmt.Errorf("node %s: %w", name, err)
		}
		if n.IP6, err = h.AddIP6(ctx); err != nil {
			return nil, fmt.Errorf("node %s: %w", name, err)
		}
		nodeIP += "," + n.IP6.String()
	}
	n.Containerd, err = runtimes.StartContainerd(ctx, n.root, runtimes.CNIDirs{ConfDir: "/etc/cni/net.d", BinDir: "/opt/cni/bin"}, c.cfg.Crictl)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	for _, archive := range c.cfg.Images {
		if err := n.Containerd.Import(ctx, archive); err != nil {
			return nil, fmt.Errorf("node %s: import %s: %w", name, archive, err)
		}
	}
	if err := makeCgroupRoot(n.root.CgroupParent); err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}

	kubeletID, err := c.pki.issue("kubelet-"+name, "system:node:"+name, []string{"system:nodes"}, false, nil, nil)
	if err != nil {
		return nil, err
	}
	proxyID, err := c.pki.issue("kube-proxy-"+name, "system:kube-proxy", nil, false, nil, nil)
	if err != nil {
		return nil, err
	}
	files := map[string]string{
		"resolv.conf":     "nameserver " + c.cfg.Hosts[0].IP.String() + "\n",
		"kubelet.yaml":    fmt.Sprintf(kubeletConfig, c.pki.CA(), n.root.CgroupParent, filepath.Join(dir, "resolv.conf")),
		"kube-proxy.yaml": fmt.Sprintf(kubeProxyConfig, filepath.Join(dir, "kube-proxy.conf"), name, c.cidrs(PodCIDR, PodCIDR6)),
	}
	for file, data := range files {
		if err := writeFile(filepath.Join(dir, file), data); err != nil {
			return nil, err
		}
	}
	if err := c.pki.kubeconfig(filepath.Join(dir, "kubelet.conf"), c.Server, kubeletID); err != nil {
		return nil, err
	}
	if err := c.pki.kubeconfig(filepath.Join(dir, "kube-proxy.conf"), c.Server, proxyID); err != nil {
		return nil, err
	}

	bin := func(b string) string { return filepath.Join(c.cfg.KubeBin, b) }
	n.proxy, err = start("kube-proxy "+name, n.root.Command(context.Background(), bin("kube-proxy"),
		"--config="+filepath.Join(dir, "kube-proxy.yaml")), filepath.Join(dir, "kube-proxy.log"))
	if err != nil {
		return nil, err
	}
	n.kubelet, err = start("kubelet "+name, n.root.Command(context.Background(), bin("kubelet"),
		"--config="+filepath.Join(dir, "kubelet.yaml"), "--kubeconfig="+filepath.Join(dir, "kubelet.conf"),
		"--hostname-override="+name, "--node-ip="+nodeIP), filepath.Join(dir, "kubelet.log"))
	if err != nil {
		return nil, err
	}
	return n, nil
}

// enableIPv6Forwarding turns on IPv6 forwarding in h's namespace: the
// agent's container may not write /proc/sys, so it is the node's to turn
// on, like IPv4's.
func enableIPv6Forwarding(h *lab.Host) error {
	if err := h.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1\n"), 0o644)
	}); err != nil {
		return fmt.Errorf("%s: enable IPv6 forwarding: %w", h.Name, err)
	}
	return nil
}

// makeCgroupRoot creates the kubelet's cgroup root in every cgroup v1
// hierarchy (the kubelet requires it to exist), with the cpuset of its
// parent: a new cpuset cgroup starts empty and takes no processes.
func makeCgroupRoot(root string) error {
	hierarchies, err := filepath.Glob("/sys/fs/cgroup/*")
	if err != nil {
		return err
	}
	if len(hierarchies) == 0 {
		return errors.New("no cgroup hierarchies under /sys/fs/cgroup")
	}
	for _, h := range hierarchies {
		if _, err := os.Stat(filepath.Join(h, "cgroup.procs")); err != nil {
			continue
		}
		d := filepath.Join(h, root)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			v, err := os.ReadFile(filepath.Join(h, f))
			if err != nil {
				continue // not the cpuset hierarchy
			}
			if err := os.WriteFile(filepath.Join(d, f), v, 0o644); err != nil {
				return fmt.Errorf("cgroup %s: %w", filepath.Join(d, f), err)
			}
		}
	}
	return nil
}

// Path returns where path, a file of the node's own /run, /var/lib,
// /var/log, /etc/cni or /opt/cni (a hostPath, say), is on the machine.
func (n *Node) Path(path string) string {
	return filepath.Join(n.root.Dir, path)
}

// Run runs a command in the node's namespaces (for crictl, ctr, ip) and
// returns its standard output.
func (n *Node) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return n.root.Run(ctx, nil, name, args...)
}

// KubeletRunning reports whether the kubelet has not exited.
func (n *Node) KubeletRunning() bool { return n.kubelet != nil && n.kubelet.Running() }

// LogTails returns the end of the node's logs.
func (n *Node) LogTails(lines int) string {
	var b strings.Builder
	for _, p := range []*process{n.kubelet, n.proxy} {
		if p != nil {
			fmt.Fprintf(&b, "--- %s (last %d lines)\n%s\n", p.name, lines, p.LogTail(lines))
		}
	}
	if n.Containerd != nil {
		fmt.Fprintf(&b, "--- containerd %s (last %d lines)\n%s\n", n.Name, lines, n.Containerd.LogTail(lines))
	}
	return b.String()
}

// Stop stops the kubelet, kube-proxy and containerd, kills everything left
// in the node (containers, shims), removes its cgroups and mounts: the host
// is gone as far as Kubernetes is concerned. Stop is idempotent.
func (n *Node) Stop() error {
	n.stopOnce.Do(func() {
		var errs []error
		for _, p := range []*process{n.kubelet, n.proxy} {
			if p != nil {
				p.Stop(10 * time.Second)
			}
		}
		if n.Containerd != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			errs = append(errs, n.Containerd.Stop(ctx))
			cancel()
		}
		if n.root != nil {
			errs = append(errs, n.root.Close())
		}
		n.stopErr = errors.Join(errs...)
	})
	return n.stopErr
}
