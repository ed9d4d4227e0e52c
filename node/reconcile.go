package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Result.Peers' values other than an error text.
const (
	// PeerProgrammed: the peer's route is in the kernel as desired.
	PeerProgrammed = "programmed"
	// PeerPending: the pass ended (its context was cancelled, or the
	// kernel's routes could not be listed) before the route was checked
	// or written.
	PeerPending = "pending"
)

// Result describes one reconcile pass.
type Result struct {
	// Peers maps every peer of the Desired state to PeerProgrammed,
	// PeerPending or the reason it has no route.
	Peers map[string]string
	// PeerErrors holds the peers that have no route and why: a next hop
	// that is not directly connected, an overlapping block, a route of
	// someone else's in the way, a failed kernel call.
	PeerErrors map[string]error
	// Paths maps every peer to the path chosen for it and why.
	Paths map[string]PeerPath
	// Paths6 maps every peer of Desired.Peers6 to the path of its IPv6
	// block and why (PathNone: not routed).
	Paths6 map[string]PeerPath
	// Added, Replaced and Deleted count the route writes of this pass.
	Added, Replaced, Deleted int
	// UplinkMTU is the MTU of the interface towards the peers as the pass
	// found it; 0: not known.
	UplinkMTU int
	// Forward is what the pass found and did in each filter FORWARD
	// chain of iptables (see PlanForwardAccept); empty where no backend
	// has a filter table. ForwardErr is why it could not read or change
	// them: it does not fail the pass (pods are no worse off than
	// without the rules, and the agent still holds its block), and is
	// logged when it changes.
	Forward    []ForwardVerdict
	ForwardErr error
	// ForwardingEnabled lists the families whose forwarding the pass
	// found off and turned on (see ForwardingSysctl): the host did not
	// forward yet, or something on it switched forwarding off since.
	ForwardingEnabled []Family
}

// Programmed reports whether peer's route is installed after the pass.
func (r Result) Programmed(peer string) bool {
	return r.Peers[peer] == PeerProgrammed
}

// Reconciler makes a Kernel match a Desired state, one pass at a time.
type Reconciler struct {
	kernel  Kernel
	log     *slog.Logger
	metrics reconcileMetrics

	mu sync.Mutex // serialises passes; guards lastPeerErrs
	// lastPeerErrs is the previous pass's peer errors, so a persistent
	// error is logged when it appears and when it clears, not every pass.
	lastPeerErrs map[string]string
	// vethSeen is when a pass first saw each host veth; see
	// PodSpec.Settle.
	vethSeen map[vethKey]time.Time
	// lastForwardErr is the previous pass's ForwardErr, as text.
	lastForwardErr string
	// forwardDue: the next pass reads and syncs the FORWARD chains (see
	// RecheckForward); forwardPool is the pool the last sync was for,
	// and forward and forwardErr its outcome, which passes in between
	// report again.
	forwardDue  bool
	forwardPool netip.Prefix
	forward     []ForwardVerdict
	forwardErr  error
}

// NewReconciler returns a Reconciler for k. Metrics are registered with reg
// unless it is nil; registering twice with one registry panics.
func NewReconciler(k Kernel, log *slog.Logger, reg prometheus.Registerer) *Reconciler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := newReconcileMetrics()
	if reg != nil {
		m.register(reg)
	}
	return &Reconciler{kernel: k, log: log, metrics: m, lastPeerErrs: make(map[string]string), forwardDue: true}
}

// RecheckForward makes the next pass read iptables' filter FORWARD chains
// and put the pool's accept rules in them (or take them out). Otherwise a
// pass does so only when the pool changed: reading the chains is an
// nftables listing (and, with iptables-legacy, two processes), too much for
// every pass. The agent asks for it when the kernel announces a change
// (iptables-nft's chains do, see isForwardChange) and on its resync tick
// (iptables-legacy's announce nothing).
func (r *Reconciler) RecheckForward() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.forwardDue = true
}

