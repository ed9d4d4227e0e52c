package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/doctor"
	"github.com/grapevine-net/grapevine/internal/hostclock"
	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/meshtest"
	"github.com/grapevine-net/grapevine/node"
	"github.com/grapevine-net/grapevine/node/nodestate"
	"github.com/grapevine-net/grapevine/node/probe"
	"github.com/grapevine-net/grapevine/status"
)

// testHost is one agent of an in-process cluster: the real agent loop and
// mesh over an in-memory network, with a fake kernel.
type testHost struct {
	name   string
	addr   netip.Addr
	dir    string
	kernel *node.FakeKernel
	agent  *agent
	cancel context.CancelFunc
	done   chan error
	logs   *testWriter
	// kernelEvents is the agent's watch of the kernel: see kernelChanged.
	kernelEvents chan struct{}
}

// kernelChanged tells the agent the kernel changed, as the netlink watch
// does after an operator's change.
func (h *testHost) kernelChanged() {
	select {
	case h.kernelEvents <- struct{}{}:
	default:
	}
}

func startTestHost(t *testing.T, network *meshtest.Network, dir, name string, i int, kernel *node.FakeKernel, join ...string) *testHost {
	t.Helper()
	return startHost(t, network, nil, nil, nil, dir, name, i, kernel, join...)
}

// startProbingTestHost starts a test host whose data-path probes go over
// dp; nil: no probes.
func startProbingTestHost(t *testing.T, network *meshtest.Network, dp *fakeDataPath, dir, name string, i int, kernel *node.FakeKernel, join ...string) *testHost {
	t.Helper()
	return startHost(t, network, dp, nil, nil, dir, name, i, kernel, join...)
}

// startWrappedHost is startTestHost with the agent programming wrap(kernel)
// instead of the fake kernel itself.
func startWrappedHost(t *testing.T, network *meshtest.Network, dir, name string, i int, kernel *node.FakeKernel,
	wrap func(node.Kernel) node.Kernel, join ...string) *testHost {
	t.Helper()
	return startHost(t, network, nil, wrap, nil, dir, name, i, kernel, join...)
}

// startHost starts a test host: probes over dp (nil: none), the agent
// programming wrap(kernel) (nil: the fake kernel itself), with
// --join-kubernetes against kube (nil: without).
func startHost(t *testing.T, network *meshtest.Network, dp *fakeDataPath, wrap func(node.Kernel) node.Kernel, kube *fakeKube,
	dir, name string, i int, kernel *node.FakeKernel, join ...string) *testHost {
	t.Helper()
	return startHostWith(t, network, dp, wrap, kube, nil, dir, name, i, kernel, join...)
}

// startHostWith is startHost with the agent's options changed by mod (nil:
// as startHost has them).
func startHostWith(t *testing.T, network *meshtest.Network, dp *fakeDataPath, wrap func(node.Kernel) node.Kernel, kube *fakeKube,
	mod func(*agentOptions), dir, name string, i int, kernel *node.FakeKernel, join ...string) *testHost {
	t.Helper()
	h := &testHost{name: name, addr: meshtest.HostAddr(i), dir: filepath.Join(dir, name), kernel: kernel, kernelEvents: make(chan struct{}, 1)}
	if h.kernel == nil {
		h.kernel = node.NewFakeKernel()
		h.kernel.AddLink("em1", netip.PrefixFrom(h.addr, 8))
	}
	o := agentOptions{
		NodeName:       name,
		Iface:          "em1",
		HostIP:         h.addr,
		Port:           meshtest.GossipPort,
		LedgerPort:     meshtest.LedgerPort,
		Voters:         3,
		Join:           join,
		Pool:           netip.MustParsePrefix("10.244.0.0/16"),
		BlockSize:      23,
		StateDir:       filepath.Join(h.dir, "state"),
		RunDir:         filepath.Join(h.dir, "run"),
		CNIConfDir:     filepath.Join(h.dir, "net.d"),
		Masquerade:     true,
		Lease:          time.Hour,
		MTU:            1500,
		ResyncInterval: 30 * time.Second,
	}
	o.JoinKubernetes = kube != nil
	if kube != nil && kube.agentLease != 0 {
		o.Lease = kube.agentLease
	}
	if mod != nil {
		mod(&o)
	}
	transport, err := network.NewTransport(netip.AddrPortFrom(h.addr, meshtest.GossipPort))
	if err != nil {
		t.Fatal(err)
	}
	h.logs = &testWriter{t: t}
	log := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelWarn})).With("node", name)
	cfg := o.meshConfig(log)
	cfg.Transport = transport
	cfg.Tune = meshtest.FastTimers
	cfg.LedgerNetwork = network.StreamHost(netip.AddrPortFrom(h.addr, meshtest.LedgerPort))
	cfg.TuneLedger = meshtest.FastLedger
	var k node.Kernel = h.kernel
	if wrap != nil {
		k = wrap(k)
	}
	host := hostSide{kernel: k, watchRoutes: func(context.Context) <-chan struct{} { return h.kernelEvents }, diagnose: fakeDiagnoser}
	if kube != nil {
		host.kubeAPI = kube
	}
	if dp != nil {
		o.ProbeInterval, o.ProbeMisses = 20*time.Millisecond, 3
		host.listenProbe = dp.listen
	}
	h.agent, err = newAgent(o, cfg, host, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- h.agent.run(ctx) }()
	t.Cleanup(func() { h.stop(t) })
	return h
}

