package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	listersnetworkingv1 "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/grapevine-net/grapevine/netpol"
)

// policyResync is how often the enforcer compiles and compares even without
// an event, so that a failed Apply is retried and a table someone else
// deleted comes back.
const policyResync = 30 * time.Second

// policySyncWarning is how long the first lists may take before the agent
// says it is still waiting.
const policySyncWarning = 30 * time.Second

// policyEnforcer keeps table inet grapevine-policy in line with the
// cluster's NetworkPolicies for this node's pods (--network-policy). It
// reads Pods, Namespaces and NetworkPolicies through client-go's shared
// informers, compiles them (netpol.Compile) after every change, and applies
// the ruleset when it differs from the last one applied. It runs beside the
// mesh's loop and shares nothing with it.
type policyEnforcer struct {
	nodeName   string
	kernel     netpol.Kernel
	log        *slog.Logger
	informers  []cache.SharedIndexInformer
	pods       listerscorev1.PodLister
	namespaces listerscorev1.NamespaceLister
	policies   listersnetworkingv1.NetworkPolicyLister
	// changed holds one wake-up for the loop; events coalesce in it.
	changed chan struct{}

	syncSeconds prometheus.Histogram
	syncErrors  prometheus.Counter
	gauges      *prometheus.GaugeVec
}

// policyAPI is where the enforcer lists and watches each kind, in all
// namespaces.
type policyAPI struct {
	pods, namespaces, policies cache.ListerWatcher
}

// newPolicyEnforcer sets up a shared informer per kind on api; nothing runs
// before run. Every Pod of the cluster is watched, not only this node's: a
// policy's podSelector and namespaceSelector peers are pods of any node,
// and their addresses are what the ruleset matches. The cache keeps only
// what a policy reads of each (see trimPod).
func newPolicyEnforcer(api policyAPI, nodeName string, kernel netpol.Kernel, reg prometheus.Registerer, log *slog.Logger) (*policyEnforcer, error) {
	e := &policyEnforcer{
		nodeName: nodeName,
		kernel:   kernel,
		log:      log,
		changed:  make(chan struct{}, 1),
		syncSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "grapevine_netpol_sync_duration_seconds",
			Help:    "Time to compile the network policies and apply the ruleset in one nftables transaction.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		syncErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "grapevine_netpol_sync_errors_total",
			Help: "Rulesets that could not be applied.",
		}),
		gauges: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "grapevine_netpol_ruleset",
			Help: "The ruleset in force: policies in the cluster, this node's pods isolated per direction, chains, rules and address sets.",
		}, []string{"what"}),
	}
	pods := informer(api.pods, &corev1.Pod{})
	if err := pods.SetTransform(trimPod); err != nil {
		return nil, fmt.Errorf("network policy: pod informer: %w", err)
	}
	namespaces := informer(api.namespaces, &corev1.Namespace{})
	policies := informer(api.policies, &networkingv1.NetworkPolicy{})
	wake := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { e.wake() },
		UpdateFunc: func(any, any) { e.wake() },
		DeleteFunc: func(any) { e.wake() },
	}
	e.informers = []cache.SharedIndexInformer{pods, namespaces, policies}
	for _, inf := range e.informers {
		if _, err := inf.AddEventHandler(wake); err != nil {
			return nil, fmt.Errorf("network policy: informer: %w", err)
		}
	}
	e.pods = listerscorev1.NewPodLister(pods.GetIndexer())
	e.namespaces = listerscorev1.NewNamespaceLister(namespaces.GetIndexer())
	e.policies = listersnetworkingv1.NewNetworkPolicyLister(policies.GetIndexer())
	if reg != nil {
		for _, c := range []prometheus.Collector{e.syncSeconds, e.syncErrors, e.gauges} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("network policy metrics: %w", err)
			}
		}
	}
	return e, nil
}

