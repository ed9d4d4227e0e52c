package kubejoin

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func node(name string, addrs ...NodeAddress) Node {
	return Node{Name: name, Addresses: addrs}
}

func internal(ip string) NodeAddress {
	return NodeAddress{Type: "InternalIP", Address: ip}
}

// TestSeeds: the seeds are the other nodes' InternalIPs of the pool's
// family; a Node without one (or with only an ExternalIP, a malformed, an
// IPv4-mapped or, for IPv6, a link-local address) is skipped.
func TestSeeds(t *testing.T) {
	client := newFake(
		node("self", internal("192.0.2.1"), internal("2001:db8::1")),
		node("b", internal("192.0.2.12"), NodeAddress{Type: "Hostname", Address: "b"}),
		node("a", internal("192.0.2.11")),
		node("no-addresses"),
		node("v6-only", internal("2001:db8::5")),
		node("dual-stack", internal("2001:db8::6"), internal("192.0.2.13")),
		node("dual-stack-v4-first", internal("192.0.2.14"), internal("fd00:172::7")),
		node("external-only", NodeAddress{Type: "ExternalIP", Address: "198.51.100.7"}, NodeAddress{Type: "ExternalIP", Address: "2001:db8:ff::7"}),
		node("mapped-v6", internal("::ffff:192.0.2.99")),
		node("link-local-v6", internal("fe80::8")),
		node("zoned-v6", internal("fe80::9%eth0")),
		node("garbage", internal("not-an-ip")),
		node("same-ip-as-a", internal("192.0.2.11")),
		node("same-ip-as-v6-only", internal("2001:db8::5")),
	)
	for _, tc := range []struct {
		family Family
		want   []string
	}{
		{IPv4, []string{"192.0.2.11", "192.0.2.12", "192.0.2.13", "192.0.2.14"}},
		{IPv6, []string{"2001:db8::5", "2001:db8::6", "fd00:172::7"}},
	} {
		t.Run(tc.family.String(), func(t *testing.T) {
			got, err := New(client, "self", tc.family, discard).Discover(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Seeds, tc.want) {
				t.Errorf("Seeds = %v, want %v", got.Seeds, tc.want)
			}
			if got.SelfUID != "uid-self" {
				t.Errorf("SelfUID = %q, want uid-self", got.SelfUID)
			}
		})
	}
}

func TestSeedsEmptyCluster(t *testing.T) {
	client := newFake(node("self", internal("192.0.2.1")))
	got, err := New(client, "self", IPv4, discard).Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Seeds) != 0 || got.SelfUID == "" {
		t.Errorf("Discover = %+v, want no seeds and this node's UID: the only node is this one", got)
	}
}

func TestSeedsListError(t *testing.T) {
	client := newFake()
	client.failList = func() error { return errors.New("forbidden") }
	if _, err := New(client, "self", IPv4, discard).Discover(context.Background()); err == nil {
		t.Fatal("Discover succeeded although listing nodes failed")
	}
}

// runner runs Discoverer.Run in the background and collects what it
// reports.
type runner struct {
	mu      sync.Mutex
	found   []Discovery
	deleted []string // name/uid
	added   []string
	done    chan error
	cancel  context.CancelFunc
}

func startRun(d *Discoverer) *runner {
	ctx, cancel := context.WithCancel(context.Background())
	r := &runner{done: make(chan error, 1), cancel: cancel}
	go func() {
		r.done <- d.Run(ctx, Handlers{
			Discovered: func(d Discovery) { r.mu.Lock(); r.found = append(r.found, d); r.mu.Unlock() },
			Deleted:    func(n Node) { r.mu.Lock(); r.deleted = append(r.deleted, n.Name+"/"+n.UID); r.mu.Unlock() },
			Added:      func(n Node) { r.mu.Lock(); r.added = append(r.added, n.Name+"/"+n.UID); r.mu.Unlock() },
		})
	}()
	return r
}

