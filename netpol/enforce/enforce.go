package enforce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
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
	"k8s.io/client-go/tools/clientcmd"

	"github.com/grapevine-net/grapevine/internal/ownersock"
	"github.com/grapevine-net/grapevine/netpol"
	"github.com/grapevine-net/grapevine/netpol/admit"
	"github.com/grapevine-net/grapevine/node/nodestate"
	"github.com/grapevine-net/grapevine/status"
)

// DefaultResync is how often the enforcer compiles and compares even
// without an event, so that a failed Apply is retried and a block
// node.json no longer hands out stops being denied. An unchanged ruleset
// is not written again: a table someone else deleted or changed comes back
// as soon as Kernel.Watch tells of it.
const DefaultResync = 30 * time.Second

// DefaultRewrite is how often the enforcer writes the table again even
// though nothing seems to have changed: the safety net for what
// Kernel.Watch and Kernel.Intact do not see (someone else's change to a
// set's elements or to a rule). Writing costs about 80 ms at 1,000 pods
// under 200 policies (docs/benchmarks.md), so not every resync.
const DefaultRewrite = 10 * time.Minute

// SocketName is the admission socket's name in the run directory that
// grapevine-policy shares with the agent (its default --policy-socket).
const SocketName = "policy.sock"

// admissionTTL is how long an admitted pod's address stands in for the one
// the API server has not reported yet, while the API does not know the pod.
const admissionTTL = 2 * time.Minute

// syncWarning is how long the first lists may take before the enforcer
// says it is still waiting.
const syncWarning = 30 * time.Second

// Config is what an Enforcer works with.
type Config struct {
	// API lists and watches the cluster's objects (InClusterAPI,
	// KubeconfigAPI).
	API API
	// NodeName is this node's name: the pods scheduled on it are the ones
	// enforced.
	NodeName string
	// Socket is where the CNI plugin tells the enforcer new pods (package
	// netpol/admit); "" listens nowhere.
	Socket string
	Kernel netpol.Kernel
	// Blocks are this node's pod blocks as node.json hands them out
	// (NodeStateBlocks), read before every compile: their addresses no
	// known pod holds are denied (netpol.Input.Blocks). Nil: none.
	Blocks     func() []netip.Prefix
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Resync is how often the ruleset is compiled and compared without
	// an event (0: DefaultResync); Rewrite how often the table is written
	// again regardless (0: DefaultRewrite).
	Resync, Rewrite time.Duration
}

// Enforcer keeps table inet grapevine-policy in line with the cluster's
// NetworkPolicies for this node's pods. It reads Pods, Namespaces and
// NetworkPolicies through client-go's shared informers, compiles them
// (netpol.Compile) after every change, and applies the ruleset when it
// differs from the last one applied.
type Enforcer struct {
	nodeName   string
	kernel     netpol.Kernel
	log        *slog.Logger
	blocks     func() []netip.Prefix
	informers  []cache.SharedIndexInformer
	pods       listerscorev1.PodLister
	namespaces listerscorev1.NamespaceLister
	policies   listersnetworkingv1.NetworkPolicyLister
	// changed holds one wake-up for the loop; events coalesce in it.
	changed chan struct{}
	// socket is where the plugin tells the enforcer new pods (admit); ""
	// listens nowhere.
	socket string
	// resync and rewrite are Config's Resync and Rewrite.
	resync, rewrite time.Duration

	// mu guards what the loop shares with admissions and status readers.
	mu sync.Mutex
	// admitted are the pods the plugin announced, by namespace/name,
	// whose address the API server may not report yet.
	admitted map[string]admittedPod
	// inForce maps each admitted pod to the address (primaryAddr) the
	// ruleset in force was compiled with, along with its others;
	// inForceChanged is closed and replaced whenever that ruleset
	// changes.
	inForce        map[string]netip.Addr
	inForceChanged chan struct{}
	synced         bool
	lastErr        error
	report         report

	// applying serializes Apply with reading the drop counters, which
	// Apply resets: dropsBefore is what the replaced tables counted.
	applying    sync.Mutex
	dropsBefore netpol.Drops

	syncSeconds prometheus.Histogram
	syncErrors  prometheus.Counter
	writes      *prometheus.CounterVec
	gauges      *prometheus.GaugeVec
	admissions  *prometheus.CounterVec
}

