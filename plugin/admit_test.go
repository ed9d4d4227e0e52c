package plugin

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/grapevine-net/grapevine/netpol/admit"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// withPolicySocket rewrites the lab's node.json to name socket, as the agent
// does while it enforces network policy.
func (l *lab) withPolicySocket(socket string) {
	l.t.Helper()
	st, err := nodestate.Read(l.runDir)
	if err != nil {
		l.t.Fatal(err)
	}
	st.PolicySocket = socket
	if err := nodestate.Write(l.runDir, st); err != nil {
		l.t.Fatal(err)
	}
}

// fakeAgent answers admissions on socket with answer until the test ends.
func fakeAgent(t testing.TB, socket string, answer admit.Handler) {
	t.Helper()
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		admit.Serve(ctx, ln, answer, func(err error) { t.Errorf("the plugin's request was rejected: %v", err) })
	}()
	t.Cleanup(func() { cancel(); <-done })
}

func wantCNIError(t *testing.T, what string, err error, code uint, msg string) {
	t.Helper()
	var cniErr *types.Error
	if !errors.As(err, &cniErr) || cniErr.Code != code || !strings.Contains(cniErr.Msg, msg) {
		t.Errorf("%s = %v, want CNI error %d mentioning %q", what, err, code, msg)
	}
}

// TestAddWaitsForThePolicyAgent: when node.json names a policy socket, ADD
// tells the agent the pod's identity and address once the pod is wired and
// returns only after the agent answered; an agent that is not there or
// refuses fails the ADD, which leaves nothing behind.
func TestAddWaitsForThePolicyAgent(t *testing.T) {
	l := newLab(t)
	list := l.conflist("1.1.0")
	socket := filepath.Join(t.TempDir(), "policy.sock")
	l.withPolicySocket(socket)

	_, err := l.add(list, l.newPod("no-agent"))
	wantCNIError(t, "ADD without the agent", err, types.ErrTryAgainLater, "network policy for pod default/no-agent is not in force")
	l.assertNothingLeft()

	anonymous := l.newPod("anonymous")
	anonymous.rt.Args = nil
	_, err = l.add(list, anonymous)
	wantCNIError(t, "ADD without the pod's identity", err, types.ErrInvalidEnvironmentVariables, "K8S_POD_NAME")
	l.assertNothingLeft()

	var mu sync.Mutex
	var asked []admit.Request
	var wiredWhenAsked []bool
	fakeAgent(t, socket, func(_ context.Context, r admit.Request) error {
		// The pod is wired when the agent hears of it: its host route
		// is in place.
		var routed bool
		l.inHost(func() error {
			routes, err := netlink.RouteGet(r.IPs[0].AsSlice())
			routed = err == nil && len(routes) == 1 && routes[0].LinkIndex > 0 && routes[0].Gw == nil
			return nil
		})
		mu.Lock()
		defer mu.Unlock()
		asked = append(asked, r)
		wiredWhenAsked = append(wiredWhenAsked, routed)
		if r.Name == "refused" {
			return errors.New("pod default/refused is not in the agent's cache")
		}
		return nil
	})
	_, err = l.add(list, l.newPod("refused"))
	wantCNIError(t, "ADD the agent refuses", err, types.ErrInternal, "not in the agent's cache")
	l.assertNothingLeft()

	p := l.newPod("web")
	res := l.mustAdd(list, p)
	podIP := podIPOf(t, res)
	mu.Lock()
	defer mu.Unlock()
	if len(asked) != 2 {
		t.Fatalf("the agent was asked %d times, want 2 (refused, web)", len(asked))
	}
	got := asked[1]
	if got.Namespace != "default" || got.Name != "web" || got.ContainerID != p.rt.ContainerID ||
		len(got.IPs) != 1 || got.IPs[0] != podIP {
		t.Errorf("agent asked %+v, want default/web %s with %s", got, p.rt.ContainerID, podIP)
	}
	for i, wired := range wiredWhenAsked {
		if !wired {
			t.Errorf("request %d (%s): the pod's host route was not in place when the agent was asked", i, asked[i].Name)
		}
	}
}
