package kubejoin

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func node(name string, addrs ...corev1.NodeAddress) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Status:     corev1.NodeStatus{Addresses: addrs},
	}
}

func internal(ip string) corev1.NodeAddress {
	return corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip}
}

func TestSeeds(t *testing.T) {
	client := fake.NewClientset(
		node("self", internal("192.0.2.1")),
		node("b", internal("192.0.2.12"), corev1.NodeAddress{Type: corev1.NodeHostName, Address: "b"}),
		node("a", internal("192.0.2.11")),
		node("no-addresses"),
		node("v6-only", internal("2001:db8::5")),
		node("dual-stack", internal("2001:db8::6"), internal("192.0.2.13")),
		node("external-only", corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "198.51.100.7"}),
		node("mapped-v6", internal("::ffff:192.0.2.99")),
		node("garbage", internal("not-an-ip")),
		node("same-ip-as-a", internal("192.0.2.11")),
	)
	got, err := New(client, "self", discard).Seeds(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"192.0.2.11", "192.0.2.12", "192.0.2.13"}
	if !slices.Equal(got, want) {
		t.Errorf("Seeds = %v, want %v", got, want)
	}
}

func TestSeedsEmptyCluster(t *testing.T) {
	client := fake.NewClientset(node("self", internal("192.0.2.1")))
	got, err := New(client, "self", discard).Seeds(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 {
		t.Errorf("Seeds = %v, want none: the only node is this one", got)
	}
}

func TestSeedsListError(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("list", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("forbidden")
	})
	if _, err := New(client, "self", discard).Seeds(context.Background()); err == nil {
		t.Fatal("Seeds succeeded although listing nodes failed")
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
	go func() { r.done <- d.Run(ctx, interval, func(a []string) { r.found <- a }) }()
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
		ctx := context.Background()
		const interval = time.Minute
		client := fake.NewClientset(node("self", internal("192.0.2.1")), node("a", internal("192.0.2.11")))
		r := startRun(New(client, "self", discard), interval)
		defer r.stop(t)

		if got := r.next(t); !slices.Equal(got, []string{"192.0.2.11"}) {
			t.Fatalf("first report = %v, want [192.0.2.11]", got)
		}

		time.Sleep(interval)
		if got := r.next(t); got != nil {
			t.Errorf("reported %v although nothing changed", got)
		}

		if _, err := client.CoreV1().Nodes().Create(ctx, node("b", internal("192.0.2.12")), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(interval)
		if got := r.next(t); !slices.Equal(got, []string{"192.0.2.11", "192.0.2.12"}) {
			t.Errorf("after adding b: %v, want [192.0.2.11 192.0.2.12]", got)
		}

		if _, err := client.CoreV1().Nodes().Update(ctx, node("a", internal("192.0.2.21")), metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(interval)
		if got := r.next(t); !slices.Equal(got, []string{"192.0.2.12", "192.0.2.21"}) {
			t.Errorf("after a's address changed: %v, want [192.0.2.12 192.0.2.21]", got)
		}

		if err := client.CoreV1().Nodes().Delete(ctx, "b", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
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
		client := fake.NewClientset(node("self", internal("192.0.2.1")))
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
		client := fake.NewClientset(node("a", internal("192.0.2.11")))
		var lists []time.Time
		client.PrependReactor("list", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
			lists = append(lists, time.Now())
			if len(lists) <= 3 {
				return true, nil, errors.New("connection refused")
			}
			return false, nil, nil // fall through to the object tracker
		})
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
	err := New(fake.NewClientset(), "self", discard).Run(context.Background(), 0, func([]string) {
		t.Error("reported seeds with a zero interval")
	})
	if err == nil {
		t.Fatal("Run accepted a zero interval")
	}
}

func TestNewClientOutsideCluster(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	if _, err := NewClient(""); err == nil {
		t.Fatal("NewClient with no kubeconfig succeeded outside a cluster")
	}
}

func TestNewClientFromKubeconfig(t *testing.T) {
	path := t.TempDir() + "/kubeconfig"
	const kubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster: {server: "https://192.0.2.1:6443"}
users:
- name: lab
  user: {token: "t"}
contexts:
- name: lab
  context: {cluster: lab, user: lab}
current-context: lab
`
	if err := os.WriteFile(path, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := NewClient(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.CoreV1().RESTClient().Get().URL().Host; got != "192.0.2.1:6443" {
		t.Errorf("client talks to %q, want the kubeconfig's server 192.0.2.1:6443", got)
	}
	if _, err := NewClient(t.TempDir() + "/missing"); err == nil {
		t.Error("NewClient accepted a kubeconfig path that does not exist")
	}
}
