// Package kubejoin finds gossip seed addresses in the Kubernetes API: the IPv4
// InternalIP of every Node object except this node's own. It lets the agent in
// a DaemonSet join the mesh with no peer list.
//
// Only seeds come from here. Once an agent has joined, membership and block
// ownership are gossip's business; the API server is never a source of truth
// for either and may go away without disturbing routes.
//
// Seeds cannot come from DNS (a headless Service over the DaemonSet): the
// cluster DNS runs in pods, and pods get no network until the agent holds a
// block, which it claims only after joining. The API server is reachable from
// the host network before any pod network exists.
package kubejoin

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// requestTimeout bounds one list call, so a hung API server delays a refresh
// instead of stopping discovery.
const requestTimeout = 30 * time.Second

// NewClient returns a client for the API server: from the kubeconfig file at
// path, or, if path is empty, from the in-cluster service account.
func NewClient(kubeconfig string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	cfg.UserAgent = "grapevine"
	cfg.Timeout = requestTimeout
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return c, nil
}

// Discoverer lists Node objects and turns them into seed addresses.
type Discoverer struct {
	client kubernetes.Interface
	self   string
	log    *slog.Logger
}

// New returns a Discoverer that reports every node's InternalIP except that of
// the node named self.
func New(client kubernetes.Interface, self string, log *slog.Logger) *Discoverer {
	return &Discoverer{client: client, self: self, log: log}
}

// Seeds lists the nodes once and returns the IPv4 InternalIP of each, except
// this node's, sorted and without duplicates. Nodes without an IPv4 InternalIP
// are skipped: an ExternalIP may sit behind NAT, and the routed data path
// needs peers on a directly connected network anyway.
func (d *Discoverer) Seeds(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	// ResourceVersion "0" lets the API server answer from its watch cache
	// instead of a quorum read from etcd: every node lists all nodes, and a
	// slightly stale answer is fine for seeds.
	list, err := d.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	var addrs []string
	for i := range list.Items {
		n := &list.Items[i]
		if n.Name == d.self {
			continue
		}
		ip, ok := internalIPv4(n)
		if !ok {
			d.log.Debug("node has no IPv4 InternalIP; not a seed", "peer", n.Name)
			continue
		}
		addrs = append(addrs, ip.String())
	}
	slices.Sort(addrs)
	return slices.Compact(addrs), nil
}

// internalIPv4 returns the first IPv4 InternalIP in the node's status.
func internalIPv4(n *corev1.Node) (netip.Addr, bool) {
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err == nil && ip.Is4() {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// Run lists the nodes every interval and calls found with the seed addresses
// the first time a list succeeds and whenever they change. A failed list is
// logged and retried sooner, backing off from one second up to interval. Run
// returns ctx's error when ctx ends.
//
// A periodic list, not an informer: seeds matter only until gossip has joined,
// new nodes announce themselves by joining, and an informer would keep a full
// copy of every Node object in every agent.
func (d *Discoverer) Run(ctx context.Context, interval time.Duration, found func(addrs []string)) error {
	if interval <= 0 {
		return fmt.Errorf("kubejoin: interval %v must be positive", interval)
	}
	var last []string
	reported := false
	retry := time.Second
	for {
		wait := interval
		addrs, err := d.Seeds(ctx)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			wait = min(retry, interval)
			retry *= 2
			d.log.Warn("cannot discover seeds from the Kubernetes API; retrying", "err", err, "retryIn", wait)
		case !reported || !slices.Equal(addrs, last):
			retry = time.Second
			d.log.Info("seeds from the Kubernetes API", "addrs", addrs)
			found(addrs)
			last, reported = addrs, true
		default:
			retry = time.Second
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}