// Reconcile runs one pass: turn on forwarding, set up or remove the
// masquerade, accept the pool in iptables' FORWARD chains that drop by
// policy (on the first pass, after RecheckForward, or for a new pool), resolve the interface, list our routes, diff them against d
// and apply the difference (adds and replaces before deletes). A peer that
// cannot be routed is reported in Result and does not fail the pass; the
// returned error joins the failures that are not any one peer's. Running it
// again with the same d changes nothing.
func (r *Reconciler) Reconcile(ctx context.Context, d Desired) (Result, error) {
	if err := validateDesired(d); err != nil {
		return Result{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	start := time.Now()
	defer func() { r.metrics.duration.Observe(time.Since(start).Seconds()) }()

	res, err := r.reconcile(ctx, d)
	if err != nil {
		r.metrics.failures.Inc()
	}
	r.metrics.peerErrors.Set(float64(len(res.PeerErrors)))
	countPeersByPath(r.metrics.peersByPath, res)
	r.logPeerErrors(res.PeerErrors)
	return res, err
}

func (r *Reconciler) reconcile(ctx context.Context, d Desired) (Result, error) {
	res := Result{Peers: make(map[string]string, len(d.Peers)), PeerErrors: make(map[string]error), Paths: make(map[string]PeerPath)}
	// programmed holds the routes known to be in the kernel as desired.
	programmed := make(map[routeKey]bool)
	peers := d.Peers
	defer func() {
		for _, p := range peers {
			switch err, failed := res.PeerErrors[p.Peer]; {
			case failed:
				res.Peers[p.Peer] = err.Error()
			case programmed[routeKey{p.Block, routeMetric(p.Block)}]:
				res.Peers[p.Peer] = PeerProgrammed
			default:
				res.Peers[p.Peer] = PeerPending
			}
		}
		for _, p := range d.Peers6 {
			if path, ok := res.Paths6[p.Peer]; ok && path.Path != PathNone && !programmed[routeKey{p.Block, IPv6DefaultMetric}] {
				res.Paths6[p.Peer] = PeerPath{PathNone, "route not written: " + path.Why}
			}
		}
	}()
	var errs []error

	ensureForwarding := func(family Family) {
		enabled, err := r.kernel.EnsureForwarding(family)
		if enabled {
			res.ForwardingEnabled = append(res.ForwardingEnabled, family)
		}
		errs = append(errs, err)
	}
	// An IPv6-only node (an IPv6 Pool) forwards IPv6 alone.
	if !d.Pool.Addr().Is6() {
		ensureForwarding(IPv4)
	}
	if d.Pool6.IsValid() || d.Pool.Addr().Is6() {
		ensureForwarding(IPv6)
	}
	for _, family := range []Family{IPv4, IPv6} {
		if pool, ok := MasqueradedPools(d)[family]; ok {
			errs = append(errs, r.kernel.EnsureMasquerade(pool))
		} else {
			errs = append(errs, r.kernel.RemoveMasquerade(family))
		}
	}
	// The FORWARD chains handled are iptables' (IPv4): an IPv6-only
	// node's pool has none, and any rule an earlier IPv4 pool left goes.
	forwardPool := d.Pool
	if forwardPool.Addr().Is6() {
		forwardPool = netip.Prefix{}
	}
	if r.forwardDue || forwardPool != r.forwardPool {
		r.forward, r.forwardErr = r.syncForwardAccept(forwardPool)
		r.forwardDue, r.forwardPool = false, forwardPool
		r.logForwardError(r.forwardErr)
	}
	res.Forward, res.ForwardErr = slices.Clone(r.forward), r.forwardErr

	actual, err := r.kernel.Routes()
	if err != nil {
		return res, errors.Join(append(errs, err)...)
	}
	link, err := r.kernel.Link(d.Iface)
	linkKnown := true
	switch {
	case errors.Is(err, ErrLinkNotFound):
		// Routes through a deleted link are gone already; DesiredRoutes
		// gives every peer the reason.
		errs = append(errs, err)
		link = Link{Name: d.Iface}
	case err != nil:
		// Not knowing the link is no reason to withdraw working routes:
		// leave our unicast routes as they are and fix only the blackhole
		// and the pool's unreachable route.
		errs = append(errs, err)
		linkKnown = false // the VXLAN device and its entries stay as they are, too
		for _, p := range d.Peers {
			res.PeerErrors[p.Peer] = fmt.Errorf("route not reconciled: %w", err)
		}
		d.Peers = nil
		actual = withoutNextHop(actual)
	}

	res.UplinkMTU = link.MTU
	res.Paths = PeerPaths(d, link)
	var tunnel Link
	var tunnelErr error
	if linkKnown {
		tunnel, tunnelErr = r.syncTunnel(d, link)
	}
	desired, peerErrs := DesiredRoutes(d, link, tunnel)
	res.Paths6 = PeerPaths6(d, link, tunnel, peerErrs)
	tunnelErrorsForPeers(peerErrs, tunnelErr)
	maps.Copy(res.PeerErrors, peerErrs)
	if linkKnown {
		errs = append(errs, r.syncTunnelEntries(d, link, tunnel, peerErrs))
	}
	toAdd, toDel := Diff(desired, actual)
	for _, rt := range desired {
		programmed[rt.key()] = true
	}
	for _, rt := range toAdd {
		programmed[rt.key()] = false
	}

	peerOf := make(map[routeKey]string, len(d.Peers))
	for _, p := range d.Peers {
		peerOf[routeKey{p.Block, routeMetric(p.Block)}] = p.Peer
	}
	owned := make(map[routeKey]bool, len(actual))
	for _, a := range actual {
		owned[a.key()] = true
	}
	for _, rt := range toAdd {
		if err := ctx.Err(); err != nil {
			return res, errors.Join(append(errs, err)...)
		}
		op, apply := "add", r.kernel.AddRoute
		if owned[rt.key()] {
			op, apply = "replace", r.kernel.ReplaceRoute
		}
		if err := apply(rt); err != nil {
			r.metrics.errors.WithLabelValues(op).Inc()
			if peer, ok := peerOf[rt.key()]; ok {
				res.PeerErrors[peer] = err
			} else {
				errs = append(errs, err)
			}
			continue
		}
		r.metrics.ops.WithLabelValues(op).Inc()
		programmed[rt.key()] = true
		if op == "add" {
			res.Added++
		} else {
			res.Replaced++
		}
		r.log.Debug("route "+op, "route", rt.String(), "peer", peerOf[rt.key()])
	}
	for _, rt := range toDel {
		if err := ctx.Err(); err != nil {
			return res, errors.Join(append(errs, err)...)
		}
		if err := r.kernel.DeleteRoute(rt); err != nil {
			r.metrics.errors.WithLabelValues("delete").Inc()
			errs = append(errs, err)
			continue
		}
		r.metrics.ops.WithLabelValues("delete").Inc()
		res.Deleted++
		r.log.Debug("route delete", "route", rt.String())
	}
	if linkKnown {
		errs = append(errs, r.removeUnusedTunnel(d, link))
	}
	if res.Added+res.Replaced+res.Deleted > 0 {
		r.log.Info("routes changed", "added", res.Added, "replaced", res.Replaced, "deleted", res.Deleted)
	}
	return res, errors.Join(errs...)
}

// syncForwardAccept puts the pool's accept rules into every filter FORWARD
// chain that drops by policy, and removes the agent's rules from the
// others.
func (r *Reconciler) syncForwardAccept(pool netip.Prefix) ([]ForwardVerdict, error) {
	chains, err := r.kernel.ForwardChains()
	if err != nil {
		r.metrics.forwardErrors.Inc()
	}
	insert, del, verdicts := PlanForwardAccept(pool, chains)
	errs := []error{err}
	// Each goes to the head of the chain: last first keeps the plan's
	// order.
	for _, rule := range slices.Backward(insert) {
		if err := r.kernel.InsertForwardRule(rule); err != nil {
			r.metrics.forwardErrors.Inc()
			errs = append(errs, err)
			// The chain does not accept the pool after all.
			for i := range verdicts {
				if verdicts[i].Backend == rule.Backend {
					verdicts[i].Accepting = false
				}
			}
			continue
		}
		r.metrics.forwardOps.WithLabelValues("insert").Inc()
		r.log.Info("forward chain drops by policy: accepting the pool", "rule", rule.String())
	}
	for _, rule := range del {
		if err := r.kernel.DeleteForwardRule(rule); err != nil {
			r.metrics.forwardErrors.Inc()
			errs = append(errs, err)
			continue
		}
		r.metrics.forwardOps.WithLabelValues("delete").Inc()
		r.log.Info("forward rule removed", "rule", rule.String())
	}
	return verdicts, errors.Join(errs...)
}

// logForwardError logs the pass's failure in the FORWARD chains when it
// differs from the last pass's, and once when it clears.
func (r *Reconciler) logForwardError(err error) {
	now := ""
	if err != nil {
		now = err.Error()
	}
	switch {
	case now == r.lastForwardErr:
	case now == "":
		r.log.Info("forward chains handled again")
	default:
		r.log.Warn("cannot accept the pool in a FORWARD chain that may drop it", "err", err)
	}
	r.lastForwardErr = now
}

// withoutNextHop keeps the blackholes and unreachable routes: the ones that
// do not depend on the link.
func withoutNextHop(routes []Route) []Route {
	var out []Route
	for _, r := range routes {
		if !r.Unicast() {
			out = append(out, r)
		}
	}
	return out
}

// MasqueradedPools is the pool each family's grapevine table masquerades:
// with d.Masquerade, the pool (IPv6 on an IPv6-only node) and, on a
// dual-stack node, the IPv6 pool;
// a family without an entry has no table. Pod-to-pod traffic is never
// translated, since each rule matches only destinations outside its pool.
// It is a pure function.
func MasqueradedPools(d Desired) map[Family]netip.Prefix {
	pools := make(map[Family]netip.Prefix, 2)
	if !d.Masquerade {
		return pools
	}
	if d.Pool.IsValid() {
		pools[familyOf(d.Pool)] = d.Pool
	}
	if d.Pool6.IsValid() {
		pools[IPv6] = d.Pool6
	}
	return pools
}

// validateDesired rejects a Desired state that cannot be applied at all,
// before anything is changed.
func validateDesired(d Desired) error {
	switch {
	case d.Iface == "":
		return errors.New("reconcile: no interface given")
	case d.Encapsulation < EncapsulationNever || d.Encapsulation > EncapsulationAlways:
		return fmt.Errorf("reconcile: unknown %v", d.Encapsulation)
	case d.Encapsulation != EncapsulationNever && !d.HostIP.Is4() && !(d.Pool.Addr().Is6() && d.HostIP.Is6()):
		return fmt.Errorf("reconcile: encapsulation %s needs this host's IPv4 address, or an IPv6 one with an IPv6 pool, have %v", d.Encapsulation, d.HostIP)
	case d.Pool.Addr().Is6() && (d.Pool6.IsValid() || d.OwnBlock6.IsValid() || len(d.Peers6) > 0):
		return fmt.Errorf("reconcile: pool %s is IPv6 (an IPv6-only node), so there is no second, IPv6 pool %s", d.Pool, d.Pool6)
	case d.OwnBlock.IsValid() && d.OwnBlock.Masked() != d.OwnBlock:
		return fmt.Errorf("reconcile: own block %s is not a network address", d.OwnBlock)
	case d.Masquerade && !d.Pool.IsValid():
		return errors.New("reconcile: masquerade needs a pool")
	case d.Pool.IsValid() && d.Pool.Masked() != d.Pool:
		return fmt.Errorf("reconcile: pool %s is not a network address", d.Pool)
	case d.Pool.IsValid() && d.OwnBlock.IsValid() &&
		(d.OwnBlock.Bits() < d.Pool.Bits() || !d.Pool.Contains(d.OwnBlock.Addr())):
		return fmt.Errorf("reconcile: own block %s is not inside pool %s", d.OwnBlock, d.Pool)
	case d.Pool6.IsValid() && (!d.Pool6.Addr().Is6() || d.Pool6.Masked() != d.Pool6):
		return fmt.Errorf("reconcile: pool6 %s is not an IPv6 network address", d.Pool6)
	case d.OwnBlock6.IsValid() && (!d.Pool6.IsValid() || d.OwnBlock6.Masked() != d.OwnBlock6 ||
		d.OwnBlock6.Bits() < d.Pool6.Bits() || !d.Pool6.Contains(d.OwnBlock6.Addr())):
		return fmt.Errorf("reconcile: own IPv6 block %s is not a network inside pool6 %s", d.OwnBlock6, d.Pool6)
	}
	return nil
}

func (r *Reconciler) logPeerErrors(now map[string]error) {
	for peer, err := range now {
		if r.lastPeerErrs[peer] != err.Error() {
			r.log.Warn("peer not routed", "peer", peer, "err", err)
		}
	}
	for peer := range r.lastPeerErrs {
		if _, still := now[peer]; !still {
			r.log.Info("peer error cleared", "peer", peer)
		}
	}
	clear(r.lastPeerErrs)
	for peer, err := range now {
		r.lastPeerErrs[peer] = err.Error()
	}
}

type reconcileMetrics struct {
	ops        *prometheus.CounterVec
	errors     *prometheus.CounterVec
	duration   prometheus.Histogram
	failures   prometheus.Counter
	peerErrors prometheus.Gauge
	// The VXLAN path: device and entry writes, peers by path.
	tunnelOps, tunnelErrors *prometheus.CounterVec
	peersByPath             *prometheus.GaugeVec
	// The pods' host sides: what was put back, what could not be.
	podRepairs, podErrors *prometheus.CounterVec
	// The pool's accept rules in filter FORWARD chains.
	forwardOps    *prometheus.CounterVec
	forwardErrors prometheus.Counter
}

func newReconcileMetrics() reconcileMetrics {
	tunnelOps, tunnelErrors, peersByPath := newTunnelMetrics()
	return reconcileMetrics{
		tunnelOps: tunnelOps, tunnelErrors: tunnelErrors, peersByPath: peersByPath,
		podRepairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grapevine_node_pod_repairs_total",
			Help: "Pod host-side state put back after it was deleted or changed, by kind (route, neighbour, sysctl).",
		}, []string{"kind"}),
		podErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grapevine_node_pod_repair_errors_total",
			Help: "Failed writes putting back pod host-side state, by kind (route, neighbour, sysctl).",
		}, []string{"kind"}),
		forwardOps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grapevine_node_forward_rule_operations_total",
			Help: "Writes of the pool's accept rules in iptables' filter FORWARD chains, by operation (insert, delete).",
		}, []string{"op"}),
		forwardErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "grapevine_node_forward_rule_errors_total",
			Help: "Failed writes of the pool's accept rules in iptables' filter FORWARD chains.",
		}),
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grapevine_node_route_operations_total",
			Help: "Route writes by operation (add, replace, delete).",
		}, []string{"op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grapevine_node_route_errors_total",
			Help: "Failed route writes by operation (add, replace, delete).",
		}, []string{"op"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "grapevine_node_reconcile_seconds",
			Help:    "Time of one reconcile pass.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 8), // 0.5ms .. 8s
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "grapevine_node_reconcile_errors_total",
			Help: "Reconcile passes that returned an error.",
		}),
		peerErrors: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "grapevine_node_peer_route_errors",
			Help: "Peers without a route after the last pass (not directly connected, overlapping, kernel error).",
		}),
	}
}

func (m reconcileMetrics) register(reg prometheus.Registerer) {
	reg.MustRegister(m.ops, m.errors, m.duration, m.failures, m.peerErrors, m.tunnelOps, m.tunnelErrors, m.peersByPath, m.podRepairs, m.podErrors, m.forwardOps, m.forwardErrors)
}