// stop ends the agent as SIGTERM does and waits for it.
func (h *testHost) stop(t *testing.T) {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.done:
		if err != nil {
			t.Errorf("%s: agent returned %v", h.name, err)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("%s: agent did not stop", h.name)
	}
}

// peerRoutes is the fake kernel's unicast routes: block -> next hop.
func (h *testHost) peerRoutes() map[netip.Prefix]netip.Addr {
	routes := map[netip.Prefix]netip.Addr{}
	for _, r := range h.kernel.Table() {
		if r.Unicast() && r.Protocol == node.RouteProtocol {
			routes[r.Dst] = r.Via
		}
	}
	return routes
}

// testWriter passes an agent's log lines to the test log and keeps them.
type testWriter struct {
	t     *testing.T
	mu    sync.Mutex
	lines []string
}

func (w *testWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	w.t.Log(line)
	w.mu.Lock()
	w.lines = append(w.lines, line)
	w.mu.Unlock()
	return len(p), nil
}

// count returns how many lines contain s.
func (w *testWriter) count(s string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, l := range w.lines {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // generous: a loaded 2-core machine
	defer cancel()
	if err := poll.Until(ctx, what, 20*time.Millisecond, cond); err != nil {
		t.Fatal(err)
	}
}

// routesTo checks that every host routes every other host's block via it.
func routesTo(hosts ...*testHost) error {
	for _, h := range hosts {
		for _, peer := range hosts {
			if peer == h {
				continue
			}
			st, err := nodestate.Read(peer.agent.opts.RunDir)
			if err != nil {
				return fmt.Errorf("%s: %w", peer.name, err)
			}
			if via, ok := h.peerRoutes()[st.Block]; !ok || via != peer.addr {
				return fmt.Errorf("%s has no route %s via %s: %v", h.name, st.Block, peer.addr, h.peerRoutes())
			}
		}
	}
	return nil
}

// TestAgentLoop runs two real agent loops over an in-memory network with
// fake kernels: they route each other's blocks and hand off to the plugin;
// a graceful stop withdraws the route on the peer at once (its probes are
// off, so nothing but gossip can keep it) but leaves the stopped host's own
// routes in place; a restart gets the same block back.
func TestAgentLoop(t *testing.T) {
	dir := t.TempDir()
	network := meshtest.NewNetwork()
	h1 := startTestHost(t, network, dir, "h1", 1, nil)
	h2 := startTestHost(t, network, dir, "h2", 2, nil, h1.addr.String())

	waitFor(t, "both hosts to route each other", func() error { return routesTo(h1, h2) })
	st2, err := nodestate.Read(h2.agent.opts.RunDir)
	if err != nil {
		t.Fatal(err)
	}
	// node.json is written first and the conflist after it, so that a
	// runtime that sees the conflist finds node.json: wait for the second.
	waitFor(t, "h2's conflist", func() error {
		_, err := os.Stat(filepath.Join(h2.agent.opts.CNIConfDir, node.ConflistName))
		return err
	})

	body, err := callAgent(t.Context(), h1.agent.opts.RunDir, http.MethodGet, "/status")
	if err != nil {
		t.Fatal(err)
	}
	var st status.Report
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatal(err)
	}
	if !st.Ready || len(st.Members) != 1 || st.Members[0].Route != node.PeerProgrammed || st.Members[0].Block != st2.Block.String() {
		t.Fatalf("h1 status = %s", body)
	}
	// h1 founded the ledger (no --join); h2 joined it.
	if st.Ledger.ClusterID == "" || st.Ledger.Leader != "h1" || st.Ledger.LastIndex == 0 || len(st.Ledger.Voters) == 0 {
		t.Fatalf("h1 ledger status = %+v", st.Ledger)
	}
	checkHTTP(t, h1.agent.metricsHandler(), "/readyz", http.StatusOK, "ready")
	checkHTTP(t, h1.agent.metricsHandler(), "/healthz", http.StatusOK, "ok")
	checkHTTP(t, h1.agent.metricsHandler(), "/metrics", http.StatusOK, "grapevine_node_reconcile_seconds")
	checkHTTP(t, h1.agent.metricsHandler(), "/metrics", http.StatusOK, "grapevine_mesh_claims_total")
	_, err = callAgent(t.Context(), h1.agent.opts.RunDir, http.MethodPost, "/release?node=h2")
	if err == nil {
		t.Error("release of a live member succeeded")
	} else if msg := err.Error(); !strings.HasPrefix(msg, "cannot release the block of h2: node h2 is alive") ||
		strings.Contains(msg, "mesh:") || strings.Contains(msg, "agent:") {
		t.Errorf("release of a live member: %q, want one sentence saying why", msg)
	}
	if n := h1.logs.count("gossip is not encrypted"); n != 1 {
		t.Errorf("h1 warned %d times that gossip is not encrypted, want once", n)
	}

	kept := h2.peerRoutes()
	h2.stop(t)
	waitFor(t, "h1 to withdraw h2's block", func() error {
		if _, ok := h1.peerRoutes()[st2.Block]; ok {
			return errors.New("still routed")
		}
		return nil
	})
	if got := h2.peerRoutes(); len(got) != len(kept) {
		t.Fatalf("stopping h2 changed its routes: before %v, after %v", kept, got)
	}
	if _, err := nodestate.Read(h2.agent.opts.RunDir); err != nil {
		t.Fatalf("stopping h2 removed its hand-off: %v", err)
	}

	h2 = startTestHost(t, network, dir, "h2", 2, h2.kernel, h1.addr.String())
	waitFor(t, "the routes to return after the restart", func() error { return routesTo(h1, h2) })
	again, err := nodestate.Read(h2.agent.opts.RunDir)
	if err != nil {
		t.Fatal(err)
	}
	if again.Block != st2.Block {
		t.Fatalf("h2 restarted with block %s, had %s", again.Block, st2.Block)
	}
}

