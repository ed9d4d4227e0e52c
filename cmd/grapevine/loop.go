package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/kubejoin"
	"github.com/grapevine-net/grapevine/mesh/ledger"
	"github.com/grapevine-net/grapevine/netpol/admit"
	"github.com/grapevine-net/grapevine/node"
	"github.com/grapevine-net/grapevine/node/nodestate"
	"github.com/grapevine-net/grapevine/node/probe"
	"github.com/grapevine-net/grapevine/status"
)

// agent wires the mesh to the kernel: every change of the mesh's View, every
// change of the kernel's routes and a periodic timer lead to one reconcile.
type agent struct {
	opts        agentOptions
	log         *slog.Logger
	registry    *prometheus.Registry
	mesh        *mesh.Mesh
	kernel      node.Kernel
	rec         *node.Reconciler
	watchRoutes func(context.Context) <-chan struct{}
	// prober watches the peers' data path; nil when probing is off or the
	// socket could not be opened: routes then follow gossip alone.
	prober *probe.Prober
	// silence asks gossip's word on peers whose host stopped answering;
	// see silenceChecks.
	silence *silenceChecks
	// kube is this host's Node object; nil without --join-kubernetes.
	kube *kubeNode
	// releaseWaits is the deleted Nodes whose blocks wait for their
	// leases to end; nil without --join-kubernetes.
	releaseWaits *releaseWaits
	// diagnose runs doctor here for doctor --all; doctorRun keeps its
	// runs one at a time. See ownSummary.
	diagnose  diagnoser
	doctorRun sync.Mutex
	// kept is the peer routes of the last pass and what keeps them; see
	// keptRoutes. Only the loop touches it.
	kept map[string]keptRoute
	// withdrawn is why each dead or departed member is not routed; see
	// withdrawals. Only the loop touches it.
	withdrawn map[string]string
	// lastPodErr is the last pass's failure to keep the pods' host sides;
	// see logPodErrors. podRecheck fires when pods too young to repair in
	// the last pass have settled; nil: none waiting. Only the loop touches
	// them.
	lastPodErr string
	podRecheck <-chan time.Time
	// collected counts the reservations of pods that are gone which the
	// agent freed, and lastCollectErr is the last pass's failure to free
	// them; see collectStale. Only the loop touches lastCollectErr.
	collected      prometheus.Counter
	lastCollectErr string

	// synced turns true once the mesh is ready (see mayReconcile). Until
	// then the agent leaves the kernel and the hand-off files as the previous
	// run left them: a restarting agent must not withdraw routes or tell the
	// plugin "not ready" just because it has not heard from its peers yet.
	// A hand-off the restart rule does not cover goes, though: see
	// withdrawStaleHandoff.
	synced bool
	// inheritedPeerRoutes counts the peer routes a previous run left in the
	// kernel, and started is when this run began: see mayReconcile.
	inheritedPeerRoutes int
	started             time.Time

	mu       sync.Mutex
	status   status.Report
	lastPass time.Time // start of the last loop pass, for /healthz
	// passEnd is closed when the running pass has published its status;
	// nil between passes. See settledStatus.
	passEnd chan struct{}
	// gossipSeen is when memberlist last counted each member in (alive or
	// suspect), as far as this agent looked: every pass and every status
	// or metrics request. Keyed by memberKey.
	gossipSeen map[string]time.Time
}

// hostSide is what the agent needs of the host: the kernel it programs, a
// source of route-change events and the socket that probes the peers' data
// path. Tests pass fakes.
type hostSide struct {
	kernel      node.Kernel
	watchRoutes func(context.Context) <-chan struct{}
	listenProbe func() (probe.Conn, error)
	// kubeAPI is the Kubernetes API for --join-kubernetes; nil: the
	// in-cluster client.
	kubeAPI kubeAPI
	// diagnose runs doctor on this host (doctor --all); nil: the agent
	// refuses to.
	diagnose diagnoser
}

func netlinkHost() hostSide {
	return hostSide{kernel: node.NewNetlinkKernel(), watchRoutes: node.WatchRoutes, listenProbe: probe.Listen, diagnose: linuxDiagnoser}
}