// admittedPod is a pod the plugin wired: its addresses, and when.
type admittedPod struct {
	addrs []netip.Addr
	at    time.Time
}

// report is the enforcement's state for the status.
type report struct {
	Policies int
	Pods     int
	LastSync time.Time
}

// API is where the enforcer lists and watches each kind, in all
// namespaces.
type API struct {
	Pods, Namespaces, Policies cache.ListerWatcher
}

// New sets up a shared informer per kind on c.API; nothing runs before
// Run. Every Pod of the cluster is watched, not only this node's: a
// policy's podSelector and namespaceSelector peers are pods of any node,
// and their addresses are what the ruleset matches. The cache keeps only
// what a policy reads of each (see trimPod).
func New(c Config) (*Enforcer, error) {
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	blocks := c.Blocks
	if blocks == nil {
		blocks = func() []netip.Prefix { return nil }
	}
	resync, rewrite := c.Resync, c.Rewrite
	if resync <= 0 {
		resync = DefaultResync
	}
	if rewrite <= 0 {
		rewrite = DefaultRewrite
	}
	e := &Enforcer{
		resync:         resync,
		rewrite:        rewrite,
		nodeName:       c.NodeName,
		kernel:         c.Kernel,
		log:            log,
		blocks:         blocks,
		changed:        make(chan struct{}, 1),
		socket:         c.Socket,
		admitted:       make(map[string]admittedPod),
		inForce:        make(map[string]netip.Addr),
		inForceChanged: make(chan struct{}),
		admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grapevine_netpol_admissions_total",
			Help: "New pods the CNI plugin announced, by outcome: in_force (answered once their policies were applied), failed (not in force in time), rejected (not a valid request).",
		}, []string{"result"}),
		syncSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "grapevine_netpol_sync_duration_seconds",
			Help:    "Time to compile the network policies and apply the ruleset in one nftables transaction.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		syncErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "grapevine_netpol_sync_errors_total",
			Help: "Rulesets that could not be applied.",
		}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grapevine_netpol_table_writes_total",
			Help: "Times table inet grapevine-policy was written, by reason: changed (the compiled ruleset differed from the one in force), retry (the last write had failed), tampered (someone else deleted or changed the table), rewrite (the periodic safety net).",
		}, []string{"reason"}),
		gauges: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "grapevine_netpol_ruleset",
			Help: "The ruleset in force: policies in the cluster, this node's pods isolated per direction, chains, rules and address sets.",
		}, []string{"what"}),
	}
	for _, reason := range []string{"changed", "retry", "tampered", "rewrite"} {
		e.writes.WithLabelValues(reason) // reported from zero on
	}
	pods := informer(c.API.Pods, &corev1.Pod{})
	if err := pods.SetTransform(trimPod); err != nil {
		return nil, fmt.Errorf("network policy: pod informer: %w", err)
	}
	namespaces := informer(c.API.Namespaces, &corev1.Namespace{})
	policies := informer(c.API.Policies, &networkingv1.NetworkPolicy{})
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
	if c.Registerer != nil {
		for _, col := range []prometheus.Collector{e.syncSeconds, e.syncErrors, e.writes, e.gauges, e.admissions, dropCollector{e}} {
			if err := c.Registerer.Register(col); err != nil {
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

// InClusterAPI lists and watches with the service account of the pod the
// enforcer runs in.
func InClusterAPI(userAgent string) (API, error) {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return API{}, fmt.Errorf("in-cluster Kubernetes API: %w", err)
	}
	return restAPI(cfg, userAgent)
}

// KubeconfigAPI lists and watches with the current context of the
// kubeconfig file at path.
func KubeconfigAPI(path, userAgent string) (API, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return API{}, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	return restAPI(cfg, userAgent)
}

// restAPI is the API at cfg. Its REST clients know only the three kinds:
// client-go's typed clients would link every API group's types (its
// scheme registers them all), tens of megabytes of the binary.
func restAPI(cfg *rest.Config, userAgent string) (API, error) {
	cfg.UserAgent = userAgent
	scheme := runtime.NewScheme()
	if err := errors.Join(corev1.AddToScheme(scheme), networkingv1.AddToScheme(scheme)); err != nil {
		return API{}, err
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
		return API{}, fmt.Errorf("Kubernetes API client: %w", err)
	}
	networking, err := client(networkingv1.SchemeGroupVersion, "/apis")
	if err != nil {
		return API{}, fmt.Errorf("Kubernetes API client: %w", err)
	}
	all := fields.Everything()
	return API{
		Pods:       cache.NewListWatchFromClient(core, "pods", metav1.NamespaceAll, all),
		Namespaces: cache.NewListWatchFromClient(core, "namespaces", metav1.NamespaceAll, all),
		Policies:   cache.NewListWatchFromClient(networking, "networkpolicies", metav1.NamespaceAll, all),
	}, nil
}

// NodeStateBlocks reads this node's blocks from node.json in runDir, as
// the CNI plugin does (nodestate.State.Blocks: an IPv6-only node's one
// block is in Block): none while the agent has withdrawn it or holds no
// block, since the plugin then hands out no address.
func NodeStateBlocks(runDir string) func() []netip.Prefix {
	return func() []netip.Prefix {
		st, err := nodestate.Read(runDir)
		if err != nil {
			return nil
		}
		return st.Blocks()
	}
}

func (e *Enforcer) wake() {
	select {
	case e.changed <- struct{}{}:
	default:
	}
}

// Run enforces until ctx ends, and answers on the admission socket
// meanwhile. Until the caches have synced, and after Run returns, the
// table stays as it was: a restart of the enforcer must not lift the
// policies of running pods.
func (e *Enforcer) Run(ctx context.Context) error {
	var informing sync.WaitGroup
	defer informing.Wait()
	ctx, stop := context.WithCancel(ctx)
	defer stop() // before Wait: the informers end with run
	if e.socket != "" {
		ln, err := listenAdmissions(e.socket)
		if err != nil {
			return err
		}
		server := admit.Server{
			Admit:  e.admit,
			Status: func() status.NetworkPolicy { return e.Status(time.Now()) },
			Rejected: func(err error) {
				e.admissions.WithLabelValues("rejected").Inc()
				e.log.Warn("network policy: refused a request on the admission socket", "err", err)
			},
		}
		informing.Go(func() {
			err := server.Serve(ctx, ln)
			if err != nil && !errors.Is(err, context.Canceled) {
				e.log.Error("network policy: admission socket stopped; new pods fail to start", "err", err)
			}
		})
	}
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
	case <-time.After(syncWarning):
		// The informers retry for ever; their own reasons go to klog.
		e.log.Warn("network policy: still waiting for the first list of pods, namespaces and policies; the previous ruleset stays in force (is the RBAC for them in place?)",
			"waited", syncWarning)
		ok = <-syncedc
	}
	if !ok {
		return fmt.Errorf("network policy: wait for the API's pods, namespaces and policies: %w", ctx.Err())
	}
	e.log.Info("network policy: caches synced; enforcing")
	// Watching starts before the first write: a change between the two
	// must not go unseen.
	watch := e.kernel.Watch(ctx)
	e.mu.Lock()
	e.synced = true
	e.mu.Unlock()
	resync := time.NewTicker(e.resync)
	defer resync.Stop()
	rewrite := time.NewTicker(e.rewrite)
	defer rewrite.Stop()
	var applied *netpol.Ruleset
	// why is the reason of the next write, should sync find the ruleset
	// to write (applied nil writes it whatever it is).
	why := "changed"
	for {
		rs, wrote, err := e.sync(applied)
		e.mu.Lock()
		e.lastErr = err
		e.mu.Unlock()
		if wrote {
			e.writes.WithLabelValues(why).Inc()
		}
		if err != nil {
			e.syncErrors.Inc()
			e.log.Error("network policy: sync failed; retrying on the next change or in "+e.resync.String(), "err", err)
			applied, why = nil, "retry"
		} else {
			applied, why = &rs, "changed"
		}
		rewriteWhy, err := e.wait(ctx, watch, resync.C, rewrite.C, applied)
		if err != nil {
			return err
		}
		if rewriteWhy != "" {
			applied, why = nil, rewriteWhy
		}
	}
}

// wait returns when the loop has to sync: after a change in the API or an
// admission, at every resync, and, with the reason in rewrite, when the
// table in force (applied, nil when the last write failed) is to be
// written whatever the ruleset: someone else changed it (watch, then
// Intact) or it is time for the safety net (rewriteTick).
func (e *Enforcer) wait(ctx context.Context, watch <-chan struct{}, resyncTick, rewriteTick <-chan time.Time, applied *netpol.Ruleset) (rewrite string, err error) {
	for {
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-e.changed:
			return "", nil
		case <-resyncTick:
			return "", nil
		case <-rewriteTick:
			return "rewrite", nil
		case <-watch:
			if applied == nil {
				continue // the last write failed: the resync retries it
			}
			// Our own writes signal too: they find the table intact.
			intact, err := e.kernel.Intact(*applied)
			if intact {
				continue
			}
			log := e.log
			if err != nil {
				log = log.With("err", err)
			}
			log.Warn("network policy: table inet " + netpol.TableName + " was changed by someone else; writing it again")
			return "tampered", nil
		}
	}
}