func checkHTTP(t *testing.T, h http.Handler, path string, code int, contains string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	if rec.Code != code || !strings.Contains(rec.Body.String(), contains) {
		t.Errorf("GET %s = %d %.200q, want %d containing %q", path, rec.Code, rec.Body.String(), code, contains)
	}
}

// stallingKernel holds up the pass that adds the first peer route right after
// the route is in the kernel, until release is closed.
type stallingKernel struct {
	node.Kernel
	added   chan struct{} // closed once the route is in
	release chan struct{}
	once    sync.Once
}

func (k *stallingKernel) AddRoute(r node.Route) error {
	err := k.Kernel.AddRoute(r)
	if err == nil && r.Unicast() {
		stalled := false
		k.once.Do(func() { close(k.added); stalled = true })
		if stalled {
			<-k.release
		}
	}
	return err
}

// TestStatusAfterKernel: a reader who sees a pass's route in the kernel and
// then asks for the status gets that pass's outcome, not the previous pass's
// ("joining", route "pending"). The pass is held right after the route is
// written; a status request made meanwhile waits for the pass to publish.
func TestStatusAfterKernel(t *testing.T) {
	dir := t.TempDir()
	network := meshtest.NewNetwork()
	stall := &stallingKernel{added: make(chan struct{}), release: make(chan struct{})}
	released := sync.OnceFunc(func() { close(stall.release) })
	h1 := startWrappedHost(t, network, dir, "h1", 1, nil, func(k node.Kernel) node.Kernel {
		stall.Kernel = k
		return stall
	})
	startTestHost(t, network, dir, "h2", 2, nil, h1.addr.String())
	t.Cleanup(released) // registered last, so it runs before the agents are stopped

	select {
	case <-stall.added:
	case <-time.After(time.Minute):
		t.Fatal("h1 never routed h2")
	}
	if len(h1.peerRoutes()) != 1 {
		t.Fatalf("h1's kernel holds %v, want h2's route", h1.peerRoutes())
	}
	type answer struct {
		body []byte
		err  error
	}
	got := make(chan answer, 1)
	go func() {
		body, err := callAgent(context.Background(), h1.agent.opts.RunDir, http.MethodGet, "/status")
		got <- answer{body, err}
	}()
	// Without the wait the request answers at once with the previous
	// pass's status; give it a second to do so before letting the pass on.
	// (A slow machine can only hide the bug here, never fail a fixed agent.)
	select {
	case a := <-got:
		t.Fatalf("status answered while the pass was half done: %s (%v)", a.body, a.err)
	case <-time.After(time.Second):
	}
	released()
	a := <-got
	if a.err != nil {
		t.Fatal(a.err)
	}
	var st status.Report
	if err := json.Unmarshal(a.body, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Members) != 1 || st.Members[0].Route != node.PeerProgrammed {
		t.Fatalf("after the pass that programmed h2's route, h1's status = %s", a.body)
	}
}