// newAgent builds an agent from its options and mesh configuration.
func newAgent(o agentOptions, cfg mesh.Config, host hostSide, log *slog.Logger) (*agent, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg.Registerer = reg
	a := &agent{
		opts:        o,
		diagnose:    host.diagnose,
		log:         log,
		registry:    reg,
		kernel:      host.kernel,
		rec:         node.NewReconciler(host.kernel, log.With("component", "node"), reg),
		watchRoutes: host.watchRoutes,
		status:      status.Report{Node: o.NodeName, Reason: "starting"},
		lastPass:    time.Now(),
		gossipSeen:  make(map[string]time.Time),
		collected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "grapevine_ipam_stale_reservations_freed_total",
			Help: "Reservations of pods that are gone (no host veth carries their attachment's alias) that the agent freed.",
		}),
	}
	// The mesh answers members' report requests (doctor --all) with the
	// agent's own.
	cfg.Report = a.ownReport
	if o.JoinKubernetes {
		client := host.kubeAPI
		if client == nil {
			c, err := kubejoin.NewInClusterClient()
			if err != nil {
				return nil, fmt.Errorf("--join-kubernetes: %w", err)
			}
			client = c
		}
		a.kube = &kubeNode{client: client, name: o.NodeName}
		cfg.Incarnation = a.kube
		cfg.LedgerRecord = kubeLedgerRecord{client: client}
		a.releaseWaits = &releaseWaits{}
	}
	m, err := mesh.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("gossip mesh: %w", err)
	}
	a.mesh = m
	reg.MustRegister(a.collected)
	if a.prober, err = newProber(o, host, reg, log); err != nil {
		return nil, err
	}
	reg.MustRegister(peerSignalCollector{a})
	a.silence = newSilenceChecks(func(id ledger.NodeID) error {
		_, err := m.Ping(id)
		return err
	})
	return a, nil
}

// newProber opens the data-path prober. Without the socket (no
// CAP_NET_RAW) the agent still runs, with routes following gossip alone, and
// says so: refusing to start would take the whole control plane down over
// a missing refinement.
func newProber(o agentOptions, host hostSide, reg prometheus.Registerer, log *slog.Logger) (*probe.Prober, error) {
	if o.ProbeInterval == 0 || host.listenProbe == nil {
		log.Info("data-path probes are off: routes follow gossip alone")
		return nil, nil
	}
	conn, err := host.listenProbe()
	if err != nil {
		log.Error("data-path probes are off: routes follow gossip alone, so a hung agent on a healthy host loses its routes", "err", err)
		return nil, nil
	}
	p, err := probe.New(probe.Config{
		Interval:   o.ProbeInterval,
		Misses:     o.ProbeMisses,
		Logger:     log.With("component", "probe"),
		Registerer: reg,
	}, conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("data-path prober: %w", err)
	}
	return p, nil
}

func (a *agent) run(ctx context.Context) error {
	// The status and metrics servers end with run, not only with ctx: an
	// agent whose mesh stops on its own (a ledger it may not open, say)
	// exits with the reason instead of serving on until a signal.
	serveCtx, stopServing := context.WithCancel(ctx)
	servers, err := a.serve(serveCtx)
	if err != nil {
		stopServing()
		return err
	}
	defer servers.Wait()
	defer stopServing() // before Wait: deferred calls run last first

	if a.kube != nil {
		if err := a.joinKubernetes(ctx); err != nil {
			return err
		}
	}
	a.started = time.Now()
	a.inheritedPeerRoutes = a.countPeerRoutes()
	graceOver := time.After(restartGrace)

	meshDone := make(chan error, 1)
	go func() { meshDone <- a.mesh.Run(ctx) }()
	var pathChanged <-chan struct{}
	if a.prober != nil {
		pathChanged = a.prober.Changed()
		var probing sync.WaitGroup
		defer probing.Wait()
		// The loop may also end because the mesh stopped: end the probes
		// with it, before waiting for them.
		probeCtx, stopProbes := context.WithCancel(ctx)
		defer stopProbes()
		probing.Go(func() {
			if err := a.prober.Run(probeCtx); err != nil {
				a.log.Error("data-path probes stopped: routes follow gossip alone", "err", err)
			}
		})
	}

	defer a.silence.wait()
	routeChanged := a.watchRoutes(ctx)
	resync := time.NewTicker(a.opts.ResyncInterval)
	defer resync.Stop()
	for {
		if ctx.Err() != nil {
			return a.stopped(<-meshDone)
		}
		a.beginPass()
		a.endPass(a.reconcile(ctx))
		select {
		case <-ctx.Done():
		case err := <-meshDone:
			if ctx.Err() != nil {
				return a.stopped(err)
			}
			return err // mesh.Run says what stopped it
		case <-a.mesh.Changed():
		case <-routeChanged:
			// Docker setting FORWARD's policy to DROP is one of these
			// events; rechecking costs one nftables listing.
			a.rec.RecheckForward()
		case <-pathChanged:
		case <-a.silence.Changed():
		case <-resync.C:
			a.rec.RecheckForward()
		case <-a.podRecheck:
		case <-graceOver:
		}
	}
}