// sync compiles the caches' current content with the admitted pods and
// applies it unless it equals last (wrote tells); either way the
// admissions it covers are answered.
func (e *Enforcer) sync(last *netpol.Ruleset) (rs netpol.Ruleset, wrote bool, err error) {
	start := time.Now()
	in, admitted, err := e.input(start)
	if err != nil {
		return netpol.Ruleset{}, false, err
	}
	rs, problems := netpol.Compile(in)
	for _, p := range problems {
		e.log.Warn("network policy: part of a policy ignored", "err", p)
	}
	// An unchanged ruleset is in force already, admitted pods and all.
	unchanged := last != nil && reflect.DeepEqual(*last, rs)
	if !unchanged {
		if err := e.apply(rs); err != nil {
			return rs, false, err
		}
		e.syncSeconds.Observe(time.Since(start).Seconds())
	}
	e.inForceNow(admitted, report{Policies: len(in.Policies), Pods: enforcedPods(rs), LastSync: time.Now()})
	if unchanged {
		return rs, false, nil
	}
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
	return rs, true, nil
}

// input is what to compile now, and the admitted pods it holds, each with
// the address it is compiled with. An admitted pod's address stands in for
// what the API server reports until the API reports the same; an
// admission the API never confirms ends after admissionTTL.
func (e *Enforcer) input(now time.Time) (netpol.Input, map[string]netip.Addr, error) {
	pods, err := e.pods.List(labels.Everything())
	if err != nil {
		return netpol.Input{}, nil, err
	}
	namespaces, err := e.namespaces.List(labels.Everything())
	if err != nil {
		return netpol.Input{}, nil, err
	}
	policies, err := e.policies.List(labels.Everything())
	if err != nil {
		return netpol.Input{}, nil, err
	}
	blocks := e.blocks() // node.json, read outside the lock
	e.mu.Lock()
	defer e.mu.Unlock()
	found := make(map[string]netip.Addr)
	for i, p := range pods {
		key := p.Namespace + "/" + p.Name
		a, ok := e.admitted[key]
		if !ok || p.Spec.NodeName != e.nodeName {
			continue
		}
		primary, ok := primaryAddr(a.addrs)
		if !ok {
			continue
		}
		if apiHasAddrs(p, a.addrs) {
			delete(e.admitted, key) // the API has caught up
		} else {
			// The cache's objects are shared: change a copy.
			withAddr := *p
			withAddr.Status.PodIP = primary.String()
			withAddr.Status.PodIPs = nil
			for _, addr := range a.addrs {
				withAddr.Status.PodIPs = append(withAddr.Status.PodIPs, corev1.PodIP{IP: addr.String()})
			}
			pods[i] = &withAddr
		}
		found[key] = primary
	}
	for key, a := range e.admitted {
		if _, ok := found[key]; !ok && now.Sub(a.at) > admissionTTL {
			delete(e.admitted, key)
		}
	}
	in := netpol.Input{Policies: policies, Pods: pods, Namespaces: namespaces, NodeName: e.nodeName, Blocks: blocks}
	return in, found, nil
}

