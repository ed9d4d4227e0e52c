// Package kubejoin follows the cluster's Node objects in the Kubernetes API:
// the InternalIP of every Node except this node's own (gossip seeds) in the
// family of the cluster's pool (IPv4, or IPv6 in an IPv6-only cluster),
// the UID of this node's own Node object, and which Node objects are
// deleted. It lets the agent in a DaemonSet join the mesh with no peer
// list, and free the block of a node the operator deleted.
//
// Only seeds, those two facts and the ledger's record come from here. Once
// an agent has joined, membership is gossip's business and block ownership
// the ledger's; the API server is never a source of truth for either and
// may go away without disturbing routes.
//
// Seeds cannot come from DNS (a headless Service over the DaemonSet): the
// cluster DNS runs in pods, and pods get no network until the agent holds a
// block, which it claims only after joining. The API server is reachable from
// the host network before any pod network exists.
//
// It also holds the record of the cluster's one block ledger (record.go): a
// ConfigMap created once, atomically, by the agent that founds the ledger,
// so an agent that lost its state finds the ledger instead of founding a
// second one.
//
// It speaks to the API server with plain HTTPS requests (list, watch, get
// on nodes; get and create of the ledger's ConfigMap: what the manifest's
// RBAC grants), not client-go.
package kubejoin

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// requestTimeout bounds one list or get, so a hung API server delays a
// refresh instead of stopping discovery.
const requestTimeout = 30 * time.Second

// Watch timing: the API server ends each watch after watchTimeout (a random
// duration from the range, so agents do not reconnect in step), and the
// client gives up on a watch watchGrace later, which bounds how long a
// connection that died silently goes unnoticed.
const (
	minWatchTimeout = time.Minute
	maxWatchTimeout = 2 * time.Minute
	watchGrace      = 15 * time.Second
)

// Size limits on what the API server sends: a whole list, one watch event.
const (
	maxListBytes  = 64 << 20
	maxEventBytes = 4 << 20
)

// Node is the part of a Kubernetes Node object discovery reads.
type Node struct {
	Name string
	// UID is the object's metadata.uid: a Node deleted and registered again
	// under the same name has a new one.
	UID string
	// Created is the object's creationTimestamp (second precision).
	Created   time.Time
	Addresses []NodeAddress
}

// NodeAddress is one entry of a Node's status.addresses.
type NodeAddress struct {
	Type    string `json:"type"`
	Address string `json:"address"`
}

// NodeList is one list of the Node objects and the resource version to
// watch from.
type NodeList struct {
	Nodes           []Node
	ResourceVersion string
}

// EventType is the type of a watch event.
type EventType string

// The watch events handed on (errors end the watch instead).
const (
	Added    EventType = "ADDED"
	Modified EventType = "MODIFIED"
	Deleted  EventType = "DELETED"
	// Bookmark carries only a newer resource version to resume from.
	Bookmark EventType = "BOOKMARK"
)

// Event is one change of a Node object.
type Event struct {
	Type EventType
	Node Node // zero for a Bookmark
	// ResourceVersion is the version to resume a watch from after it.
	ResourceVersion string
}

var (
	// ErrExpired: the resource version a watch asked for is older than
	// the API server keeps (410 Gone); list again.
	ErrExpired = errors.New("resource version expired")
	// ErrNotFound: no Node object of that name.
	ErrNotFound = errors.New("not found")
)

// Client reads Node objects. APIClient is the real one.
type Client interface {
	ListNodes(ctx context.Context) (NodeList, error)
	// WatchNodes calls handle with each change after resourceVersion, in
	// order, until the API server ends the watch (nil), ctx ends, or the
	// stream fails (ErrExpired when resourceVersion is too old).
	WatchNodes(ctx context.Context, resourceVersion string, handle func(Event)) error
	// GetNode reads one Node object; ErrNotFound if there is none.
	GetNode(ctx context.Context, name string) (Node, error)
}

