// Package kubejoin finds gossip seed addresses in the Kubernetes API: the IPv4
// InternalIP of every Node object except this node's own, and which Node is
// the oldest (its agent founds the block ledger of a new cluster). It lets
// the agent in a DaemonSet join the mesh with no peer list.
//
// Only seeds and the founding rule come from here. Once an agent has joined,
// membership is gossip's business and block ownership the ledger's; the API
// server is never a source of truth for either and may go away without
// disturbing routes.
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
	Name string
	// Created is the object's creationTimestamp (second precision).
	Created   time.Time
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
				Name              string    `json:"name"`
				CreationTimestamp time.Time `json:"creationTimestamp"`
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
		nodes = append(nodes, Node{Name: it.Metadata.Name, Created: it.Metadata.CreationTimestamp, Addresses: it.Status.Addresses})
	}
	return nodes, nil
}

// Discoverer lists Node objects and turns them into seed addresses and the
// founding rule.
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

// Discovery is what one list of the Node objects says.
type Discovery struct {
	// Seeds are the IPv4 InternalIPs of every node but this one, sorted and
	// without duplicates.
	Seeds []string
	// Oldest is the name of the Node created first (ties: the smaller
	// name). When every agent of a new cluster starts at once, the agent on
	// this Node founds the block ledger and every other one joins it, so
	// exactly one ledger forms.
	Oldest string
}

// Founder reports whether the node named self founds the ledger.
func (d Discovery) Founder(self string) bool { return d.Oldest != "" && d.Oldest == self }

func (d Discovery) equal(o Discovery) bool {
	return d.Oldest == o.Oldest && slices.Equal(d.Seeds, o.Seeds)
}

// Discover lists the nodes once. Nodes without an IPv4 InternalIP are no
// seeds: an ExternalIP may sit behind NAT, and the routed data path needs
// peers on a directly connected network anyway. They still count for the
// oldest Node, so that every agent applies the rule to the same list.
func (d *Discoverer) Discover(ctx context.Context) (Discovery, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	nodes, err := d.client.ListNodes(ctx)
	if err != nil {
		return Discovery{}, err
	}
	var out Discovery
	var oldest *Node
	for i, n := range nodes {
		if oldest == nil || n.Created.Before(oldest.Created) || (n.Created.Equal(oldest.Created) && n.Name < oldest.Name) {
			oldest = &nodes[i]
		}
		if n.Name == d.self {
			continue
		}
		ip, ok := internalIPv4(n)
		if !ok {
			d.log.Debug("node has no IPv4 InternalIP; not a seed", "peer", n.Name)
			continue
		}
		out.Seeds = append(out.Seeds, ip.String())
	}
	if oldest != nil {
		out.Oldest = oldest.Name
	}
	slices.Sort(out.Seeds)
	out.Seeds = slices.Compact(out.Seeds)
	return out, nil
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

// Run lists the nodes every interval and calls found with the discovery the
// first time a list succeeds and whenever it changes. A failed list is
// logged and retried sooner, backing off from one second up to interval. Run
// returns ctx's error when ctx ends.
//
// A periodic list, not an informer: seeds matter only until gossip has joined,
// new nodes announce themselves by joining, and an informer would keep a full
// copy of every Node object in every agent.
func (d *Discoverer) Run(ctx context.Context, interval time.Duration, found func(Discovery)) error {
	if interval <= 0 {
		return fmt.Errorf("kubejoin: interval %v must be positive", interval)
	}
	var last Discovery
	reported := false
	retry := time.Second
	for {
		wait := interval
		disc, err := d.Discover(ctx)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			wait = min(retry, interval)
			retry *= 2
			d.log.Warn("cannot discover seeds from the Kubernetes API; retrying", "err", err, "retryIn", wait)
		case !reported || !disc.equal(last):
			retry = time.Second
			d.log.Info("seeds from the Kubernetes API", "addrs", disc.Seeds, "oldestNode", disc.Oldest)
			found(disc)
			last, reported = disc, true
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