// next returns the discoveries, deletions and additions reported since
// the last call, once Run waits for something.
func (r *runner) next() (found []Discovery, deleted, added []string) {
	synctest.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	found, deleted, added = r.found, r.deleted, r.added
	r.found, r.deleted, r.added = nil, nil, nil
	return found, deleted, added
}

// seeds returns the seeds of the last discovery reported since the last
// call, or nil if none was.
func (r *runner) seeds(t *testing.T) []string {
	t.Helper()
	found, _, _ := r.next()
	if len(found) == 0 {
		return nil
	}
	return found[len(found)-1].Seeds
}

func (r *runner) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	if err := <-r.done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run returned %v, want context.Canceled", err)
	}
}

// TestRunReportsChanges: changes arrive by the watch, at once, not after a
// list interval.
func TestRunReportsChanges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		self, a := node("self", internal("192.0.2.1")), node("a", internal("192.0.2.11"))
		client := newFake(self, a)
		r := startRun(New(client, "self", IPv4, discard))
		defer r.stop(t)

		found, _, _ := r.next()
		if len(found) != 1 || !slices.Equal(found[0].Seeds, []string{"192.0.2.11"}) || found[0].SelfUID != "uid-self" {
			t.Fatalf("first report = %+v, want seeds [192.0.2.11] and this node's UID", found)
		}

		time.Sleep(time.Hour)
		if got := r.seeds(t); got != nil {
			t.Errorf("reported %v although nothing changed", got)
		}

		b := node("b", internal("192.0.2.12"))
		client.set(self, a, b)
		if got := r.seeds(t); !slices.Equal(got, []string{"192.0.2.11", "192.0.2.12"}) {
			t.Errorf("after adding b: %v, want [192.0.2.11 192.0.2.12]", got)
		}

		a = node("a", internal("192.0.2.21"))
		client.set(self, a, b)
		if got := r.seeds(t); !slices.Equal(got, []string{"192.0.2.12", "192.0.2.21"}) {
			t.Errorf("after a's address changed: %v, want [192.0.2.12 192.0.2.21]", got)
		}

		client.set(self, a)
		if got := r.seeds(t); !slices.Equal(got, []string{"192.0.2.21"}) {
			t.Errorf("after deleting b: %v, want [192.0.2.21]", got)
		}
		if client.listCount() != 1 {
			t.Errorf("%d lists, want 1: changes come by the watch", client.listCount())
		}
	})
}

// TestRunReportsDeletions: a DELETED event is reported at once; a Node
// deleted and registered again is a deletion and an addition with a new
// UID, and this node's own new UID is reported.
func TestRunReportsDeletions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		self, a, b := node("self", internal("192.0.2.1")), node("a", internal("192.0.2.11")), node("b", internal("192.0.2.12"))
		client := newFake(self, a, b)
		r := startRun(New(client, "self", IPv4, discard))
		defer r.stop(t)
		if _, deleted, added := r.next(); deleted != nil || added != nil {
			t.Fatalf("first list reported deletions %v, additions %v", deleted, added)
		}

		client.set(self, a)
		if _, deleted, _ := r.next(); !slices.Equal(deleted, []string{"b/uid-b"}) {
			t.Errorf("after deleting b: deletions %v, want [b/uid-b]", deleted)
		}

		b.UID = "uid-b2"
		client.set(self, a, b)
		if _, deleted, added := r.next(); deleted != nil || !slices.Equal(added, []string{"b/uid-b2"}) {
			t.Errorf("b registered again: deletions %v, additions %v; want [b/uid-b2] added", deleted, added)
		}

		// This node's Node deleted and registered again (under another UID)
		// while the agent runs: both steps show in its UID.
		client.set(a, b)
		found, deleted, _ := r.next()
		if !slices.Equal(deleted, []string{"self/uid-self"}) || len(found) != 1 || found[0].SelfUID != "" {
			t.Errorf("own Node deleted: deletions %v, discoveries %+v; want self deleted and no UID", deleted, found)
		}
		self.UID = "uid-self2"
		client.set(self, a, b)
		if found, _, _ := r.next(); len(found) != 1 || found[0].SelfUID != "uid-self2" {
			t.Errorf("own Node registered again: discoveries %+v, want UID uid-self2", found)
		}
	})
}