// serviceAccountDir is where the kubelet mounts a pod's service account.
const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// APIClient reads Node objects with plain HTTPS requests to the API server,
// authenticated as the pod's service account.
//
// Not client-go: the agent needs a list, a watch and a get of one resource,
// and linking client-go made the agent binary three times larger (52 MB
// instead of 16 MB) and its resident memory 38 MB instead of 15 MB.
type APIClient struct {
	server    string // https://host:port
	tokenFile string
	http      *http.Client // lists and gets: bounded by requestTimeout
	stream    *http.Client // watches: bounded by their context
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
		stream:    &http.Client{Transport: transport},
	}, nil
}

// get sends an authenticated GET for path (with query) and returns the
// response; the caller closes its body.
func (c *APIClient) get(ctx context.Context, client *http.Client, path string) (*http.Response, error) {
	return c.send(ctx, client, http.MethodGet, path, nil)
}

// send sends an authenticated request for path, with a JSON body unless
// body is nil, and returns the response; the caller closes its body.
func (c *APIClient) send(ctx context.Context, client *http.Client, method, path string, body []byte) (*http.Response, error) {
	// The token is read for every request: projected service account tokens
	// are rotated by the kubelet.
	token, err := os.ReadFile(c.tokenFile)
	if err != nil {
		return nil, fmt.Errorf("kubernetes token: %w", err)
	}
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.server+path, r)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("User-Agent", "grapevine")
	return client.Do(req)
}

// apiStatus is the API server's Status object: the body of an error
// response and of a watch's ERROR event.
type apiStatus struct {
	Code    int    `json:"code"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// statusError turns a response other than 200 into an error naming the
// API server's message; 410 is ErrExpired, 404 ErrNotFound.
func statusError(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var st apiStatus
	json.Unmarshal(body, &st)
	msg := st.Message
	if msg == "" {
		msg = strings.TrimSpace(string(body))
	}
	switch resp.StatusCode {
	case http.StatusGone:
		return fmt.Errorf("%s: %w: %s", resp.Status, ErrExpired, msg)
	case http.StatusNotFound:
		return fmt.Errorf("%s: %w: %s", resp.Status, ErrNotFound, msg)
	}
	return fmt.Errorf("%s: %s", resp.Status, msg)
}

// nodeObject is the part of a Node object's JSON that is read.
type nodeObject struct {
	Metadata struct {
		Name              string    `json:"name"`
		UID               string    `json:"uid"`
		ResourceVersion   string    `json:"resourceVersion"`
		CreationTimestamp time.Time `json:"creationTimestamp"`
	} `json:"metadata"`
	Status struct {
		Addresses []NodeAddress `json:"addresses"`
	} `json:"status"`
}

func (o nodeObject) node() (Node, error) {
	if o.Metadata.Name == "" {
		return Node{}, errors.New("a Node object without a name")
	}
	return Node{Name: o.Metadata.Name, UID: o.Metadata.UID, Created: o.Metadata.CreationTimestamp, Addresses: o.Status.Addresses}, nil
}

// ListNodes lists every Node object.
func (c *APIClient) ListNodes(ctx context.Context) (NodeList, error) {
	// resourceVersion=0 lets the API server answer from its watch cache
	// instead of a quorum read from etcd: every node lists all nodes, and
	// the watch that follows catches up from the version of the answer.
	resp, err := c.get(ctx, c.http, "/api/v1/nodes?resourceVersion=0")
	if err != nil {
		return NodeList{}, fmt.Errorf("list nodes: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return NodeList{}, fmt.Errorf("list nodes: %w", statusError(resp))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxListBytes+1))
	if err != nil {
		return NodeList{}, fmt.Errorf("list nodes: %w", err)
	}
	if len(body) > maxListBytes {
		return NodeList{}, fmt.Errorf("list nodes: the answer exceeds %d MiB", maxListBytes>>20)
	}
	var list struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
		Items []nodeObject `json:"items"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return NodeList{}, fmt.Errorf("list nodes: decode: %w", err)
	}
	out := NodeList{ResourceVersion: list.Metadata.ResourceVersion, Nodes: make([]Node, 0, len(list.Items))}
	for i, it := range list.Items {
		n, err := it.node()
		if err != nil {
			return NodeList{}, fmt.Errorf("list nodes: item %d: %w", i, err)
		}
		out.Nodes = append(out.Nodes, n)
	}
	return out, nil
}

