package kubejoin

import (
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

// fakeLister is an in-memory NodeLister whose nodes and failures a test
// changes as it goes.
type fakeLister struct {
	mu    sync.Mutex
	nodes []Node
	fail  func() error // nil: succeed
}

func newFake(nodes ...Node) *fakeLister { return &fakeLister{nodes: nodes} }

func (f *fakeLister) set(nodes ...Node) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodes = nodes
}

func (f *fakeLister) ListNodes(context.Context) ([]Node, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		if err := f.fail(); err != nil {
			return nil, err
		}
	}
	return slices.Clone(f.nodes), nil
}

func TestSeeds(t *testing.T) {
	client := newFake(
		node("self", internal("192.0.2.1")),
		node("b", internal("192.0.2.12"), NodeAddress{Type: "Hostname", Address: "b"}),
		node("a", internal("192.0.2.11")),
		node("no-addresses"),
		node("v6-only", internal("2001:db8::5")),
		node("dual-stack", internal("2001:db8::6"), internal("192.0.2.13")),
		node("external-only", NodeAddress{Type: "ExternalIP", Address: "198.51.100.7"}),
		node("mapped-v6", internal("::ffff:192.0.2.99")),
		node("garbage", internal("not-an-ip")),
		node("same-ip-as-a", internal("192.0.2.11")),
	)
	got, err := New(client, "self", discard).Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"192.0.2.11", "192.0.2.12", "192.0.2.13"}
	if !slices.Equal(got.Seeds, want) {
		t.Errorf("Seeds = %v, want %v", got.Seeds, want)
	}
}

// TestOldestNodeFounds checks the founding rule every agent applies to the
// same list: the oldest creationTimestamp, ties broken by the smaller name,
// whether or not that node has an address this one can use.
func TestOldestNodeFounds(t *testing.T) {
	at := func(s int) time.Time { return time.Unix(1_700_000_000+int64(s), 0) }
	for _, tc := range []struct {
		name  string
		nodes []Node
		want  string
	}{
		{"oldest wins", []Node{{Name: "b", Created: at(5)}, {Name: "a", Created: at(9)}, {Name: "c", Created: at(7)}}, "b"},
		{"tie: smaller name", []Node{{Name: "n2", Created: at(1)}, {Name: "n1", Created: at(1)}, {Name: "n0", Created: at(2)}}, "n1"},
		{"oldest without an IPv4 address", []Node{{Name: "v6", Created: at(0), Addresses: []NodeAddress{internal("2001:db8::1")}}, {Name: "self", Created: at(3)}}, "v6"},
		{"empty list", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := New(newFake(tc.nodes...), "self", discard).Discover(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if got.Oldest != tc.want {
				t.Errorf("Oldest = %q, want %q", got.Oldest, tc.want)
			}
			for _, n := range tc.nodes {
				if got.Founder(n.Name) != (n.Name == tc.want) {
					t.Errorf("Founder(%q) = %v", n.Name, got.Founder(n.Name))
				}
			}
		})
	}
	if (Discovery{}).Founder("") {
		t.Error("an empty discovery names a founder")
	}
}

func TestSeedsEmptyCluster(t *testing.T) {
	client := newFake(node("self", internal("192.0.2.1")))
	got, err := New(client, "self", discard).Discover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Seeds) != 0 || !got.Founder("self") {
		t.Errorf("Discover = %+v, want no seeds and self the founder: the only node is this one", got)
	}
}

func TestSeedsListError(t *testing.T) {
	client := newFake()
	client.fail = func() error { return errors.New("forbidden") }
	if _, err := New(client, "self", discard).Discover(context.Background()); err == nil {
		t.Fatal("Discover succeeded although listing nodes failed")
	}
}

// runner runs Discoverer.Run in the background and collects what it reports.
type runner struct {
	found  chan []string
	done   chan error
	cancel context.CancelFunc
}

func startRun(d *Discoverer, interval time.Duration) *runner {
	ctx, cancel := context.WithCancel(context.Background())
	r := &runner{found: make(chan []string, 16), done: make(chan error, 1), cancel: cancel}
	go func() { r.done <- d.Run(ctx, interval, func(d Discovery) { r.found <- d.Seeds }) }()
	return r
}