// TestRunRelistsAfterExpiry: a watch that fell behind (410 Gone) lists
// again at once; a Node missing from the new list was deleted meanwhile,
// one that appeared is added.
func TestRunRelistsAfterExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		self, a, b, c := node("self", internal("192.0.2.1")), node("a", internal("192.0.2.11")), node("b", internal("192.0.2.12")), node("c", internal("192.0.2.13"))
		client := newFake(self, a, b)
		r := startRun(New(client, "self", IPv4, discard))
		defer r.stop(t)
		r.next()

		client.replaceUnseen(self, a, c)
		found, deleted, added := r.next()
		if !slices.Equal(deleted, []string{"b/uid-b"}) || !slices.Equal(added, []string{"c/uid-c"}) {
			t.Errorf("after the relist: deletions %v, additions %v; want b deleted, c added", deleted, added)
		}
		if len(found) != 1 || !slices.Equal(found[0].Seeds, []string{"192.0.2.11", "192.0.2.13"}) {
			t.Errorf("after the relist: discoveries %+v", found)
		}
		if client.listCount() != 2 {
			t.Errorf("%d lists, want 2", client.listCount())
		}
	})
}

// TestRunResumesWatch: a watch the API server ends normally is resumed
// from the last version seen, without a list.
func TestRunResumesWatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		self, a := node("self", internal("192.0.2.1")), node("a", internal("192.0.2.11"))
		client := newFake(self, a)
		r := startRun(New(client, "self", IPv4, discard))
		defer r.stop(t)
		r.next()
		client.set(self)
		r.next()
		time.Sleep(2 * time.Second) // a watch that lasted
		client.endWatches()
		r.next()
		client.set(self, a)
		if _, _, added := r.next(); !slices.Equal(added, []string{"a/uid-a"}) {
			t.Errorf("additions after the resumed watch: %v", added)
		}
		if client.listCount() != 1 || !slices.Equal(client.watchedFrom(), []string{"1", "2"}) {
			t.Errorf("lists %d, watches from %q; want one list, watches from 1 then 2", client.listCount(), client.watchedFrom())
		}
	})
}

// TestRunNeverSeenIsNoDeletion: a name absent from the first list (an
// agent joined with --join, not a Kubernetes node) is never reported.
func TestRunNeverSeenIsNoDeletion(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFake(node("self", internal("192.0.2.1")))
		r := startRun(New(client, "self", IPv4, discard))
		defer r.stop(t)
		r.next()
		client.replaceUnseen(node("self", internal("192.0.2.1")))
		if _, deleted, added := r.next(); deleted != nil || added != nil {
			t.Errorf("deletions %v, additions %v; want none", deleted, added)
		}
	})
}

func TestRunRetriesWithBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFake(node("a", internal("192.0.2.11")))
		var lists []time.Time
		client.failList = func() error {
			lists = append(lists, time.Now())
			if len(lists) <= 3 {
				return errors.New("connection refused")
			}
			return nil
		}
		start := time.Now()
		r := startRun(New(client, "self", IPv4, discard))
		defer r.stop(t)

		// Failures at 0s, 1s, 3s; success at 7s.
		time.Sleep(7 * time.Second)
		if got := r.seeds(t); !slices.Equal(got, []string{"192.0.2.11"}) {
			t.Fatalf("after retries: %v, want [192.0.2.11]", got)
		}
		var offsets []time.Duration
		for _, l := range lists {
			offsets = append(offsets, l.Sub(start))
		}
		want := []time.Duration{0, time.Second, 3 * time.Second, 7 * time.Second}
		if !slices.Equal(offsets, want) {
			t.Errorf("list calls at %v, want %v", offsets, want)
		}
	})
}

