package enforce

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	fcache "k8s.io/client-go/tools/cache/testing"

	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/netpol"
	"github.com/grapevine-net/grapevine/netpol/admit"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// fakePolicyAPI is an API whose objects the test adds and deletes.
type fakePolicyAPI struct {
	pods, namespaces, policies *fcache.FakeControllerSource
}

func newFakePolicyAPI() fakePolicyAPI {
	return fakePolicyAPI{fcache.NewFakeControllerSource(), fcache.NewFakeControllerSource(), fcache.NewFakeControllerSource()}
}

func (f fakePolicyAPI) api() API {
	return API{Pods: f.pods, Namespaces: f.namespaces, Policies: f.policies}
}

// waitFor polls cond until it holds, failing the test after a minute
// (generous: a loaded 2-core machine).
func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // generous: a loaded 2-core machine
	defer cancel()
	if err := poll.Until(ctx, what, 20*time.Millisecond, cond); err != nil {
		t.Fatal(err)
	}
}

// fixedBlocks is a Config.Blocks that hands out blocks.
func fixedBlocks(blocks ...netip.Prefix) func() []netip.Prefix {
	return func() []netip.Prefix { return blocks }
}

// runEnforcer runs e until the test ends.
func runEnforcer(t *testing.T, e *Enforcer) context.Context {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	})
	return ctx
}

// rulesetIs is a waitFor condition: the fake kernel's ruleset passes ok.
func rulesetIs(k *netpol.FakeKernel, ok func(netpol.Ruleset) bool) func() error {
	return func() error {
		rs, applied := k.Current()
		if !applied || !ok(rs) {
			return fmt.Errorf("ruleset in force (applied %v): %+v", applied, rs)
		}
		return nil
	}
}

func TestPolicyEnforcerFollowsTheAPI(t *testing.T) {
	fake := newFakePolicyAPI()
	kernel := &netpol.FakeKernel{}
	e, err := New(Config{API: fake.api(), NodeName: "n1", Kernel: kernel, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	runEnforcer(t, e)

	web := netip.MustParseAddr("10.244.0.10")
	client := netip.MustParseAddr("10.244.2.20")
	fake.namespaces.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}})
	fake.pods.Add(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web", Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{NodeName: "n1"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: web.String()},
	})
	fake.pods.Add(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "client", Labels: map[string]string{"app": "client"}},
		Spec:       corev1.PodSpec{NodeName: "n2"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: client.String()},
	})
	allowClient := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-from-client"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}},
			}}},
		},
	}
	fake.policies.Add(allowClient)
	fromClient := netpol.Packet{Src: client, Dst: web, Protocol: netpol.ProtocolTCP, Port: 80}
	fromElsewhere := netpol.Packet{Src: netip.MustParseAddr("10.244.2.21"), Dst: web, Protocol: netpol.ProtocolTCP, Port: 80}
	waitFor(t, "the policy, enforced for the local pod and allowing the remote client", rulesetIs(kernel, func(rs netpol.Ruleset) bool {
		return rs.Allows(fromClient) && !rs.Allows(fromElsewhere)
	}))

	// The client's pod is replaced by one with another address.
	fake.pods.Delete(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "client"}})
	waitFor(t, "the gone client no longer allowed", rulesetIs(kernel, func(rs netpol.Ruleset) bool {
		return !rs.Allows(fromClient)
	}))

	// A ruleset the kernel refuses is applied again with the next change.
	db := netip.MustParseAddr("10.244.0.11")
	fake.pods.Add(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "db", Labels: map[string]string{"app": "db"}},
		Spec:       corev1.PodSpec{NodeName: "n1"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: db.String()},
	})
	kernel.FailWith(errors.New("nftables refused the batch"))
	denyDB := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "deny-db"},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}},
	}
	fake.policies.Add(denyDB)
	waitFor(t, "the refused apply counted", func() error {
		if testutil.ToFloat64(e.syncErrors) == 0 {
			return errors.New("no sync error counted yet")
		}
		return nil
	})
	kernel.FailWith(nil)
	fake.namespaces.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "other"}})
	toDB := netpol.Packet{Src: client, Dst: db, Protocol: netpol.ProtocolTCP, Port: 5432}
	waitFor(t, "the next change applied with the policy the kernel refused before", rulesetIs(kernel, func(rs netpol.Ruleset) bool {
		return !rs.Allows(toDB)
	}))

	fake.policies.Delete(denyDB)
	fake.policies.Delete(allowClient)
	waitFor(t, "no policy, nothing isolated", rulesetIs(kernel, func(rs netpol.Ruleset) bool {
		return len(rs.Ingress) == 0 && rs.Allows(fromElsewhere)
	}))
}