// fakeDataPath stands for the hosts' kernels answering echo requests: a
// host answers while it is marked up.
type fakeDataPath struct {
	mu sync.Mutex
	up map[netip.Addr]bool
}

func (dp *fakeDataPath) set(host netip.Addr, up bool) {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	if dp.up == nil {
		dp.up = map[netip.Addr]bool{}
	}
	dp.up[host] = up
}

func (dp *fakeDataPath) answers(host netip.Addr) bool {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	return dp.up[host]
}

func (dp *fakeDataPath) listen() (probe.Conn, error) {
	return &fakeProbeConn{dp: dp, replies: make(chan fakeReply, 64), closed: make(chan struct{})}, nil
}

type fakeReply struct {
	from    netip.Addr
	id, seq uint16
}

type fakeProbeConn struct {
	dp      *fakeDataPath
	replies chan fakeReply
	closed  chan struct{}
	once    sync.Once
}

func (c *fakeProbeConn) WriteEcho(dst netip.Addr, id, seq uint16) error {
	if c.dp.answers(dst) {
		select {
		case c.replies <- fakeReply{dst, id, seq}:
		default:
		}
	}
	return nil
}

func (c *fakeProbeConn) ReadEcho() (netip.Addr, uint16, uint16, error) {
	select {
	case r := <-c.replies:
		return r.from, r.id, r.seq, nil
	case <-c.closed:
		return netip.Addr{}, 0, 0, probe.ErrClosed
	}
}