// TestRunWatchFailuresBackOff: a watch that keeps failing at once (a
// broken or hostile API server) leads to lists spaced further and further
// apart, never a tight loop.
func TestRunWatchFailuresBackOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFake(node("a", internal("192.0.2.11")))
		client.setFailWatch(func() error { return errors.New("watch nodes: decode event: invalid character") })
		r := startRun(New(client, "self", IPv4, discard))
		defer r.stop(t)
		time.Sleep(time.Minute)
		r.next()
		// Lists at 0, 1, 3, 7, 15, 31 s, then every 30 s: 7 in a minute.
		if client.listCount() < 5 || client.listCount() > 8 {
			t.Errorf("%d lists in a minute of failing watches, want about 7", client.listCount())
		}
		client.setFailWatch(nil)
		time.Sleep(time.Minute)
		n := client.listCount()
		time.Sleep(time.Hour)
		r.next()
		if client.listCount() != n {
			t.Errorf("%d more lists in an hour once the watch works", client.listCount()-n)
		}
	})
}

func TestRunWithoutHandlers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFake(node("a", internal("192.0.2.11")))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- New(client, "self", IPv4, discard).Run(ctx, Handlers{}) }()
		synctest.Wait()
		client.set()
		synctest.Wait()
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v", err)
		}
	})
}

func TestInClusterClientOutsideCluster(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	if _, err := NewInClusterClient(); err == nil {
		t.Fatal("NewInClusterClient succeeded outside a cluster")
	}
}