func TestTrimPodKeepsWhatPoliciesRead(t *testing.T) {
	full := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", Labels: map[string]string{"a": "b"},
			Annotations: map[string]string{"big": "x"}, ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}},
		Spec: corev1.PodSpec{NodeName: "n1", HostNetwork: true, Containers: []corev1.Container{
			{Name: "main", Image: "img", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}}},
			{Name: "sidecar", Image: "img2"},
		}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1", PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady}}},
	}
	got, err := trimPod(full)
	if err != nil {
		t.Fatal(err)
	}
	p := got.(*corev1.Pod)
	if p.Name != "p" || p.Namespace != "ns" || p.Labels["a"] != "b" || p.Spec.NodeName != "n1" || !p.Spec.HostNetwork ||
		p.Status.Phase != corev1.PodRunning || p.Status.PodIP != "10.0.0.1" || len(p.Status.PodIPs) != 1 ||
		len(p.Spec.Containers) != 1 || p.Spec.Containers[0].Ports[0].Name != "http" {
		t.Errorf("trimmed pod lost what a policy reads: %+v", p)
	}
	if p.Annotations != nil || p.ManagedFields != nil || p.Spec.Containers[0].Image != "" || p.Status.Conditions != nil {
		t.Errorf("trimmed pod kept what no policy reads: %+v", p)
	}
}

