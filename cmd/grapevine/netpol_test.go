package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	fcache "k8s.io/client-go/tools/cache/testing"

	"github.com/grapevine-net/grapevine/netpol"
)

// fakePolicyAPI is a policyAPI whose objects the test adds and deletes.
type fakePolicyAPI struct {
	pods, namespaces, policies *fcache.FakeControllerSource
}

func newFakePolicyAPI() fakePolicyAPI {
	return fakePolicyAPI{fcache.NewFakeControllerSource(), fcache.NewFakeControllerSource(), fcache.NewFakeControllerSource()}
}

func (f fakePolicyAPI) api() policyAPI {
	return policyAPI{pods: f.pods, namespaces: f.namespaces, policies: f.policies}
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
	e, err := newPolicyEnforcer(fake.api(), "n1", kernel, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

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