// apiServer is a TLS test server answering GET /api/v1/nodes like the API
// server, and the files a service account mount holds.
func apiServer(t *testing.T, handler http.HandlerFunc) (srv *httptest.Server, tokenFile, caFile string) {
	t.Helper()
	srv = httptest.NewTLSServer(handler)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	tokenFile, caFile = filepath.Join(dir, "token"), filepath.Join(dir, "ca.crt")
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(caFile, ca, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte("token-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv, tokenFile, caFile
}

const nodeList = `{"kind":"NodeList","apiVersion":"v1","metadata":{"resourceVersion":"42"},"items":[
 {"metadata":{"name":"a","uid":"7c0f1a52-1111-4c1e-9d3a-000000000001","resourceVersion":"40","creationTimestamp":"2026-01-02T03:04:05Z","labels":{"x":"y"}},"status":{"addresses":[{"type":"InternalIP","address":"192.0.2.11"},{"type":"Hostname","address":"a"}]}},
 {"metadata":{"name":"self","uid":"7c0f1a52-1111-4c1e-9d3a-000000000002","resourceVersion":"41","creationTimestamp":"2026-01-01T00:00:00Z"},"status":{"addresses":[{"type":"InternalIP","address":"192.0.2.1"}]}}]}`

func TestAPIClientListsNodes(t *testing.T) {
	var tokens []string
	srv, tokenFile, caFile := apiServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/nodes" || r.URL.Query().Get("resourceVersion") != "0" {
			http.Error(w, "unexpected request "+r.URL.String(), http.StatusNotFound)
			return
		}
		tokens = append(tokens, r.Header.Get("Authorization"))
		fmt.Fprint(w, nodeList)
	})
	c, err := NewAPIClient(srv.URL, tokenFile, caFile)
	if err != nil {
		t.Fatal(err)
	}
	disc, err := New(c, "self", IPv4, discard).Discover(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(disc.Seeds, []string{"192.0.2.11"}) || disc.SelfUID != "7c0f1a52-1111-4c1e-9d3a-000000000002" {
		t.Errorf("Discover = %+v, want seeds [192.0.2.11] and this node's UID", disc)
	}
	// A rotated token is picked up by the next request.
	if err := os.WriteFile(tokenFile, []byte("token-2"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListNodes(t.Context()); err != nil {
		t.Fatal(err)
	}
	if want := []string{"Bearer token-1", "Bearer token-2"}; !slices.Equal(tokens, want) {
		t.Errorf("Authorization headers = %q, want %q", tokens, want)
	}
}

func TestAPIClientErrors(t *testing.T) {
	srv, tokenFile, caFile := apiServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprint(w, `{"kind":"Status","message":"nodes is forbidden: User \"system:serviceaccount:kube-system:x\" cannot list resource \"nodes\""}`)
	})
	c, err := NewAPIClient(srv.URL, tokenFile, caFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListNodes(t.Context()); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("ListNodes on 403 = %v, want an error naming the API server's message", err)
	}

	// A server whose certificate the CA file does not vouch for is refused.
	otherCA := filepath.Join(t.TempDir(), "other-ca.crt")
	if err := os.WriteFile(otherCA, selfSignedPEM(t), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = NewAPIClient(srv.URL, tokenFile, otherCA)
	if err != nil {
		t.Fatal(err)
	}
	var unknownCA x509.UnknownAuthorityError
	if _, err := c.ListNodes(t.Context()); !errors.As(err, &unknownCA) {
		t.Errorf("ListNodes against an untrusted server = %v, want an unknown-authority error", err)
	}

	if _, err := NewAPIClient(srv.URL, tokenFile, filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("NewAPIClient accepted a missing CA file")
	}
	if _, err := NewAPIClient(srv.URL, filepath.Join(t.TempDir(), "missing"), caFile); err == nil {
		t.Error("NewAPIClient accepted a missing token file")
	}
}

// selfSignedPEM returns a fresh CA certificate that signed nothing.
func selfSignedPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "another CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// watchServer is an API server that answers a list with nodeList and a
// watch with the given stream, recording the watch requests.
func watchServer(t *testing.T, stream func(w http.ResponseWriter, r *http.Request)) (c *APIClient, watches chan *http.Request) {
	t.Helper()
	watches = make(chan *http.Request, 16)
	srv, tokenFile, caFile := apiServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/api/v1/nodes" && r.URL.Query().Get("watch") == "1":
			watches <- r
			stream(w, r)
		case r.URL.Path == "/api/v1/nodes":
			fmt.Fprint(w, nodeList)
		default:
			http.Error(w, "unexpected request "+r.URL.String(), http.StatusNotFound)
		}
	})
	c, err := NewAPIClient(srv.URL, tokenFile, caFile)
	if err != nil {
		t.Fatal(err)
	}
	return c, watches
}

const watchStream = `{"type":"ADDED","object":{"kind":"Node","metadata":{"name":"b","uid":"u-b","resourceVersion":"43","creationTimestamp":"2026-01-03T00:00:00Z"},"status":{"addresses":[{"type":"InternalIP","address":"192.0.2.12"}]}}}
{"type":"MODIFIED","object":{"kind":"Node","metadata":{"name":"b","uid":"u-b","resourceVersion":"44"},"status":{"addresses":[{"type":"InternalIP","address":"192.0.2.22"}]}}}
{"type":"BOOKMARK","object":{"kind":"Node","metadata":{"resourceVersion":"50"}}}
{"type":"DELETED","object":{"kind":"Node","metadata":{"name":"a","uid":"7c0f1a52-1111-4c1e-9d3a-000000000001","resourceVersion":"51"}}}
`