// TestPolicyAdmissionAnswersOnceThePodIsEnforced: the plugin's announcement
// of a new pod, whose address the API does not have yet, is answered only
// once the ruleset in force isolates the pod at that address; until then
// the address is denied as unknown. A pod the API does not know is refused
// when the request's time is up. Status and the drop metric follow.
func TestPolicyAdmissionAnswersOnceThePodIsEnforced(t *testing.T) {
	fake := newFakePolicyAPI()
	kernel := &netpol.FakeKernel{}
	socket := filepath.Join(t.TempDir(), SocketName)
	e, err := New(Config{API: fake.api(), NodeName: "n1", Socket: socket, Kernel: kernel, Registerer: prometheus.NewRegistry(),
		Blocks: fixedBlocks(netip.MustParsePrefix("10.244.0.0/24"))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := runEnforcer(t, e)

	fake.namespaces.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}})
	fake.policies.Add(&networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "deny-web"},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}},
	})
	// Scheduled here, not started: no address in the API yet.
	fake.pods.Add(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web", Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{NodeName: "n1"},
		Status:     corev1.PodStatus{Phase: corev1.PodPending},
	})
	newPod := netip.MustParseAddr("10.244.0.7")
	outside := netip.MustParseAddr("192.168.1.1")
	toPod := netpol.Packet{Src: outside, Dst: newPod, Protocol: netpol.ProtocolTCP, Port: 80}
	fromPod := netpol.Packet{Src: newPod, Dst: outside, Protocol: netpol.ProtocolTCP, Port: 80}
	waitFor(t, "the unknown address denied both ways", rulesetIs(kernel, func(rs netpol.Ruleset) bool {
		return !rs.Allows(toPod) && !rs.Allows(fromPod)
	}))

	req := admit.Request{Namespace: "default", Name: "web", ContainerID: "c1", IPs: []netip.Addr{newPod}}
	askCtx, askCancel := context.WithTimeout(ctx, admit.Timeout)
	defer askCancel()
	if err := admit.Ask(askCtx, socket, req); err != nil {
		t.Fatalf("admission: %v", err)
	}
	// Answered: the pod's policy is in force already, no waiting.
	rs, _ := kernel.Current()
	if _, isolated := rs.Ingress[newPod]; !isolated || rs.Allows(toPod) || !rs.Allows(fromPod) {
		t.Errorf("ruleset in force when the admission was answered: isolated %v, allows in %v, out %v; want isolated, in denied, out allowed",
			isolated, rs.Allows(toPod), rs.Allows(fromPod))
	}
	if st := e.Status(time.Now()); !st.Enabled || !st.Synced || st.Policies != 1 || st.Pods != 1 || st.LastSync.IsZero() {
		t.Errorf("status %+v, want enabled, synced, 1 policy, 1 pod, a last sync", st)
	}

	unknown := admit.Request{Namespace: "default", Name: "nobody", IPs: []netip.Addr{netip.MustParseAddr("10.244.0.8")}}
	shortCtx, shortCancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer shortCancel()
	if err := admit.Ask(shortCtx, socket, unknown); err == nil || !strings.Contains(err.Error(), "has not seen pod default/nobody") {
		t.Errorf("admission of a pod the API does not know: %v, want a refusal saying so", err)
	}
	fake.pods.Add(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "elsewhere"},
		Spec:       corev1.PodSpec{NodeName: "n2"},
	})
	elsewhere := admit.Request{Namespace: "default", Name: "elsewhere", IPs: []netip.Addr{netip.MustParseAddr("10.244.0.8")}}
	otherCtx, otherCancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer otherCancel()
	if err := admit.Ask(otherCtx, socket, elsewhere); err == nil || !strings.Contains(err.Error(), `scheduled on node "n2"`) {
		t.Errorf("admission of another node's pod: %v, want a refusal naming its node", err)
	}

	// Drops survive the table being written anew.
	kernel.SetDrops(netpol.Drops{PolicyPackets: 2, UnknownPackets: 3})
	applies := kernel.Applies()
	fake.pods.Add(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "db"},
		Spec:       corev1.PodSpec{NodeName: "n1"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.0.9"},
	})
	waitFor(t, "the new pod applied", func() error {
		if kernel.Applies() == applies {
			return errors.New("not applied yet")
		}
		return nil
	})
	kernel.SetDrops(netpol.Drops{PolicyPackets: 1})
	want := `
# HELP grapevine_netpol_dropped_packets_total Packets of new connections the network policy table dropped, by reason: policy (no policy of the pod allowed it), unknown_address (an address of this node's block no known pod holds).
# TYPE grapevine_netpol_dropped_packets_total counter
grapevine_netpol_dropped_packets_total{reason="policy"} 3
grapevine_netpol_dropped_packets_total{reason="unknown_address"} 3
`
	if err := testutil.CollectAndCompare(dropCollector{e}, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

// TestNodeStateBlocks: the enforcer denies the unknown addresses of the
// blocks node.json hands out, from its first ruleset on (a restarted
// enforcer before the agent wrote anything new), an IPv6-only node's one
// block (in node.json's block field) included, and of none once the agent
// has withdrawn node.json.
func TestNodeStateBlocks(t *testing.T) {
	runDir := t.TempDir()
	blocks := NodeStateBlocks(runDir)
	if got := blocks(); len(got) != 0 {
		t.Errorf("blocks without node.json: %v; want none", got)
	}
	block := netip.MustParsePrefix("10.244.4.0/23")
	block6 := netip.MustParsePrefix("fd00:10:244:4::/120")
	pool, pool6 := netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/48")
	for _, tt := range []struct {
		st   nodestate.State
		want []netip.Prefix
	}{
		{nodestate.State{Node: "n1", Block: block, Pool: pool}, []netip.Prefix{block}},
		{nodestate.State{Node: "n1", Block: block, Pool: pool, Block6: block6, Pool6: pool6}, []netip.Prefix{block, block6}},
		{nodestate.State{Node: "n1", Block: block6, Pool: pool6}, []netip.Prefix{block6}}, // IPv6-only
	} {
		if err := nodestate.Write(runDir, tt.st); err != nil {
			t.Fatal(err)
		}
		if got := blocks(); !slices.Equal(got, tt.want) {
			t.Errorf("blocks of node.json with block %s, block6 %s = %v; want %v", tt.st.Block, tt.st.Block6, got, tt.want)
		}
	}
	if err := os.Remove(nodestate.Path(runDir)); err != nil {
		t.Fatal(err)
	}
	if got := blocks(); len(got) != 0 {
		t.Errorf("blocks after node.json was withdrawn: %v; want none", got)
	}
}

// TestPolicyAdmissionOfIPv6Pods: with both blocks known, the unknown
// addresses of the IPv6 block are denied like those of the IPv4 one, and
// the admission of a dual-stack pod and of an IPv6-only pod is answered
// only once every one of its addresses is isolated by its policy.
func TestPolicyAdmissionOfIPv6Pods(t *testing.T) {
	fake := newFakePolicyAPI()
	kernel := &netpol.FakeKernel{}
	socket := filepath.Join(t.TempDir(), SocketName)
	e, err := New(Config{API: fake.api(), NodeName: "n1", Socket: socket, Kernel: kernel, Registerer: prometheus.NewRegistry(),
		Blocks: fixedBlocks(netip.MustParsePrefix("10.244.0.0/24"), netip.MustParsePrefix("fd00:10:244::/120"))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := runEnforcer(t, e)
	fake.namespaces.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}})
	fake.policies.Add(&networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "deny-web"},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}},
	})
	for _, name := range []string{"dual", "only6"} {
		fake.pods.Add(&corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Labels: map[string]string{"app": "web"}},
			Spec:       corev1.PodSpec{NodeName: "n1"},
			Status:     corev1.PodStatus{Phase: corev1.PodPending},
		})
	}
	dual4, dual6 := netip.MustParseAddr("10.244.0.7"), netip.MustParseAddr("fd00:10:244::7")
	only6 := netip.MustParseAddr("fd00:10:244::8")
	outside6 := netip.MustParseAddr("2001:db8::1")
	to := func(a netip.Addr) netpol.Packet {
		return netpol.Packet{Src: outside6, Dst: a, Protocol: netpol.ProtocolTCP, Port: 80}
	}
	from := func(a netip.Addr) netpol.Packet {
		return netpol.Packet{Src: a, Dst: outside6, Protocol: netpol.ProtocolTCP, Port: 80}
	}
	waitFor(t, "the unknown IPv6 addresses denied both ways", rulesetIs(kernel, func(rs netpol.Ruleset) bool {
		return !rs.Allows(to(dual6)) && !rs.Allows(from(dual6)) && !rs.Allows(from(only6))
	}))

	for _, req := range []admit.Request{
		{Namespace: "default", Name: "dual", ContainerID: "c1", IPs: []netip.Addr{dual4, dual6}},
		{Namespace: "default", Name: "only6", ContainerID: "c2", IPs: []netip.Addr{only6}},
	} {
		askCtx, askCancel := context.WithTimeout(ctx, admit.Timeout)
		err := admit.Ask(askCtx, socket, req)
		askCancel()
		if err != nil {
			t.Fatalf("admission of %s: %v", req.Name, err)
		}
		rs, _ := kernel.Current()
		for _, a := range req.IPs {
			if _, isolated := rs.Ingress[a]; !isolated || rs.Allows(to(a)) || !rs.Allows(from(a)) {
				t.Errorf("%s at %s when the admission was answered: isolated %v, allows in %v, out %v; want isolated, in denied, out allowed",
					req.Name, a, isolated, rs.Allows(to(a)), rs.Allows(from(a)))
			}
		}
	}
}