// GetNode reads the Node object named name.
func (c *APIClient) GetNode(ctx context.Context, name string) (Node, error) {
	resp, err := c.get(ctx, c.http, "/api/v1/nodes/"+url.PathEscape(name))
	if err != nil {
		return Node{}, fmt.Errorf("get node %s: %w", name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Node{}, fmt.Errorf("get node %s: %w", name, statusError(resp))
	}
	var obj nodeObject
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxEventBytes)).Decode(&obj); err != nil {
		return Node{}, fmt.Errorf("get node %s: decode: %w", name, err)
	}
	n, err := obj.node()
	if err == nil && n.Name != name {
		err = fmt.Errorf("the API server answered with Node %q", n.Name)
	}
	if err != nil {
		return Node{}, fmt.Errorf("get node %s: %w", name, err)
	}
	return n, nil
}

// WatchNodes follows changes of the Node objects after resourceVersion.
func (c *APIClient) WatchNodes(ctx context.Context, resourceVersion string, handle func(Event)) error {
	timeout := minWatchTimeout + rand.N(maxWatchTimeout-minWatchTimeout)
	timeout = timeout.Truncate(time.Second)
	wctx, cancel := context.WithTimeout(ctx, timeout+watchGrace)
	defer cancel()
	q := url.Values{"watch": {"1"}, "allowWatchBookmarks": {"true"}, "timeoutSeconds": {strconv.Itoa(int(timeout.Seconds()))}}
	if resourceVersion != "" {
		q.Set("resourceVersion", resourceVersion)
	}
	resp, err := c.get(wctx, c.stream, "/api/v1/nodes?"+q.Encode())
	if err != nil {
		return fmt.Errorf("watch nodes: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("watch nodes: %w", statusError(resp))
	}
	err = decodeEvents(resp.Body, handle)
	if err != nil && wctx.Err() != nil && ctx.Err() == nil {
		return fmt.Errorf("watch nodes: no end of the watch from the API server %s after it was due", watchGrace)
	}
	if err != nil {
		return fmt.Errorf("watch nodes: %w", err)
	}
	return nil
}

// decodeEvents reads a watch's stream of JSON events and hands each on. It
// returns nil at the end of the stream, and an error for an ERROR event or
// anything that is not a well-formed Node event.
func decodeEvents(r io.Reader, handle func(Event)) error {
	limit := &perEventLimit{r: r}
	dec := json.NewDecoder(limit)
	for {
		limit.left = maxEventBytes
		var raw struct {
			Type   string          `json:"type"`
			Object json.RawMessage `json:"object"`
		}
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("decode event: %w", err)
		}
		ev, err := parseEvent(EventType(raw.Type), raw.Object)
		if err != nil {
			return err
		}
		handle(ev)
	}
}

func parseEvent(typ EventType, object json.RawMessage) (Event, error) {
	switch typ {
	case Added, Modified, Deleted, Bookmark:
	case "ERROR":
		var st apiStatus
		if err := json.Unmarshal(object, &st); err != nil {
			return Event{}, fmt.Errorf("decode ERROR event: %w", err)
		}
		if st.Code == http.StatusGone || st.Reason == "Expired" || st.Reason == "Gone" {
			return Event{}, fmt.Errorf("%w: %s", ErrExpired, st.Message)
		}
		return Event{}, fmt.Errorf("ERROR event: %d %s: %s", st.Code, st.Reason, st.Message)
	default:
		return Event{}, fmt.Errorf("event of unknown type %.40q", typ)
	}
	var obj nodeObject
	if err := json.Unmarshal(object, &obj); err != nil {
		return Event{}, fmt.Errorf("decode %s event: %w", typ, err)
	}
	ev := Event{Type: typ, ResourceVersion: obj.Metadata.ResourceVersion}
	if typ == Bookmark {
		return ev, nil
	}
	var err error
	if ev.Node, err = obj.node(); err != nil {
		return Event{}, fmt.Errorf("%s event: %w", typ, err)
	}
	return ev, nil
}