// informer is a shared informer of one kind, without periodic resync (the
// enforcer has its own).
func informer(lw cache.ListerWatcher, example runtime.Object) cache.SharedIndexInformer {
	return cache.NewSharedIndexInformer(lw, example, 0, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
}

// inClusterPolicyAPI lists and watches with the service account of the
// agent's pod. Its REST clients know only the three kinds: client-go's
// typed clients would link every API group's types (its scheme registers
// them all), tens of megabytes of the binary.
func inClusterPolicyAPI() (policyAPI, error) {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return policyAPI{}, err
	}
	cfg.UserAgent = "grapevine-agent"
	scheme := runtime.NewScheme()
	if err := errors.Join(corev1.AddToScheme(scheme), networkingv1.AddToScheme(scheme)); err != nil {
		return policyAPI{}, err
	}
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})
	codecs := serializer.NewCodecFactory(scheme)
	client := func(gv schema.GroupVersion, apiPath string) (*rest.RESTClient, error) {
		c := rest.CopyConfig(cfg)
		c.GroupVersion, c.APIPath = &gv, apiPath
		c.NegotiatedSerializer = codecs.WithoutConversion()
		return rest.RESTClientFor(c)
	}
	core, err := client(corev1.SchemeGroupVersion, "/api")
	if err != nil {
		return policyAPI{}, err
	}
	networking, err := client(networkingv1.SchemeGroupVersion, "/apis")
	if err != nil {
		return policyAPI{}, err
	}
	all := fields.Everything()
	return policyAPI{
		pods:       cache.NewListWatchFromClient(core, "pods", metav1.NamespaceAll, all),
		namespaces: cache.NewListWatchFromClient(core, "namespaces", metav1.NamespaceAll, all),
		policies:   cache.NewListWatchFromClient(networking, "networkpolicies", metav1.NamespaceAll, all),
	}, nil
}

func (e *policyEnforcer) wake() {
	select {
	case e.changed <- struct{}{}:
	default:
	}
}

// run enforces until ctx ends. Until the caches have synced, and after run
// returns, the table stays as it was: an agent restart must not lift the
// policies of running pods.
func (e *policyEnforcer) run(ctx context.Context) error {
	var informing sync.WaitGroup
	defer informing.Wait()
	ctx, stop := context.WithCancel(ctx)
	defer stop() // before Wait: the informers end with run
	synced := make([]cache.InformerSynced, 0, len(e.informers))
	for _, inf := range e.informers {
		informing.Go(func() { inf.RunWithContext(ctx) })
		synced = append(synced, inf.HasSynced)
	}
	syncedc := make(chan bool, 1)
	go func() { syncedc <- cache.WaitForCacheSync(ctx.Done(), synced...) }()
	var ok bool
	select {
	case ok = <-syncedc:
	case <-time.After(policySyncWarning):
		// The informers retry for ever; their own reasons go to klog.
		e.log.Warn("network policy: still waiting for the first list of pods, namespaces and policies; the previous ruleset stays in force (is the RBAC for them in place?)",
			"waited", policySyncWarning)
		ok = <-syncedc
	}
	if !ok {
		return fmt.Errorf("network policy: wait for the API's pods, namespaces and policies: %w", ctx.Err())
	}
	e.log.Info("network policy: caches synced; enforcing")
	resync := time.NewTicker(policyResync)
	defer resync.Stop()
	var applied *netpol.Ruleset
	for {
		rs, err := e.sync(applied)
		if err != nil {
			e.syncErrors.Inc()
			e.log.Error("network policy: sync failed; retrying on the next change or in "+policyResync.String(), "err", err)
			applied = nil
		} else {
			applied = &rs
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-e.changed:
		case <-resync.C:
			applied = nil // apply again: someone may have deleted the table
		}
	}
}