func TestAPIHasAddrs(t *testing.T) {
	v4, v6 := netip.MustParseAddr("10.244.0.7"), netip.MustParseAddr("fd00:10:244::7")
	pod := func(ips ...string) *corev1.Pod {
		p := &corev1.Pod{}
		if len(ips) > 0 {
			p.Status.PodIP = ips[0]
		}
		for _, ip := range ips {
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
		}
		return p
	}
	tests := []struct {
		name  string
		pod   *corev1.Pod
		addrs []netip.Addr
		want  bool
	}{
		{"no address yet", pod(), []netip.Addr{v4}, false},
		{"IPv4 only", pod("10.244.0.7"), []netip.Addr{v4}, true},
		{"dual-stack, API has both", pod("10.244.0.7", "fd00:10:244::7"), []netip.Addr{v4, v6}, true},
		{"dual-stack, API lacks the IPv6 address", pod("10.244.0.7"), []netip.Addr{v4, v6}, false},
		{"another IPv6 address", pod("10.244.0.7", "fd00:10:244::9"), []netip.Addr{v4, v6}, false},
		{"IPv6 only", pod("fd00:10:244::7"), []netip.Addr{v6}, true},
	}
	for _, tt := range tests {
		if got := apiHasAddrs(tt.pod, tt.addrs); got != tt.want {
			t.Errorf("%s: apiHasAddrs = %v, want %v", tt.name, got, tt.want)
		}
	}
	if a, ok := primaryAddr([]netip.Addr{v6, v4}); !ok || a != v4 {
		t.Errorf("primaryAddr(%s, %s) = %s, %v; want %s", v6, v4, a, ok, v4)
	}
	if a, ok := primaryAddr([]netip.Addr{v6}); !ok || a != v6 {
		t.Errorf("primaryAddr(%s) = %s, %v; want %s", v6, a, ok, v6)
	}
}