// perEventLimit fails a read once one event has taken more than its share
// of bytes, so a hostile or broken stream cannot grow the decoder's buffer
// without bound.
type perEventLimit struct {
	r    io.Reader
	left int64
}

func (l *perEventLimit) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, fmt.Errorf("a watch event exceeds %d MiB", maxEventBytes>>20)
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

// Family is the address family of the InternalIPs that become seeds: that
// of the cluster's pool, which is the family gossip and the ledger speak
// (IPv4, or IPv6 in an IPv6-only cluster). A dual-stack cluster's pool is
// IPv4, so its seeds are too.
type Family int

// The two families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// Discoverer follows the Node objects and turns them into seed addresses,
// the founding rule, this node's UID, and deletions.
type Discoverer struct {
	client Client
	self   string
	family Family
	log    *slog.Logger
}

// New returns a Discoverer that reports every node's InternalIP of family
// except that of the node named self.
func New(client Client, self string, family Family, log *slog.Logger) *Discoverer {
	return &Discoverer{client: client, self: self, family: family, log: log}
}

// Discovery is what the Node objects say at one moment.
type Discovery struct {
	// Seeds are the InternalIPs (of the Discoverer's family) of every node
	// but this one, sorted and without duplicates.
	Seeds []string
	// SelfUID is the UID of this node's own Node object, "" while it has
	// none.
	SelfUID string
}

func (d Discovery) equal(o Discovery) bool {
	return d.SelfUID == o.SelfUID && slices.Equal(d.Seeds, o.Seeds)
}

// Discover lists the nodes once.
func (d *Discoverer) Discover(ctx context.Context) (Discovery, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	list, err := d.client.ListNodes(ctx)
	if err != nil {
		return Discovery{}, err
	}
	return d.discovery(list.Nodes), nil
}

// discovery derives what nodes say. Nodes without an InternalIP of the
// family are no seeds: an ExternalIP may sit behind NAT, and the routed data
// path needs peers on a directly connected network anyway.
func (d *Discoverer) discovery(nodes []Node) Discovery {
	var out Discovery
	for _, n := range nodes {
		if n.Name == d.self {
			out.SelfUID = n.UID
			continue
		}
		ip, ok := internalIP(n, d.family)
		if !ok {
			d.log.Debug("node has no "+d.family.String()+" InternalIP; not a seed", "peer", n.Name, "addresses", n.Addresses)
			continue
		}
		out.Seeds = append(out.Seeds, ip.String())
	}
	slices.Sort(out.Seeds)
	out.Seeds = slices.Compact(out.Seeds)
	return out
}