func (c *fakeProbeConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// TestAgentLoopDataPath: with gossip to h2 cut but its host answering, h1
// calls h2 dead and still routes its block, on the data path; once h2's
// host stops answering too, the route goes, and its answering again does not
// bring the route back: only gossip does.
func TestAgentLoopDataPath(t *testing.T) {
	dir := t.TempDir()
	network := meshtest.NewNetwork()
	dp := &fakeDataPath{}
	dp.set(meshtest.HostAddr(1), true)
	dp.set(meshtest.HostAddr(2), true)
	h1 := startProbingTestHost(t, network, dp, dir, "h1", 1, nil)
	h2 := startProbingTestHost(t, network, dp, dir, "h2", 2, nil, h1.addr.String())
	waitFor(t, "both hosts to route each other", func() error { return routesTo(h1, h2) })
	st2, err := nodestate.Read(h2.agent.opts.RunDir)
	if err != nil {
		t.Fatal(err)
	}
	member2 := func(cond func(status.Member) error) func() error {
		return func() error {
			st := h1.agent.freshStatus()
			if len(st.Members) != 1 {
				return fmt.Errorf("members %+v", st.Members)
			}
			return cond(st.Members[0])
		}
	}
	waitFor(t, "h1 to keep h2's route on both signals", member2(func(m status.Member) error {
		if !slices.Equal(m.KeptBy, []string{signalGossip, signalDataPath}) || m.DataPathSeen.IsZero() || m.GossipSeen.IsZero() {
			return fmt.Errorf("h2: %+v", m)
		}
		return nil
	}))

	network.Partition([]netip.Addr{h1.addr}, []netip.Addr{h2.addr})
	waitFor(t, "h1 to call h2 dead and keep its route on the data path", member2(func(m status.Member) error {
		if m.State != "dead" || !slices.Equal(m.KeptBy, []string{signalDataPath}) || m.Route != node.PeerProgrammed {
			return fmt.Errorf("h2: %+v", m)
		}
		return nil
	}))
	if via, ok := h1.peerRoutes()[st2.Block]; !ok || via != h2.addr {
		t.Fatalf("h1 lost the route to dead h2 with its host answering: %v", h1.peerRoutes())
	}
	checkHTTP(t, h1.agent.metricsHandler(), "/metrics", http.StatusOK, fmt.Sprintf(`grapevine_peer_route_signal{id=%q,peer="h2",signal="data_path"} 1`, h2.agent.mesh.View().ID))
	checkHTTP(t, h1.agent.metricsHandler(), "/metrics", http.StatusOK, fmt.Sprintf(`grapevine_peer_route_signal{id=%q,peer="h2",signal="gossip"} 0`, h2.agent.mesh.View().ID))

	dp.set(h2.addr, false)
	waitFor(t, "h1 to withdraw h2's route", func() error {
		if _, ok := h1.peerRoutes()[st2.Block]; ok {
			return errors.New("still routed")
		}
		return nil
	})

	// The data path alone does not bring a withdrawn route back.
	dp.set(h2.addr, true)
	time.Sleep(200 * time.Millisecond)
	if _, ok := h1.peerRoutes()[st2.Block]; ok {
		t.Fatal("the data path alone brought back a withdrawn route")
	}
}

// TestAgentLoopRestartKeepsRoute: a peer's agent stops gracefully (SIGTERM:
// a restart, a rolling update) while its host keeps answering. The other
// host keeps its route, says why in the status, and routes it on gossip
// again once it is back. Stopped again and with its host gone too, the
// route is withdrawn after the probe misses.
func TestAgentLoopRestartKeepsRoute(t *testing.T) {
	dir := t.TempDir()
	network := meshtest.NewNetwork()
	dp := &fakeDataPath{}
	dp.set(meshtest.HostAddr(1), true)
	dp.set(meshtest.HostAddr(2), true)
	h1 := startProbingTestHost(t, network, dp, dir, "h1", 1, nil)
	h2 := startProbingTestHost(t, network, dp, dir, "h2", 2, nil, h1.addr.String())
	waitFor(t, "both hosts to route each other", func() error { return routesTo(h1, h2) })
	st2, err := nodestate.Read(h2.agent.opts.RunDir)
	if err != nil {
		t.Fatal(err)
	}
	member2 := func(what string, cond func(status.Member) bool) {
		t.Helper()
		waitFor(t, what, func() error {
			st := h1.agent.freshStatus()
			if len(st.Members) != 1 || !cond(st.Members[0]) {
				return fmt.Errorf("members %+v", st.Members)
			}
			return nil
		})
	}
	routed := func() bool {
		via, ok := h1.peerRoutes()[st2.Block]
		return ok && via == h2.addr
	}
	member2("h1 to route h2 on both signals", func(m status.Member) bool {
		return slices.Equal(m.KeptBy, []string{signalGossip, signalDataPath})
	})

	h2.stop(t)
	member2("h1 to see h2 left and keep its route on the data path", func(m status.Member) bool {
		return m.State == "left" && m.RouteReason == "left; kept by data path" && m.Route == node.PeerProgrammed &&
			slices.Equal(m.KeptBy, []string{signalDataPath}) && m.Block == st2.Block.String()
	})
	// Many probe intervals later the route is still there.
	time.Sleep(300 * time.Millisecond)
	if !routed() {
		t.Fatalf("h1 withdrew the route of h2, which left with its host answering: %v", h1.peerRoutes())
	}
	checkHTTP(t, h1.agent.metricsHandler(), "/metrics", http.StatusOK, fmt.Sprintf(`grapevine_peer_route_signal{id=%q,peer="h2",signal="data_path"} 1`, h2.agent.mesh.View().ID))

	h2 = startProbingTestHost(t, network, dp, dir, "h2", 2, h2.kernel, h1.addr.String())
	// The route never goes while h2 comes back: its new incarnation
	// advertises its saved block from its first gossip message.
	member2("h1 to route h2 on gossip again", func(m status.Member) bool {
		if !routed() {
			t.Fatalf("h1 withdrew h2's route while h2 came back (h2 %s, %s): %v", m.State, m.RouteReason, h1.peerRoutes())
		}
		return m.State == "alive" && m.RouteReason == "" && slices.Equal(m.KeptBy, []string{signalGossip, signalDataPath})
	})

	// Stopped, then its host goes: withdrawn once the probes miss.
	h2.stop(t)
	member2("h1 to see h2 left", func(m status.Member) bool { return m.State == "left" })
	dp.set(h2.addr, false)
	member2("h1 to withdraw h2's route and say why", func(m status.Member) bool {
		return m.Route == status.RouteWithdrawn && m.RouteReason == "left; withdrawn: host not answering" && m.Block == st2.Block.String()
	})
	if routed() {
		t.Fatalf("h1 still routes h2, whose agent left and host went: %v", h1.peerRoutes())
	}
}

// TestStaleConflistWithdrawnUntilBlockHeld starts an agent whose disk holds a
// conflist but no node.json, as after a reboot (/run is emptied, /etc/cni is
// not): the conflist goes while the agent waits for its seed, and comes back,
// after node.json, once it holds a block.
func TestStaleConflistWithdrawnUntilBlockHeld(t *testing.T) {
	dir := t.TempDir()
	network := meshtest.NewNetwork()
	stale := filepath.Join(dir, "h2", "net.d", node.ConflistName)
	if err := os.MkdirAll(filepath.Dir(stale), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stale, []byte(`{"cniVersion": "1.1.0", "name": "grapevine", "plugins": []}`), 0o644); err != nil {
		t.Fatal(err)
	}
	h2 := startTestHost(t, network, dir, "h2", 2, nil, meshtest.HostAddr(1).String())
	waitFor(t, "the stale conflist to be removed", func() error {
		if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("conflist still there: %v", err)
		}
		return nil
	})
	if st := h2.agent.settledStatus(t.Context(), statusWait); st.Ready {
		t.Fatalf("h2 ready without its seed: %+v", st)
	}

	h1 := startTestHost(t, network, dir, "h1", 1, nil)
	waitFor(t, "both hosts to route each other", func() error { return routesTo(h1, h2) })
	waitFor(t, "h2's conflist", func() error {
		data, err := os.ReadFile(stale)
		if err != nil {
			return err
		}
		if !strings.Contains(string(data), `"cniVersion": "1.0.0"`) {
			return fmt.Errorf("conflist is %s", data)
		}
		return nil
	})
	if _, err := nodestate.Read(h2.agent.opts.RunDir); err != nil {
		t.Fatalf("conflist written without node.json: %v", err)
	}
}