// appliesAre is a waitFor condition: the fake kernel counted n applies.
func appliesAre(k *netpol.FakeKernel, n int) func() error {
	return func() error {
		if got := k.Applies(); got != n {
			return fmt.Errorf("%d applies, want %d", got, n)
		}
		return nil
	}
}

// TestPolicyTableWrittenAgainWhenTampered: with the resync and the safety
// net an hour away, only Kernel.Watch can explain a write. A deleted or
// changed table is written again once; the signals of the enforcer's own
// writes, or a signal that changed nothing, write nothing; a change in the
// API still writes.
func TestPolicyTableWrittenAgainWhenTampered(t *testing.T) {
	fake := newFakePolicyAPI()
	kernel := &netpol.FakeKernel{}
	e, err := New(Config{API: fake.api(), NodeName: "n1", Kernel: kernel, Registerer: prometheus.NewRegistry(),
		Resync: time.Hour, Rewrite: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	runEnforcer(t, e)
	fake.namespaces.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}})
	fake.pods.Add(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec:       corev1.PodSpec{NodeName: "n1"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.0.10"},
	})
	fake.policies.Add(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "deny"}})
	waitFor(t, "the pod isolated", rulesetIs(kernel, func(rs netpol.Ruleset) bool { return len(rs.Ingress) == 1 }))
	// The three objects came one by one; once the last is in force, the
	// informers have nothing more to tell. Each write is counted once
	// Apply has returned, so the count may trail the kernel's for a moment.
	waitCounted(t, e, "changed", func(n float64) bool { return int(n) == kernel.Applies() })
	base := kernel.Applies()
	checks := kernel.IntactChecks()
	want, _ := kernel.Current()

	// A signal that changed nothing: checked, not written.
	kernel.Signal()
	waitFor(t, "the table checked", func() error {
		if kernel.IntactChecks() <= checks {
			return errors.New("not checked yet")
		}
		return nil
	})
	if kernel.Applies() != base {
		t.Errorf("an intact table was written again: %d applies, want %d", kernel.Applies(), base)
	}

	for i, deleted := range []bool{true, false} {
		checks = kernel.IntactChecks()
		kernel.Tamper(deleted)
		waitFor(t, fmt.Sprintf("the table written again (deleted %v)", deleted), appliesAre(kernel, base+i+1))
		// The write's own signal is checked and finds the table intact.
		waitFor(t, "the write's own signal checked", func() error {
			if got := kernel.IntactChecks(); got < checks+2 {
				return fmt.Errorf("%d checks since the tampering, want 2", got-checks)
			}
			return nil
		})
		if got, ok := kernel.Current(); !ok || !reflect.DeepEqual(got, want) {
			t.Errorf("after tampering (deleted %v): table %v, ruleset %+v, want %+v", deleted, ok, got, want)
		}
		if n := kernel.Applies(); n != base+i+1 {
			t.Errorf("after tampering (deleted %v): %d applies, want %d", deleted, n, base+i+1)
		}
	}
	waitCounted(t, e, "tampered", func(n float64) bool { return n == 2 })

	// A change in the API still writes.
	fake.pods.Add(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "db"},
		Spec:       corev1.PodSpec{NodeName: "n1"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.0.11"},
	})
	waitFor(t, "the new pod isolated", rulesetIs(kernel, func(rs netpol.Ruleset) bool { return len(rs.Ingress) == 2 }))
	waitCounted(t, e, "changed", func(n float64) bool { return n == float64(base+1) })
}