func TestAPIClientWatchesNodes(t *testing.T) {
	c, watches := watchServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		// One event per write, as the API server flushes them.
		for _, line := range strings.SplitAfter(watchStream, "\n") {
			io.WriteString(w, line)
			w.(http.Flusher).Flush()
		}
	})
	var got []Event
	if err := c.WatchNodes(t.Context(), "42", func(ev Event) { got = append(got, ev) }); err != nil {
		t.Fatal(err)
	}
	r := <-watches
	q := r.URL.Query()
	if q.Get("resourceVersion") != "42" || q.Get("allowWatchBookmarks") != "true" || q.Get("timeoutSeconds") == "" || r.Header.Get("Authorization") != "Bearer token-1" {
		t.Errorf("watch request %s with Authorization %q", r.URL, r.Header.Get("Authorization"))
	}
	var summary []string
	for _, ev := range got {
		s := fmt.Sprintf("%s %s %s %s", ev.Type, ev.Node.Name, ev.Node.UID, ev.ResourceVersion)
		if ip, ok := internalIP(ev.Node, IPv4); ok {
			s += " " + ip.String()
		}
		summary = append(summary, s)
	}
	want := []string{"ADDED b u-b 43 192.0.2.12", "MODIFIED b u-b 44 192.0.2.22", "BOOKMARK   50", "DELETED a 7c0f1a52-1111-4c1e-9d3a-000000000001 51"}
	if !slices.Equal(summary, want) {
		t.Errorf("events:\n%s\nwant:\n%s", strings.Join(summary, "\n"), strings.Join(want, "\n"))
	}
}

// TestRunOverHTTP: Run against an API server: the list, then a watch from
// its version that reports a deletion.
func TestRunOverHTTP(t *testing.T) {
	release := make(chan struct{})
	c, watches := watchServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("resourceVersion") != "42" {
			<-r.Context().Done() // later watches: nothing happens
			return
		}
		fmt.Fprint(w, watchStream)
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	deleted := make(chan Node, 1)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- New(c, "self", IPv4, discard).Run(ctx, Handlers{Deleted: func(n Node) { deleted <- n }})
	}()
	select {
	case n := <-deleted:
		if n.Name != "a" || n.UID != "7c0f1a52-1111-4c1e-9d3a-000000000001" {
			t.Errorf("deleted %+v", n)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no deletion reported")
	}
	close(release)
	<-watches
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v", err)
	}
}

// TestAPIClientWatchErrors: what the watch makes of a refusal, an ERROR
// event and streams that are not a Node watch: an error that says what was
// wrong (ErrExpired where a new list helps), never a panic.
func TestAPIClientWatchErrors(t *testing.T) {
	huge := `{"type":"ADDED","object":{"metadata":{"name":"` + strings.Repeat("x", maxEventBytes) + `"}}}`
	for _, tc := range []struct {
		name    string
		status  int
		body    string
		want    string
		expired bool
		events  int
	}{
		{name: "410 Gone", status: http.StatusGone, body: `{"kind":"Status","code":410,"reason":"Expired","message":"too old resource version: 42 (90)"}`, want: "too old resource version", expired: true},
		{name: "ERROR event 410", body: `{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"too old resource version: 42 (90)"}}`, want: "too old resource version", expired: true},
		{name: "ERROR event other", body: `{"type":"ERROR","object":{"kind":"Status","code":500,"reason":"InternalError","message":"etcd unavailable"}}`, want: "etcd unavailable"},
		{name: "forbidden", status: http.StatusForbidden, body: `{"kind":"Status","code":403,"message":"nodes is forbidden: cannot watch resource \"nodes\""}`, want: "cannot watch"},
		{name: "not JSON", body: `<html>proxy error</html>`, want: "decode event"},
		{name: "truncated", body: watchStream[:120], want: "decode event", events: 0},
		{name: "event after a good one is garbage", body: strings.SplitAfter(watchStream, "\n")[0] + `{"type":"ADDED","object":[1,2]}`, want: "decode ADDED event", events: 1},
		{name: "unknown type", body: `{"type":"EXPLODED","object":{}}`, want: "unknown type"},
		{name: "no name", body: `{"type":"DELETED","object":{"metadata":{"uid":"x"}}}`, want: "without a name"},
		{name: "bad timestamp", body: `{"type":"ADDED","object":{"metadata":{"name":"a","creationTimestamp":"yesterday"}}}`, want: "decode ADDED event"},
		{name: "wrong types", body: `{"type":"ADDED","object":{"metadata":{"name":7}}}`, want: "decode ADDED event"},
		{name: "ERROR with garbage", body: `{"type":"ERROR","object":"boom"}`, want: "decode ERROR event"},
		{name: "huge event", body: huge, want: "exceeds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := watchServer(t, func(w http.ResponseWriter, r *http.Request) {
				if tc.status != 0 {
					w.WriteHeader(tc.status)
				}
				io.WriteString(w, tc.body)
			})
			events := 0
			err := c.WatchNodes(t.Context(), "42", func(Event) { events++ })
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("WatchNodes = %v, want an error containing %q", err, tc.want)
			}
			if errors.Is(err, ErrExpired) != tc.expired {
				t.Errorf("errors.Is(%v, ErrExpired) = %v, want %v", err, !tc.expired, tc.expired)
			}
			if events != tc.events {
				t.Errorf("%d events handed on, want %d", events, tc.events)
			}
		})
	}
}