// primaryAddr is the address an admitted pod is known by: its IPv4
// address, or its first address when it has only IPv6 ones (false: none).
// The pod's other addresses are compiled in the same ruleset with it.
func primaryAddr(addrs []netip.Addr) (netip.Addr, bool) {
	for _, a := range addrs {
		if a.Is4() {
			return a, true
		}
	}
	if len(addrs) > 0 {
		return addrs[0], true
	}
	return netip.Addr{}, false
}

// apiHasAddrs reports whether the API's pod p lists every one of addrs in
// its status (podIP or podIPs): only then can the announced addresses stop
// standing in for the API's, or an IPv6 address the API lacks yet would
// count as unknown.
func apiHasAddrs(p *corev1.Pod, addrs []netip.Addr) bool {
	has := make(map[netip.Addr]bool, len(p.Status.PodIPs)+1)
	if a, err := netip.ParseAddr(p.Status.PodIP); err == nil {
		has[a.Unmap()] = true
	}
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			has[a.Unmap()] = true
		}
	}
	for _, a := range addrs {
		if !has[a.Unmap()] {
			return false
		}
	}
	return true
}

// enforcedPods counts this node's pods isolated in either direction.
func enforcedPods(rs netpol.Ruleset) int {
	n := len(rs.Ingress)
	for a := range rs.Egress {
		if _, both := rs.Ingress[a]; !both {
			n++
		}
	}
	return n
}