// waitCounted waits until e's count of table writes for reason satisfies
// ok: a write is counted once Apply has returned, a moment after the
// kernel shows it.
func waitCounted(t *testing.T, e *Enforcer, reason string, ok func(float64) bool) {
	t.Helper()
	waitFor(t, "table writes counted as "+reason, func() error {
		if n := testutil.ToFloat64(e.writes.WithLabelValues(reason)); !ok(n) {
			return fmt.Errorf("%v so far", n)
		}
		return nil
	})
}

// TestPolicyResyncComparesOnly: the resync compiles and compares, and
// writes only a ruleset that differs or that could not be written before;
// the safety net writes regardless.
func TestPolicyResyncComparesOnly(t *testing.T) {
	fake := newFakePolicyAPI()
	kernel := &netpol.FakeKernel{}
	var mu sync.Mutex
	compiles := 0
	block := netip.MustParsePrefix("10.244.0.0/28")
	blocks := []netip.Prefix{block}
	e, err := New(Config{API: fake.api(), NodeName: "n1", Kernel: kernel, Registerer: prometheus.NewRegistry(),
		Resync: 5 * time.Millisecond, Rewrite: time.Hour,
		Blocks: func() []netip.Prefix {
			mu.Lock()
			defer mu.Unlock()
			compiles++
			return blocks
		}})
	if err != nil {
		t.Fatal(err)
	}
	runEnforcer(t, e)
	waitFor(t, "the first ruleset", appliesAre(kernel, 1))
	compiledAfter := func(n int) func() error {
		mu.Lock()
		from := compiles
		mu.Unlock()
		return func() error {
			mu.Lock()
			defer mu.Unlock()
			if compiles < from+n {
				return fmt.Errorf("%d compiles, want %d", compiles-from, n)
			}
			return nil
		}
	}
	waitFor(t, "ten resyncs", compiledAfter(10))
	if n := kernel.Applies(); n != 1 {
		t.Errorf("resyncs of an unchanged ruleset wrote it: %d applies, want 1", n)
	}

	// node.json no longer hands out the block: the resync writes.
	mu.Lock()
	blocks = nil
	mu.Unlock()
	waitFor(t, "the block no longer denied", rulesetIs(kernel, func(rs netpol.Ruleset) bool { return len(rs.Unknown) == 0 }))

	// A write that failed is retried at the resync, with nothing
	// changed since.
	kernel.FailWith(errors.New("nftables refused the batch"))
	mu.Lock()
	blocks = []netip.Prefix{block}
	mu.Unlock()
	waitFor(t, "the refused write counted", func() error {
		if testutil.ToFloat64(e.syncErrors) == 0 {
			return errors.New("no sync error yet")
		}
		return nil
	})
	kernel.FailWith(nil)
	waitFor(t, "the block denied again", rulesetIs(kernel, func(rs netpol.Ruleset) bool { return len(rs.Unknown) == 1 }))
	waitCounted(t, e, "retry", func(n float64) bool { return n == 1 })
	applies := kernel.Applies()
	waitFor(t, "ten more resyncs", compiledAfter(10))
	if n := kernel.Applies(); n != applies {
		t.Errorf("resyncs after the retry wrote: %d applies, want %d", n, applies)
	}
}

// TestPolicySafetyNetRewrites: every Rewrite the table is written even
// though nothing changed.
func TestPolicySafetyNetRewrites(t *testing.T) {
	kernel := &netpol.FakeKernel{}
	e, err := New(Config{API: newFakePolicyAPI().api(), NodeName: "n1", Kernel: kernel, Registerer: prometheus.NewRegistry(),
		Resync: time.Hour, Rewrite: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runEnforcer(t, e)
	waitCounted(t, e, "rewrite", func(n float64) bool { return n >= 2 })
	if n := kernel.Applies(); n < 3 {
		t.Errorf("%d applies after two rewrites, want at least 3 (the first write, then the rewrites)", n)
	}
}