// handoffPaths is h's node.json and conflist.
func (h *testHost) handoffPaths() []string {
	return []string{nodestate.Path(h.agent.opts.RunDir), filepath.Join(h.agent.opts.CNIConfDir, node.ConflistName)}
}

// watchHandoff looks at paths every few milliseconds until the returned
// stop is called, which reports the paths seen missing.
func watchHandoff(paths []string) (stop func() []string) {
	done := make(chan struct{})
	result := make(chan []string, 1)
	go func() {
		missing := map[string]bool{}
		for {
			for _, p := range paths {
				if _, err := os.Stat(p); err != nil {
					missing[p] = true
				}
			}
			select {
			case <-done:
				result <- slices.Sorted(maps.Keys(missing))
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	return func() []string { close(done); return <-result }
}

// sameFiles checks that each path is still the file it was (never removed and
// written again: the hand-off files are replaced by rename).
func sameFiles(t *testing.T, paths []string, before []os.FileInfo) {
	t.Helper()
	for i, p := range paths {
		fi, err := os.Stat(p)
		if err != nil || !os.SameFile(fi, before[i]) {
			t.Errorf("%s was replaced or removed across the restart (%v)", p, err)
		}
	}
}

// TestRestartHandoff: an agent restarted within the restart rule, cut off
// from the ledger, keeps the previous run's node.json and conflist
// throughout. Restarted when the rule is refused (the lease saved in
// block.json has ended), it withdraws both before the
// ledger answers, since the block may be another node's by now, and writes
// them again with the ledger's block once it is confirmed.
func TestRestartHandoff(t *testing.T) {
	dir := t.TempDir()
	network := meshtest.NewNetwork()
	h1 := startTestHost(t, network, dir, "h1", 1, nil)
	h2 := startTestHost(t, network, dir, "h2", 2, nil, h1.addr.String())
	waitFor(t, "both hosts to route each other", func() error { return routesTo(h1, h2) })
	paths := h2.handoffPaths()
	waitFor(t, "h2's conflist", func() error { _, err := os.Stat(paths[1]); return err })
	st2, err := nodestate.Read(h2.agent.opts.RunDir)
	if err != nil {
		t.Fatal(err)
	}
	restarted := func(what string) *testHost {
		t.Helper()
		h2.stop(t)
		network.Partition([]netip.Addr{h2.addr}, []netip.Addr{h1.addr})
		h := startTestHost(t, network, dir, "h2", 2, h2.kernel, h1.addr.String())
		waitFor(t, what, func() error {
			if v := h.agent.mesh.View(); v.Restart == mesh.RestartUndecided {
				return errors.New("the mesh has not applied the restart rule yet")
			}
			return nil
		})
		return h
	}

	// Within the rule: kept while the ledger is out of reach, and after.
	var before []os.FileInfo
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		before = append(before, fi)
	}
	stop := watchHandoff(paths)
	h2 = restarted("h2 to apply the restart rule")
	if v := h2.agent.mesh.View(); v.Restart != mesh.RestartRestored || !v.Ready || v.Block != st2.Block {
		t.Fatalf("h2 restarted within the rule: %s (%s), block %s ready %v", v.Restart, v.RestartReason, v.Block, v.Ready)
	}
	time.Sleep(time.Second) // many passes of the loop without the ledger
	network.Heal()
	waitFor(t, "both hosts to route each other after the restart", func() error { return routesTo(h1, h2) })
	if missing := stop(); len(missing) > 0 {
		t.Errorf("restart within the rule: %v went missing", missing)
	}
	sameFiles(t, paths, before)

	// Refused: the lease saved in block.json ended a minute ago.
	h2.stop(t)
	endSavedLease(t, h2.agent.opts.StateDir, time.Minute)
	h2 = restarted("h2 to apply the restart rule to its ended lease")
	if v := h2.agent.mesh.View(); v.Restart != mesh.RestartRefused || !strings.Contains(v.RestartReason, "its lease ended") {
		t.Fatalf("h2 restarted with an aged block: %s (%q)", v.Restart, v.RestartReason)
	}
	waitFor(t, "h2 to withdraw the previous run's hand-off", func() error {
		for _, p := range paths {
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("%s: %v", p, err)
			}
		}
		return nil
	})
	if v := h2.agent.mesh.View(); v.Ready {
		t.Fatalf("h2 ready with %s while cut off from the ledger", v.Block)
	}
	stop = watchHandoff(paths)
	time.Sleep(time.Second)
	if missing := stop(); len(missing) != len(paths) {
		t.Fatalf("the hand-off came back before the ledger answered: only %v stayed missing", missing)
	}
	if h2.logs.count("withdrew the previous run's hand-off") == 0 {
		t.Error("h2 did not say why it withdrew the hand-off")
	}
	network.Heal()
	waitFor(t, "both hosts to route each other once the ledger answers", func() error { return routesTo(h1, h2) })
	waitFor(t, "h2's conflist again", func() error { _, err := os.Stat(paths[1]); return err })
	v := h2.agent.mesh.View()
	again, err := nodestate.Read(h2.agent.opts.RunDir)
	if err != nil || !v.Ready || again.Block != v.Block {
		t.Fatalf("after the ledger answered: node.json %+v (%v), h2's block %s ready %v", again, err, v.Block, v.Ready)
	}
}

// endSavedLease makes the lease saved in block.json end ago before now.
func endSavedLease(t *testing.T, stateDir string, ago time.Duration) {
	t.Helper()
	path := filepath.Join(stateDir, mesh.BlockFileName)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var saved map[string]any
	if err := json.Unmarshal(data, &saved); err != nil {
		t.Fatal(err)
	}
	now, err := hostclock.Now()
	if err != nil {
		t.Fatal(err)
	}
	saved["lease"] = now.Add(-ago)
	if data, err = json.Marshal(saved); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// fakeDiagnoser is doctor run against the status alone: a warning
// naming the node the status is of, failed instead while it is not ready.
func fakeDiagnoser(_ context.Context, st status.Report) []doctor.Finding {
	f := doctor.Finding{Check: doctor.CheckAgent, Severity: doctor.Warn, Subject: st.Node, Seen: "ready"}
	if !st.Ready {
		f.Severity, f.Seen = doctor.Fail, "not ready: "+st.Reason
	}
	return []doctor.Finding{f}
}

// TestDoctorAll: h1's agent gathers its own doctor findings and h2's, the
// latter over the ledger's connection, each run against that host's own
// status; h1 first.
func TestDoctorAll(t *testing.T) {
	dir := t.TempDir()
	network := meshtest.NewNetwork()
	h1 := startTestHost(t, network, dir, "h1", 1, nil)
	h2 := startTestHost(t, network, dir, "h2", 2, nil, h1.addr.String())
	waitFor(t, "both hosts to route each other", func() error { return routesTo(h1, h2) })
	var all []doctor.Summary
	waitFor(t, "doctor --all to pass on both hosts", func() error {
		all = h1.agent.doctorAll(t.Context())
		if len(all) != 2 || all[0].Host != "h1" || all[1].Host != "h2" {
			return fmt.Errorf("summaries %+v, want h1's and h2's", all)
		}
		for _, s := range all {
			if s.Err != "" || s.Warnings != 1 || s.Failed != 0 {
				return fmt.Errorf("%s: %+v", s.Host, s)
			}
		}
		return nil
	})
	// Each ran against its own host's status: the finding of the agent
	// check names the node.
	for _, s := range all {
		if len(s.Findings) != 1 || s.Findings[0].Subject != s.Host {
			t.Errorf("%s's findings %+v, want one about %s", s.Host, s.Findings, s.Host)
		}
	}
	h2.stop(t)
	waitFor(t, "h2 to leave h1's doctor --all", func() error {
		if all := h1.agent.doctorAll(t.Context()); len(all) != 1 {
			return fmt.Errorf("summaries %+v, want h1's alone", all)
		}
		return nil
	})
}

// TestForwardingEnabledLog: forwarding found off at the agent's first pass
// is the host's starting state (info); found off later, something switched
// it off under the agent (a warning naming the sysctl).
func TestForwardingEnabledLog(t *testing.T) {
	for _, tc := range []struct {
		sysctl    string
		firstPass bool
		level     slog.Level
		msg       string
	}{
		{"net.ipv4.ip_forward", true, slog.LevelInfo, "net.ipv4.ip_forward was 0 when the agent started; set it to 1"},
		{"net.ipv4.ip_forward", false, slog.LevelWarn, "net.ipv4.ip_forward was 0; set it to 1: something on this host switches it off"},
		{"net.ipv6.conf.all.forwarding", false, slog.LevelWarn, "net.ipv6.conf.all.forwarding was 0; set it to 1: something on this host switches it off"},
	} {
		level, msg := forwardingEnabledLog(tc.sysctl, tc.firstPass)
		if level != tc.level || msg != tc.msg {
			t.Errorf("forwardingEnabledLog(%s, first pass %v) = %v %q, want %v %q", tc.sysctl, tc.firstPass, level, msg, tc.level, tc.msg)
		}
	}
}

// TestAgentWarnsWhenForwardingSwitchedOff: the agent turns IPv4 forwarding
// back on when something on the host switched it off, and says so once at
// warn level.
func TestAgentWarnsWhenForwardingSwitchedOff(t *testing.T) {
	const warning = "net.ipv4.ip_forward was 0; set it to 1: something on this host switches it off"
	h1 := startTestHost(t, meshtest.NewNetwork(), t.TempDir(), "h1", 1, nil)
	waitFor(t, "h1 to turn forwarding on", func() error {
		if !h1.kernel.Forwarding(node.IPv4) {
			return errors.New("IPv4 forwarding is off")
		}
		return nil
	})
	if n := h1.logs.count(warning); n != 0 {
		t.Fatalf("h1 warned %d times that something switches forwarding off, before anything did", n)
	}
	h1.kernel.SwitchOffForwarding(node.IPv4)
	h1.kernelChanged()
	waitFor(t, "h1 to turn forwarding back on and warn", func() error {
		if n := h1.logs.count(warning); !h1.kernel.Forwarding(node.IPv4) || n != 1 {
			return fmt.Errorf("IPv4 forwarding on %v, warned %d times; want on, once", h1.kernel.Forwarding(node.IPv4), n)
		}
		return nil
	})
}