// internalIP returns the first InternalIP of family in the node's status.
// An IPv6 one must be a global unicast address without a zone, as the
// agent's IPv6 host address is (an IPv4-mapped one is IPv4 in disguise, a
// link-local one names no route to the node); the address a dual-stack
// Node lists first says nothing about its family.
func internalIP(n Node, family Family) (netip.Addr, bool) {
	for _, a := range n.Addresses {
		if a.Type != "InternalIP" {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil {
			continue
		}
		if family == IPv4 && ip.Is4() ||
			family == IPv6 && ip.Is6() && !ip.Is4In6() && ip.Zone() == "" && ip.IsGlobalUnicast() {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// Handlers receive what Run observes. Each may be nil; they are called
// from Run's goroutine, one at a time, and should return quickly.
type Handlers struct {
	// Discovered gets the discovery after the first successful list and
	// whenever it changes.
	Discovered func(Discovery)
	// Deleted gets each Node object observed deleted: a DELETED event, or
	// a Node in one list and absent from a later one (a watch that fell
	// too far behind). A Node absent from the first list was never seen,
	// so its absence says nothing.
	Deleted func(Node)
	// Added gets each Node object that appears after the first list (a
	// new UID under a known name included).
	Added func(Node)
}

// maxRetry caps the pause between failed lists.
const maxRetry = 30 * time.Second

// Run lists the Node objects, then watches them, until ctx ends. A watch
// the API server ends is resumed from the last version seen; a watch that
// falls too far behind (410 Gone) or fails leads to a new list, after a
// pause when it failed. Failed lists and watches are logged and retried,
// backing off from one second up to maxRetry until a watch works again.
// Run returns ctx's error when ctx ends.
//
// Each agent keeps the name, UID, creation time and addresses of every
// Node: a few hundred bytes per node.
func (d *Discoverer) Run(ctx context.Context, h Handlers) error {
	var known map[string]Node // nil until the first list
	var last Discovery
	reported := false
	report := func() {
		disc := d.discovery(mapValues(known))
		if reported && disc.equal(last) {
			return
		}
		d.log.Info("seeds from the Kubernetes API", "addrs", disc.Seeds, "uid", disc.SelfUID)
		last, reported = disc, true
		if h.Discovered != nil {
			h.Discovered(disc)
		}
	}
	deleted := func(n Node) {
		d.log.Info("Node object deleted", "peer", n.Name, "uid", n.UID)
		if h.Deleted != nil {
			h.Deleted(n)
		}
	}
	added := func(n Node) {
		if h.Added != nil {
			h.Added(n)
		}
	}
	failures := 0
	for {
		if failures > 0 {
			wait := min(time.Second<<min(failures-1, 10), maxRetry)
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
		lctx, cancel := context.WithTimeout(ctx, requestTimeout)
		list, err := d.client.ListNodes(lctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			failures++
			d.log.Warn("cannot list the Node objects; retrying", "err", err, "retryIn", min(time.Second<<min(failures-1, 10), maxRetry))
			continue
		}
		next := make(map[string]Node, len(list.Nodes))
		for _, n := range list.Nodes {
			next[n.Name] = n
		}
		if known != nil {
			for name, old := range known {
				if n, ok := next[name]; !ok || n.UID != old.UID {
					deleted(old)
				}
			}
			for name, n := range next {
				if old, ok := known[name]; !ok || n.UID != old.UID {
					added(n)
				}
			}
		}
		known = next
		report()

		rv := list.ResourceVersion
		for {
			began := time.Now()
			events := 0
			err := d.client.WatchNodes(ctx, rv, func(ev Event) {
				events++
				if ev.ResourceVersion != "" {
					rv = ev.ResourceVersion
				}
				switch ev.Type {
				case Added, Modified:
					old, ok := known[ev.Node.Name]
					known[ev.Node.Name] = ev.Node
					if ok && old.UID != ev.Node.UID {
						deleted(old)
					}
					if !ok || old.UID != ev.Node.UID {
						added(ev.Node)
					}
				case Deleted:
					if old, ok := known[ev.Node.Name]; ok && (ev.Node.UID == "" || old.UID == ev.Node.UID) {
						delete(known, ev.Node.Name)
					}
					deleted(ev.Node)
				}
				report()
			})
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err == nil && events == 0 && time.Since(began) < time.Second {
				err = errors.New("the API server ended the watch at once")
			}
			if err == nil || events > 0 {
				// The watch worked for a while: pauses start over.
				failures = 0
			}
			if err == nil {
				continue // ended by the API server's timeout: resume
			}
			if errors.Is(err, ErrExpired) {
				d.log.Info("the watch of Node objects fell behind; listing them again", "err", err)
			} else {
				failures++
				d.log.Warn("the watch of Node objects failed; listing them again", "err", err)
			}
			break
		}
	}
}

func mapValues(m map[string]Node) []Node {
	out := make([]Node, 0, len(m))
	for _, n := range m {
		out = append(out, n)
	}
	return out
}