// sync compiles the caches' current content and applies it unless it equals
// last.
func (e *policyEnforcer) sync(last *netpol.Ruleset) (netpol.Ruleset, error) {
	start := time.Now()
	in, err := e.input()
	if err != nil {
		return netpol.Ruleset{}, err
	}
	rs, problems := netpol.Compile(in)
	for _, p := range problems {
		e.log.Warn("network policy: part of a policy ignored", "err", p)
	}
	if last != nil && reflect.DeepEqual(*last, rs) {
		return rs, nil
	}
	if err := e.kernel.Apply(rs); err != nil {
		return rs, err
	}
	e.syncSeconds.Observe(time.Since(start).Seconds())
	rules := 0
	for _, c := range rs.Chains {
		rules += len(c.Rules)
	}
	e.gauges.WithLabelValues("policies").Set(float64(len(in.Policies)))
	e.gauges.WithLabelValues("ingress_pods").Set(float64(len(rs.Ingress)))
	e.gauges.WithLabelValues("egress_pods").Set(float64(len(rs.Egress)))
	e.gauges.WithLabelValues("chains").Set(float64(len(rs.Chains)))
	e.gauges.WithLabelValues("rules").Set(float64(rules))
	e.gauges.WithLabelValues("sets").Set(float64(len(rs.Sets)))
	e.log.Debug("network policy: ruleset applied", "policies", len(in.Policies), "ingressPods", len(rs.Ingress),
		"egressPods", len(rs.Egress), "rules", rules, "took", time.Since(start))
	return rs, nil
}

func (e *policyEnforcer) input() (netpol.Input, error) {
	pods, err := e.pods.List(labels.Everything())
	if err != nil {
		return netpol.Input{}, err
	}
	namespaces, err := e.namespaces.List(labels.Everything())
	if err != nil {
		return netpol.Input{}, err
	}
	policies, err := e.policies.List(labels.Everything())
	if err != nil {
		return netpol.Input{}, err
	}
	return netpol.Input{Policies: policies, Pods: pods, Namespaces: namespaces, NodeName: e.nodeName}, nil
}

// trimPod keeps of a Pod what a policy reads: its name, namespace and
// labels, its node, whether it is on the host network, its phase and
// addresses and its containers' ports. A cluster's pods cost the agent's
// memory that much less.
func trimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a tombstone: its key is all the cache needs
	}
	t := &corev1.Pod{}
	t.Name, t.Namespace, t.UID, t.ResourceVersion, t.Labels = p.Name, p.Namespace, p.UID, p.ResourceVersion, p.Labels
	t.Spec.NodeName, t.Spec.HostNetwork = p.Spec.NodeName, p.Spec.HostNetwork
	for _, c := range p.Spec.Containers {
		if len(c.Ports) > 0 {
			t.Spec.Containers = append(t.Spec.Containers, corev1.Container{Name: c.Name, Ports: c.Ports})
		}
	}
	t.Status.Phase, t.Status.PodIP, t.Status.PodIPs = p.Status.Phase, p.Status.PodIP, p.Status.PodIPs
	return t, nil
}

// policyEnforcerFor builds the enforcer for --network-policy: nil without
// the flag.
func policyEnforcerFor(o agentOptions, host hostSide, reg prometheus.Registerer, log *slog.Logger) (*policyEnforcer, error) {
	if !o.NetworkPolicy {
		return nil, nil
	}
	api := host.policyAPI
	if api == nil {
		c, err := inClusterPolicyAPI()
		if err != nil {
			return nil, fmt.Errorf("--network-policy needs the Kubernetes API: %w", err)
		}
		api = &c
	}
	kernel := host.policyKernel
	if kernel == nil {
		kernel = netpol.NewNFTKernel()
	}
	return newPolicyEnforcer(*api, o.NodeName, kernel, reg, log.With("component", "netpol"))
}

// runPolicyEnforcer runs e until ctx ends; a nil e does nothing.
func runPolicyEnforcer(ctx context.Context, e *policyEnforcer, log *slog.Logger) {
	if e == nil {
		return
	}
	if err := e.run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("network policy enforcement stopped; the last ruleset stays in force", "err", err)
	}
}
