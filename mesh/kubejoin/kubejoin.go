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
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// requestTimeout bounds one list call, so a hung API server delays a refresh
// instead of stopping discovery.
const requestTimeout = 30 * time.Second

// Node is the part of a Kubernetes Node object discovery reads.
type Node struct {
	Name      string
	Addresses []NodeAddress
}

// NodeAddress is one entry of a Node's status.addresses.
type NodeAddress struct {
	Type    string `json:"type"`
	Address string `json:"address"`
}

// NodeLister lists the cluster's Node objects. APIClient is the real one.
type NodeLister interface {
	ListNodes(ctx context.Context) ([]Node, error)
}

// serviceAccountDir is where the kubelet mounts a pod's service account.
const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// APIClient lists nodes with one plain HTTPS request to the API server,
// authenticated as the pod's service account.
//
// Not client-go: seed discovery needs a single GET, and linking client-go
// made the agent binary three times larger (52 MB instead of 16 MB) and its
// resident memory 38 MB instead of 15 MB, for code that runs once a minute.
type APIClient struct {
	server    string // https://host:port
	tokenFile string
	http      *http.Client
}

// NewInClusterClient returns a client configured the way every in-cluster
// client is: the API server from KUBERNETES_SERVICE_HOST and
// KUBERNETES_SERVICE_PORT, the service account's token and CA from their
// mount.
func NewInClusterClient() (*APIClient, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, errors.New("not running in a Kubernetes pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set")
	}
	return NewAPIClient("https://"+net.JoinHostPort(host, port),
		filepath.Join(serviceAccountDir, "token"), filepath.Join(serviceAccountDir, "ca.crt"))
}

// NewAPIClient returns a client for the API server at server (https://...),
// presenting the bearer token in tokenFile and trusting the CA certificates
// in caFile.
func NewAPIClient(server, tokenFile, caFile string) (*APIClient, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("kubernetes CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("kubernetes CA %s holds no PEM certificate", caFile)
	}
	if _, err := os.Stat(tokenFile); err != nil {
		return nil, fmt.Errorf("kubernetes token: %w", err)
	}
	transport := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     90 * time.Second,
	}
	return &APIClient{
		server:    strings.TrimSuffix(server, "/"),
		tokenFile: tokenFile,
		http:      &http.Client{Transport: transport, Timeout: requestTimeout},
	}, nil
}

// ListNodes lists every Node object.
func (c *APIClient) ListNodes(ctx context.Context) ([]Node, error) {
	// The token is read for every request: projected service account tokens
	// are rotated by the kubelet.
	token, err := os.ReadFile(c.tokenFile)
	if err != nil {
		return nil, fmt.Errorf("kubernetes token: %w", err)
	}
	// resourceVersion=0 lets the API server answer from its watch cache
	// instead of a quorum read from etcd: every node lists all nodes, and a
	// slightly stale answer is fine for seeds.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.server+"/api/v1/nodes?resourceVersion=0", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "grapevine")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var status struct{ Message string }
		json.Unmarshal(body, &status)
		return nil, fmt.Errorf("list nodes: %s: %s", resp.Status, status.Message)
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
			Status struct {
				Addresses []NodeAddress `json:"addresses"`
			} `json:"status"`
		} `json:"items"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, fmt.Errorf("list nodes: decode: %w", err)
	}
	nodes := make([]Node, 0, len(list.Items))
	for _, it := range list.Items {
		nodes = append(nodes, Node{Name: it.Metadata.Name, Addresses: it.Status.Addresses})
	}
	return nodes, nil
}

// Discoverer lists Node objects and turns them into seed addresses.
type Discoverer struct {
	client NodeLister
	self   string
	log    *slog.Logger
}

// New returns a Discoverer that reports every node's InternalIP except that of
// the node named self.
func New(client NodeLister, self string, log *slog.Logger) *Discoverer {
	return &Discoverer{client: client, self: self, log: log}
}

// Seeds lists the nodes once and returns the IPv4 InternalIP of each, except
// this node's, sorted and without duplicates. Nodes without an IPv4 InternalIP
// are skipped: an ExternalIP may sit behind NAT, and the routed data path
// needs peers on a directly connected network anyway.
func (d *Discoverer) Seeds(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	nodes, err := d.client.ListNodes(ctx)
	if err != nil {
		return nil, err
	}
	var addrs []string
	for _, n := range nodes {
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
func internalIPv4(n Node) (netip.Addr, bool) {
	for _, a := range n.Addresses {
		if a.Type != "InternalIP" {
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