// next returns what Run reported since the last call, or nil if nothing.
func (r *runner) next(t *testing.T) []string {
	t.Helper()
	synctest.Wait()
	select {
	case a := <-r.found:
		return a
	default:
		return nil
	}
}

func (r *runner) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	if err := <-r.done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run returned %v, want context.Canceled", err)
	}
}

func TestRunReportsChanges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const interval = time.Minute
		self, a := node("self", internal("192.0.2.1")), node("a", internal("192.0.2.11"))
		client := newFake(self, a)
		r := startRun(New(client, "self", discard), interval)
		defer r.stop(t)

		if got := r.next(t); !slices.Equal(got, []string{"192.0.2.11"}) {
			t.Fatalf("first report = %v, want [192.0.2.11]", got)
		}

		time.Sleep(interval)
		if got := r.next(t); got != nil {
			t.Errorf("reported %v although nothing changed", got)
		}

		b := node("b", internal("192.0.2.12"))
		client.set(self, a, b)
		time.Sleep(interval)
		if got := r.next(t); !slices.Equal(got, []string{"192.0.2.11", "192.0.2.12"}) {
			t.Errorf("after adding b: %v, want [192.0.2.11 192.0.2.12]", got)
		}

		a = node("a", internal("192.0.2.21"))
		client.set(self, a, b)
		time.Sleep(interval)
		if got := r.next(t); !slices.Equal(got, []string{"192.0.2.12", "192.0.2.21"}) {
			t.Errorf("after a's address changed: %v, want [192.0.2.12 192.0.2.21]", got)
		}

		client.set(self, a)
		time.Sleep(interval)
		if got := r.next(t); !slices.Equal(got, []string{"192.0.2.21"}) {
			t.Errorf("after deleting b: %v, want [192.0.2.21]", got)
		}
	})
}

// TestRunReportsEmptyOnce shows that the first successful list is reported
// even when it finds no peers, so the caller knows discovery works.
func TestRunReportsEmptyOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFake(node("self", internal("192.0.2.1")))
		r := startRun(New(client, "self", discard), time.Minute)
		defer r.stop(t)
		synctest.Wait()
		select {
		case got := <-r.found:
			if len(got) != 0 {
				t.Errorf("first report = %v, want none", got)
			}
		default:
			t.Fatal("the first successful list was not reported")
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if len(r.found) != 0 {
			t.Errorf("reported again although nothing changed: %v", <-r.found)
		}
	})
}

func TestRunRetriesWithBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newFake(node("a", internal("192.0.2.11")))
		var lists []time.Time
		client.fail = func() error {
			lists = append(lists, time.Now())
			if len(lists) <= 3 {
				return errors.New("connection refused")
			}
			return nil
		}
		start := time.Now()
		r := startRun(New(client, "self", discard), time.Hour)
		defer r.stop(t)

		// Failures at 0s, 1s, 3s; success at 7s: not after the hour-long interval.
		time.Sleep(7 * time.Second)
		if got := r.next(t); !slices.Equal(got, []string{"192.0.2.11"}) {
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

func TestRunRejectsBadInterval(t *testing.T) {
	err := New(newFake(), "self", discard).Run(context.Background(), 0, func(Discovery) {
		t.Error("reported seeds with a zero interval")
	})
	if err == nil {
		t.Fatal("Run accepted a zero interval")
	}
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
 {"metadata":{"name":"a","creationTimestamp":"2026-01-02T03:04:05Z","labels":{"x":"y"}},"status":{"addresses":[{"type":"InternalIP","address":"192.0.2.11"},{"type":"Hostname","address":"a"}]}},
 {"metadata":{"name":"self","creationTimestamp":"2026-01-01T00:00:00Z"},"status":{"addresses":[{"type":"InternalIP","address":"192.0.2.1"}]}}]}`

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
	disc, err := New(c, "self", discard).Discover(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(disc.Seeds, []string{"192.0.2.11"}) || disc.Oldest != "self" {
		t.Errorf("Discover = %+v, want seeds [192.0.2.11] and self the oldest (created first)", disc)
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