// stopped ends the loop after a shutdown. The mesh has left gracefully; peers
// keep routing this node's block while this host answers their probes. No
// reconcile follows, because the View now shows every peer gone: this host's
// routes stay in place, so its pods keep talking, to each other and to other
// hosts' pods, across an agent restart.
func (a *agent) stopped(meshErr error) error {
	a.log.Info("left the mesh; host routes left in place")
	if errors.Is(meshErr, context.Canceled) {
		return nil
	}
	return meshErr
}

// reconcile brings the kernel and the hand-off files in line with the mesh's
// current View and returns the outcome for status and readiness.
func (a *agent) reconcile(ctx context.Context) status.Report {
	v := a.mesh.View()
	paths := a.pathVerdicts()
	silent := a.silence.update(ctx, v, paths, time.Now())
	kept := keptRoutes(v, a.kept, paths, silent)
	a.withdrawn = withdrawals(v, a.kept, kept, paths, silent, a.withdrawn)
	a.kept = kept
	if a.prober != nil {
		a.prober.Watch(append(probeTargets(v, a.kept), probeTargets6(v, a.kept, a.opts)...))
	}
	a.noteGossip(v)
	if !a.synced && !a.mayReconcile(v) {
		reason := v.Reason
		if v.Ready {
			reason = "waiting for peers to re-join; keeping the previous run's routes"
		}
		a.withdrawStaleHandoff(v)
		a.removeStaleConflist()
		return ipv6Status(buildStatus(v, a.kept, a.withdrawn, paths, node.Result{}, false, reason), v, node.Result{}, a.opts)
	}
	firstPass := !a.synced
	a.synced = true

	res, err := a.rec.Reconcile(ctx, desiredState(v, a.kept, a.opts))
	ready, reason := v.Ready, v.Reason
	if err != nil {
		a.log.Error("reconcile failed", "err", err)
		ready, reason = false, "reconcile: "+err.Error()
	}
	for _, family := range res.ForwardingEnabled {
		level, msg := forwardingEnabledLog(node.ForwardingSysctl(family), firstPass)
		a.log.Log(ctx, level, msg, "sysctl", node.ForwardingSysctl(family))
	}
	if mtu, changed := followUplinkMTU(a.opts.MTUFlag, a.opts.MTU, res.UplinkMTU, a.opts.Encapsulation, node.TunnelOverheadFor(a.opts.HostIP)); changed {
		a.log.Warn("the uplink's MTU changed: node.json gives new pods the new MTU; running pods keep theirs until restarted",
			"iface", a.opts.Iface, "uplinkMTU", res.UplinkMTU, "podMTU", mtu, "was", a.opts.MTU)
		a.opts.MTU = mtu
	}
	if err := a.handoff(v); err != nil {
		a.log.Error("hand-off to the CNI plugin failed", "err", err)
		ready, reason = false, err.Error()
	}
	if why := a.tendPods(ctx, v.Block, ready); why != "" {
		ready, reason = false, why
	}
	return ipv6Status(buildStatus(v, a.kept, a.withdrawn, paths, res, ready, reason), v, res, a.opts)
}

// forwardingEnabledLog is how the agent tells that a pass found the
// forwarding sysctl 0 and set it to 1. At this run's first pass the host
// merely did not forward yet (nothing persists the setting); later,
// something on the host switched forwarding off under the agent, and the
// host stopped forwarding pods' traffic until the pass: worth a warning.
func forwardingEnabledLog(sysctl string, firstPass bool) (slog.Level, string) {
	if firstPass {
		return slog.LevelInfo, sysctl + " was 0 when the agent started; set it to 1"
	}
	return slog.LevelWarn, sysctl + " was 0; set it to 1: something on this host switches it off"
}