// apply writes rs, keeping the drops the replaced table counted.
func (e *Enforcer) apply(rs netpol.Ruleset) error {
	e.applying.Lock()
	defer e.applying.Unlock()
	before, err := e.kernel.Drops()
	if err != nil {
		e.log.Debug("network policy: cannot read the drop counters before replacing the table", "err", err)
	}
	if err := e.kernel.Apply(rs); err != nil {
		return err
	}
	e.dropsBefore.PolicyPackets += before.PolicyPackets
	e.dropsBefore.UnknownPackets += before.UnknownPackets
	return nil
}

// drops is what the table's drop rules counted since the enforcer started.
func (e *Enforcer) drops() (netpol.Drops, error) {
	e.applying.Lock()
	defer e.applying.Unlock()
	d, err := e.kernel.Drops()
	if err != nil {
		return netpol.Drops{}, err
	}
	return netpol.Drops{
		PolicyPackets:  e.dropsBefore.PolicyPackets + d.PolicyPackets,
		UnknownPackets: e.dropsBefore.UnknownPackets + d.UnknownPackets,
	}, nil
}

// inForceNow records that the ruleset compiled with admitted is in force,
// and wakes the admissions waiting for it.
func (e *Enforcer) inForceNow(admitted map[string]netip.Addr, r report) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.inForce = admitted
	e.report = r
	close(e.inForceChanged)
	e.inForceChanged = make(chan struct{})
}