// TestAPIClientListRejectsMalformed: a list the client cannot trust is an
// error, not a partial list.
func TestAPIClientListRejectsMalformed(t *testing.T) {
	for name, body := range map[string]string{
		"not JSON":     `proxy error`,
		"no name":      `{"items":[{"metadata":{"name":"a"}},{"metadata":{"uid":"x"}}]}`,
		"items object": `{"items":{"a":1}}`,
		"huge":         `{"items":[` + strings.Repeat(`{"metadata":{"name":"a"}},`, maxListBytes/25) + `{}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			srv, tokenFile, caFile := apiServer(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) })
			c, err := NewAPIClient(srv.URL, tokenFile, caFile)
			if err != nil {
				t.Fatal(err)
			}
			if list, err := c.ListNodes(t.Context()); err == nil {
				t.Errorf("ListNodes accepted it: %d nodes", len(list.Nodes))
			}
		})
	}
}

func TestAPIClientGetNode(t *testing.T) {
	srv, tokenFile, caFile := apiServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.EscapedPath() {
		case "/api/v1/nodes/self":
			fmt.Fprint(w, `{"kind":"Node","metadata":{"name":"self","uid":"u-1"}}`)
		case "/api/v1/nodes/impostor":
			fmt.Fprint(w, `{"kind":"Node","metadata":{"name":"other","uid":"u-2"}}`)
		case "/api/v1/nodes/a%2Fb":
			fmt.Fprint(w, `{"kind":"Node","metadata":{"name":"a/b","uid":"u-3"}}`)
		default:
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"kind":"Status","code":404,"reason":"NotFound","message":"nodes \"gone\" not found"}`)
		}
	})
	c, err := NewAPIClient(srv.URL, tokenFile, caFile)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := c.GetNode(t.Context(), "self"); err != nil || n.UID != "u-1" {
		t.Errorf("GetNode(self) = %+v, %v", n, err)
	}
	if _, err := c.GetNode(t.Context(), "gone"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "not found") {
		t.Errorf("GetNode(gone) = %v, want ErrNotFound", err)
	}
	if _, err := c.GetNode(t.Context(), "impostor"); err == nil {
		t.Error("GetNode accepted an answer about another Node")
	}
	if n, err := c.GetNode(t.Context(), "a/b"); err != nil || n.UID != "u-3" {
		t.Errorf("GetNode(a/b) = %+v, %v; want the name escaped in the path", n, err)
	}
}

// FuzzDecodeEvents feeds arbitrary bytes to the event decoder.
func FuzzDecodeEvents(f *testing.F) {
	f.Add([]byte(watchStream))
	f.Add([]byte(`{"type":"ERROR","object":{"code":410}}`))
	f.Add([]byte(`{"type":"DELETED","object":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		decodeEvents(bytes.NewReader(b), func(ev Event) {
			if ev.Type != Bookmark && ev.Node.Name == "" {
				t.Fatalf("handed on an event without a Node name: %+v", ev)
			}
		})
	})
}