// pathVerdicts is the prober's verdicts; none while probing is off.
func (a *agent) pathVerdicts() map[netip.Addr]probe.Verdict {
	if a.prober == nil {
		return nil
	}
	return a.prober.Verdicts()
}

// pathHealth is the prober's last minute per host; none while probing is
// off.
func (a *agent) pathHealth() map[netip.Addr]probe.Health {
	if a.prober == nil {
		return nil
	}
	return a.prober.Health()
}

// noteGossip records that memberlist counts v's live members in as of now.
func (a *agent) noteGossip(v mesh.View) {
	now := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, m := range v.Members {
		if m.State.Live() {
			a.gossipSeen[memberKey(m)] = now
		}
	}
}

// freshStatus is the last pass's status with each member's signals brought
// up to date: gossip as the mesh sees it now, data path as the prober does.
func (a *agent) freshStatus() status.Report {
	v := a.mesh.View()
	a.noteGossip(v)
	paths := a.pathVerdicts()
	health := a.pathHealth()
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.status
	// A follower's role and voters change without a reconcile.
	st.Ledger = buildLedgerStatus(v)
	st.PendingReleases = a.releaseWaits.report(time.Now())
	st.Members = slices.Clone(st.Members)
	for i := range st.Members {
		m := &st.Members[i]
		m.GossipSeen = a.gossipSeen[m.ID]
		if ip, err := netip.ParseAddr(m.HostIP); err == nil {
			m.DataPath, m.DataPathSeen = dataPathState(paths, ip)
			m.DataPathHealth = healthOf(health, ip)
		}
	}
	return st
}

// policyStatusWait bounds the question to grapevine-policy: a hung
// enforcer must not hang the agent's status with it.
const policyStatusWait = time.Second

// fullStatus is freshStatus with network policy as grapevine-policy
// reports it on --policy-socket: what the status socket answers and what
// doctor judges.
func (a *agent) fullStatus(ctx context.Context) status.Report {
	st := a.freshStatus()
	st.NetworkPolicy = policyStatus(ctx, a.opts.PolicySocket)
	return st
}

// policyStatus asks the enforcer at socket how enforcement stands: off
// without a socket, and Unreachable when the enforcer does not answer
// (the CNI plugin then fails every new pod, closed).
func policyStatus(ctx context.Context, socket string) status.NetworkPolicy {
	if socket == "" {
		return status.NetworkPolicy{}
	}
	ctx, cancel := context.WithTimeout(ctx, policyStatusWait)
	defer cancel()
	st, err := admit.AskStatus(ctx, socket)
	if err != nil {
		return status.NetworkPolicy{Enabled: true, Socket: socket, Unreachable: err.Error()}
	}
	st.Enabled, st.Socket = true, socket
	return st
}

// restartGrace is how long a restarted agent that finds peer routes in the
// kernel but no members in the mesh waits before it believes it is alone.
const restartGrace = 15 * time.Second

// mayReconcile decides when this run may first change the kernel: once the
// mesh is ready and, if a previous run left peer routes behind, once it has
// found a member or restartGrace has passed. Without the second condition a
// restarted seed node whose peers have not re-joined it yet would see itself
// alone, ready, and withdraw every peer route for seconds.
func (a *agent) mayReconcile(v mesh.View) bool {
	if !v.Ready {
		return false
	}
	return len(v.Members) > 0 || a.inheritedPeerRoutes == 0 || time.Since(a.started) >= restartGrace
}

// countPeerRoutes counts the unicast routes carrying Grapevine's protocol,
// i.e. peer routes a previous run installed.
func (a *agent) countPeerRoutes() int {
	routes, err := a.kernel.Routes()
	if err != nil {
		a.log.Warn("cannot list routes left by a previous run", "err", err)
		return 0
	}
	n := 0
	for _, r := range routes {
		if r.Unicast() {
			n++
		}
	}
	if n > 0 {
		a.log.Info("found peer routes of a previous run; keeping them until the mesh has peers", "routes", n, "grace", restartGrace)
	}
	return n
}

// handoff writes node.json and the conflist while this node holds a block
// under a lease (ended or not: see handoffState), and removes them while it
// does not, so kubelet sees the node not ready and the plugin answers "try
// again later".
func (a *agent) handoff(v mesh.View) error {
	st, ok := handoffState(v, a.opts)
	if !ok {
		return a.handoffFiles().Remove()
	}
	return a.handoffFiles().Write(st)
}