// admit answers the plugin's announcement of a new pod (admit.Handler):
// it returns once a ruleset compiled with the pod at the announced
// address is in force, or says why not when ctx ends first.
func (e *Enforcer) admit(ctx context.Context, r admit.Request) error {
	key := r.Namespace + "/" + r.Name
	primary, ok := primaryAddr(r.IPs)
	if !ok {
		// No address: nothing of the pod's to put in force.
		e.admissions.WithLabelValues("in_force").Inc()
		return nil
	}
	e.mu.Lock()
	e.admitted[key] = admittedPod{addrs: r.IPs, at: time.Now()}
	e.mu.Unlock()
	e.wake()
	for {
		e.mu.Lock()
		inForce := e.inForce[key] == primary
		changed, synced, lastErr := e.inForceChanged, e.synced, e.lastErr
		e.mu.Unlock()
		if inForce {
			e.admissions.WithLabelValues("in_force").Inc()
			return nil
		}
		select {
		case <-changed:
			continue
		case <-ctx.Done():
		}
		e.admissions.WithLabelValues("failed").Inc()
		switch {
		case !synced:
			return fmt.Errorf("grapevine-policy has not listed pods, namespaces and network policies yet")
		case lastErr != nil:
			return fmt.Errorf("grapevine-policy cannot apply the network policy ruleset: %w", lastErr)
		}
		p, err := e.pods.Pods(r.Namespace).Get(r.Name)
		switch {
		case err != nil:
			return fmt.Errorf("grapevine-policy has not seen pod %s in the API yet", key)
		case p.Spec.NodeName != e.nodeName:
			return fmt.Errorf("pod %s is scheduled on node %q, not on this node %q", key, p.Spec.NodeName, e.nodeName)
		default:
			return fmt.Errorf("grapevine-policy could not put the policies of pod %s in force in time", key)
		}
	}
}

// listenAdmissions opens the admission socket at path, replacing one a
// previous run left; only root may connect.
func listenAdmissions(path string) (net.Listener, error) {
	return ownersock.Listen(path, "network policy: admission socket")
}

// Status reports the enforcement at now.
func (e *Enforcer) Status(now time.Time) status.NetworkPolicy {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := status.NetworkPolicy{Enabled: true, Synced: e.synced, Policies: e.report.Policies, Pods: e.report.Pods, LastSync: e.report.LastSync}
	if !st.LastSync.IsZero() {
		st.LastSyncAgeSeconds = now.Sub(st.LastSync).Seconds()
	}
	if e.lastErr != nil {
		st.Error = e.lastErr.Error()
	}
	return st
}

// dropCollector reads the table's drop counters at scrape time.
type dropCollector struct{ e *Enforcer }

var droppedDesc = prometheus.NewDesc("grapevine_netpol_dropped_packets_total",
	"Packets of new connections the network policy table dropped, by reason: policy (no policy of the pod allowed it), unknown_address (an address of this node's block no known pod holds).",
	[]string{"reason"}, nil)

func (c dropCollector) Describe(ch chan<- *prometheus.Desc) { ch <- droppedDesc }

func (c dropCollector) Collect(ch chan<- prometheus.Metric) {
	d, err := c.e.drops()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(droppedDesc, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(droppedDesc, prometheus.CounterValue, float64(d.PolicyPackets), "policy")
	ch <- prometheus.MustNewConstMetric(droppedDesc, prometheus.CounterValue, float64(d.UnknownPackets), "unknown_address")
}

// trimPod keeps of a Pod what a policy reads: its name, namespace and
// labels, its node, whether it is on the host network, its phase and
// addresses and its containers' ports. A cluster's pods cost the enforcer's
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
