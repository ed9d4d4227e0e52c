package admit

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/status"
)

func validRequest() Request {
	return Request{Namespace: "default", Name: "web-0", ContainerID: "c1", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.5")}}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Request)
		ok     bool
	}{
		{"valid", func(*Request) {}, true},
		{"dotted pod name", func(r *Request) { r.Name = "web.example" }, true},
		{"dual stack", func(r *Request) { r.IPs = append(r.IPs, netip.MustParseAddr("fd00::5")) }, true},
		{"no namespace", func(r *Request) { r.Namespace = "" }, false},
		{"namespace with a dot", func(r *Request) { r.Namespace = "a.b" }, false},
		{"upper-case name", func(r *Request) { r.Name = "Web" }, false},
		{"name too long", func(r *Request) { r.Name = strings.Repeat("a", 254) }, false},
		{"no address", func(r *Request) { r.IPs = nil }, false},
		{"three addresses", func(r *Request) { r.IPs = append(r.IPs, r.IPs[0], r.IPs[0]) }, false},
		{"zero address", func(r *Request) { r.IPs = []netip.Addr{{}} }, false},
		{"zoned address", func(r *Request) { r.IPs = []netip.Addr{netip.MustParseAddr("fe80::1%eth0")} }, false},
		{"IPv6 only", func(r *Request) { r.IPs = []netip.Addr{netip.MustParseAddr("fd00::5")} }, true},
		{"IPv6 first", func(r *Request) {
			r.IPs = []netip.Addr{netip.MustParseAddr("fd00::5"), netip.MustParseAddr("10.0.0.5")}
		}, true},
		{"two IPv4 addresses", func(r *Request) { r.IPs = append(r.IPs, netip.MustParseAddr("10.0.0.6")) }, false},
		{"two IPv6 addresses", func(r *Request) { r.IPs = []netip.Addr{netip.MustParseAddr("fd00::5"), netip.MustParseAddr("fd00::6")} }, false},
		{"IPv4-mapped IPv6 address", func(r *Request) { r.IPs = []netip.Addr{netip.MustParseAddr("::ffff:10.0.0.5")} }, false},
		{"negative wait", func(r *Request) { r.AnswerWithinMs = -1 }, false},
		{"status request", func(r *Request) { *r = Request{Status: true} }, true},
		{"status request naming a pod", func(r *Request) { r.Status = true }, false},
		{"status request with an address", func(r *Request) { *r = Request{Status: true, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.5")}} }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := validRequest()
			tt.change(&r)
			if err := r.Validate(); (err == nil) != tt.ok {
				t.Errorf("Validate() = %v, want ok %v", err, tt.ok)
			}
		})
	}
}

// serve runs Serve with h on a socket in a temporary directory until the
// test ends, and returns the socket's path and the rejections seen.
func serve(t *testing.T, h Handler) (string, func() []error) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "policy.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var rejected []error
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, ln, h, func(err error) { mu.Lock(); rejected = append(rejected, err); mu.Unlock() })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Serve: %v", err)
		}
	})
	return sock, func() []error { mu.Lock(); defer mu.Unlock(); return append([]error(nil), rejected...) }
}

func TestAskGetsTheHandlersAnswer(t *testing.T) {
	var got Request
	sock, rejections := serve(t, func(ctx context.Context, r Request) error {
		got = r
		if r.Name == "refused" {
			return errors.New("pod default/refused is not in the agent's cache")
		}
		return nil
	})
	want := validRequest()
	if err := Ask(context.Background(), sock, want); err != nil {
		t.Fatal(err)
	}
	if got.Namespace != want.Namespace || got.Name != want.Name || got.ContainerID != want.ContainerID || got.IPs[0] != want.IPs[0] {
		t.Errorf("handler got %+v, want %+v", got, want)
	}
	refused := validRequest()
	refused.Name = "refused"
	err := Ask(context.Background(), sock, refused)
	if err == nil || errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "not in the agent's cache") {
		t.Errorf("refused request: %v, want the handler's sentence", err)
	}
	bad := validRequest()
	bad.IPs = nil
	if err := Ask(context.Background(), sock, bad); err == nil || !strings.Contains(err.Error(), "grapevine-policy refused the request") {
		t.Errorf("invalid request: %v, want a refusal", err)
	}
	if n := len(rejections()); n != 1 {
		t.Errorf("%d rejections counted, want 1", n)
	}
}