// withdrawStaleHandoff withdraws the previous run's hand-off, conflist first,
// once the mesh says the restart rule does not cover it (see staleHandoff).
// It stays withdrawn until this run first reconciles with a block the
// ledger confirmed.
func (a *agent) withdrawStaleHandoff(v mesh.View) {
	prev, err := nodestate.Read(a.opts.RunDir)
	if err != nil {
		return // nothing usable left; removeStaleConflist sees to the conflist
	}
	why := staleHandoff(v, prev.Block)
	if why == "" {
		return
	}
	if err := a.handoffFiles().Remove(); err != nil {
		a.log.Error("cannot withdraw the previous run's hand-off, whose block may be another node's", "block", prev.Block, "why", why, "err", err)
		return
	}
	a.log.Warn("withdrew the previous run's hand-off (conflist and node.json) until the ledger confirms this node's block",
		"block", prev.Block, "why", why)
}

// removeStaleConflist keeps the runtime from reporting the network ready
// while this run does not yet know its block and no usable node.json is
// left from the previous run (after a reboot, say). A previous run's usable
// hand-off stays while the restart rule covers it (see
// withdrawStaleHandoff), so pods start while the agent restarts.
func (a *agent) removeStaleConflist() {
	removed, err := a.handoffFiles().RemoveStaleConflist()
	if err != nil {
		a.log.Error("cannot remove a conflist that has no usable node.json", "err", err)
	}
	if removed {
		a.log.Info("removed the conflist: node.json is missing or unusable until this node holds a block")
	}
}

func (a *agent) handoffFiles() node.Handoff {
	return node.Handoff{RunDir: a.opts.RunDir, CNIConfDir: a.opts.CNIConfDir, StateDir: a.opts.StateDir, CNIVersion: a.opts.CNIVersion}
}

// beginPass marks the start of a loop pass: for /healthz, and for readers of
// the status, who wait for the pass to publish its outcome (settledStatus).
func (a *agent) beginPass() {
	a.mu.Lock()
	a.lastPass = time.Now()
	a.passEnd = make(chan struct{})
	a.mu.Unlock()
}

// endPass publishes the pass's status and lets waiting readers go.
func (a *agent) endPass(r status.Report) {
	r.Encapsulation = a.opts.Encapsulation.String()
	r.Settings = &status.Settings{
		Iface:      a.opts.Iface,
		Pool:       prefixString(a.opts.Pool),
		Masquerade: a.opts.Masquerade,
		GossipPort: a.opts.Port,
		LedgerPort: a.opts.LedgerPort,
		PodMTU:     a.opts.MTU,
	}
	a.mu.Lock()
	a.status = r
	close(a.passEnd)
	a.passEnd = nil
	a.mu.Unlock()
}

// stuck reports whether the loop has not completed a pass for much longer than
// the resync interval, e.g. blocked in a kernel call: liveness then fails and
// the supervisor restarts the agent.
func (a *agent) stuck() (time.Duration, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	since := time.Since(a.lastPass)
	return since, since > 3*a.opts.ResyncInterval+10*time.Second
}

// How long a reader waits for a running pass: a kernel call that hangs must
// not hang `grapevine status` with it, nor outlast a readiness probe's
// timeout (3 s in the manifest).
const (
	statusWait    = 5 * time.Second
	readinessWait = time.Second
)

// waitForPass returns once no pass is half done. A pass changes the kernel
// and the hand-off files before it knows its outcome, so a reader that has
// seen a route appear (ip route, node.json) and then asks for the status must
// not get the previous pass's: it waits for the running pass to publish, up
// to limit or the end of ctx, then takes the last published status.
func (a *agent) waitForPass(ctx context.Context, limit time.Duration) {
	a.mu.Lock()
	passEnd := a.passEnd
	a.mu.Unlock()
	if passEnd == nil {
		return
	}
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case <-passEnd:
	case <-timer.C:
	case <-ctx.Done():
	}
}

// settledStatus is the last published status once no pass is half done.
func (a *agent) settledStatus(ctx context.Context, limit time.Duration) status.Report {
	a.waitForPass(ctx, limit)
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status
}