// TestAskStatus: the socket answers a status request with the server's
// state without calling the admission handler; a server with no status to
// give says so, and a missing socket is unreachable.
func TestAskStatus(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "policy.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	want := status.NetworkPolicy{Enabled: true, Synced: true, Policies: 3, Pods: 2}
	go func() {
		done <- Server{
			Admit: func(context.Context, Request) error {
				t.Error("admission handler called for a status request")
				return nil
			},
			Status:   func() status.NetworkPolicy { return want },
			Rejected: func(err error) { t.Errorf("status request rejected: %v", err) },
		}.Serve(ctx, ln)
	}()
	defer func() { cancel(); <-done }()
	askCtx, askCancel := context.WithTimeout(context.Background(), Timeout)
	defer askCancel()
	got, err := AskStatus(askCtx, sock)
	if err != nil || got != want {
		t.Errorf("AskStatus = %+v, %v; want %+v", got, err, want)
	}

	noStatus, _ := serve(t, func(context.Context, Request) error { return nil })
	if _, err := AskStatus(askCtx, noStatus); err == nil || errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "no status") {
		t.Errorf("AskStatus of a server without status: %v, want its refusal", err)
	}
	if _, err := AskStatus(askCtx, filepath.Join(t.TempDir(), "none.sock")); !errors.Is(err, ErrUnreachable) {
		t.Errorf("AskStatus without a server: %v, want ErrUnreachable", err)
	}
}

func TestHostileRequestsAreRejectedAndCounted(t *testing.T) {
	sock, rejections := serve(t, func(context.Context, Request) error {
		t.Error("handler called for a hostile request")
		return nil
	})
	for _, msg := range []string{
		"not json\n",
		strings.Repeat("a", 2*MaxMessage),
		`{"namespace": "default", "name": "x", "ips": ["999.1.1.1"]}` + "\n",
		`{"namespace": "default", "name": "x"` + "\n",
		`{"status": true, "namespace": "default", "name": "x", "ips": ["10.0.0.5"]}` + "\n",
	} {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		conn.Write([]byte(msg))
		buf := make([]byte, MaxMessage)
		n, _ := conn.Read(buf)
		conn.Close()
		if !strings.Contains(string(buf[:n]), "refused") {
			t.Errorf("answer to %.20q: %q, want a refusal", msg, buf[:n])
		}
	}
	if n := len(rejections()); n != 5 {
		t.Errorf("%d rejections counted, want 5", n)
	}
}

func TestAskWithoutAgentIsUnreachable(t *testing.T) {
	err := Ask(context.Background(), filepath.Join(t.TempDir(), "none.sock"), validRequest())
	if !errors.Is(err, ErrUnreachable) {
		t.Errorf("Ask without an agent: %v, want ErrUnreachable", err)
	}
	// An agent that never answers: Ask ends with its context.
	release := make(chan struct{})
	silent, _ := serve(t, func(context.Context, Request) error { <-release; return nil })
	t.Cleanup(func() { close(release) }) // runs before serve's cleanup waits for the handler
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := Ask(ctx, silent, validRequest()); !errors.Is(err, ErrUnreachable) {
		t.Errorf("Ask of a silent agent: %v, want ErrUnreachable", err)
	}
	// An agent whose handler runs out of the time the plugin gave it
	// answers with its reason before the plugin gives up.
	slow, _ := serve(t, func(ctx context.Context, _ Request) error {
		<-ctx.Done()
		return errors.New("not in force in time")
	})
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	if err := Ask(ctx2, slow, validRequest()); err == nil || errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "not in force in time") {
		t.Errorf("Ask of an agent that runs out of time: %v, want its reason", err)
	}
}

// BenchmarkAsk is one request and its answer over the socket, with a
// handler that answers at once: what ADD pays besides the agent's work.
func BenchmarkAsk(b *testing.B) {
	sock := filepath.Join(b.TempDir(), "policy.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Serve(ctx, ln, func(context.Context, Request) error { return nil }, func(err error) { b.Error(err) })
	}()
	defer func() { cancel(); <-done }()
	r := validRequest()
	for b.Loop() {
		if err := Ask(context.Background(), sock, r); err != nil {
			b.Fatal(err)
		}
	}
}
