package bench

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/ledger"
	"github.com/grapevine-net/grapevine/mesh/meshtest"
	"github.com/grapevine-net/grapevine/node"
)

// MeshConfig configures the in-process cluster measurement.
type MeshConfig struct {
	Nodes int
	// Dilation stretches every protocol timer of the simulated nodes, so
	// that a large cluster in one process keeps up with its timers (see
	// meshtest.Dilation; zero: none). Steady, Drain and JoinTimeout are
	// simulated time: they last Dilation times longer on the wall clock.
	Dilation meshtest.Dilation
	// Steady is the window over which steady traffic is counted.
	Steady time.Duration
	// Timeout bounds the wait for convergence in wall time; a cluster that
	// has not converged by then is reported as such, with how far it got.
	Timeout time.Duration
	// Drain is the pause between convergence and the steady window, for the
	// join storm's retransmissions to die down (zero: 5 s).
	Drain time.Duration
	// JoinTimeout bounds the wait for one more node to be seen (zero: 30 s).
	JoinTimeout time.Duration
	Logger      *slog.Logger
	// Converged, if set, is called once the cluster has converged (or the
	// deadline passed), with every node still running: where a heap
	// profile shows what each simulated node holds.
	Converged func()
}

func (c MeshConfig) drain() time.Duration { return cmp.Or(c.Drain, 5*time.Second) }

func (c MeshConfig) joinTimeout() time.Duration { return cmp.Or(c.JoinTimeout, 30*time.Second) }

// id is the row id for measure letter of this cluster size: 5a-256.
func (c MeshConfig) id(letter string) string { return fmt.Sprintf("5%s-%d", letter, c.Nodes) }

// meshSeeds is how many of the first nodes every node is told to join, as
// an operator would list a few seeds.
const meshSeeds = 3

// joinSeen is the share of the nodes that must see a joining node alive.
const joinSeen = 0.99

// lagTick is how often the lag monitor asks to be woken.
const lagTick = 10 * time.Millisecond

// MeasureMesh starts Nodes agents (a mesh node reconciling a fake kernel)
// at once in one process, on an in-memory network, each with an empty state
// directory, the agent's timers (memberlist's LAN defaults, the ledger's
// raft timers) stretched by Dilation, and encryption. It times how long
// until every node holds a unique block and sees every other node alive
// with its block, counting the messages and bytes each node sent until
// then; then, after a drain, the traffic of every node and the raft RPCs of
// the ledger's leader over a steady window; then one more node joins, and
// it times how long until 99 % of the nodes see it alive. Times are
// simulated (wall time over Dilation); counts do not depend on how busy
// the machine is as long as the process keeps up with its timers, which
// the rows say with the scheduler's lag. A mesh that does not converge gets
// rows that say so, and no steady-state rate.
func MeasureMesh(ctx context.Context, cfg MeshConfig) (_ []Row, err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	k := cfg.Dilation
	wallStart := time.Now()
	dir, err := os.MkdirTemp("", NamePrefix+"-mesh-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	// Enough /23 blocks that claims rarely collide, outside the cluster's
	// host addresses (10.1.0.0/15).
	pool := netip.MustParsePrefix("10.128.0.0/9")
	key := make([]byte, 32)
	rand.Read(key)
	c := meshtest.NewCluster(dir, meshtest.Options{
		Pool:              pool,
		BlockBits:         mesh.DefaultBlockBits,
		ReconnectInterval: mesh.DefaultReconnectInterval,
		SecretKey:         key,
		// The agent's raft and autopilot timers, but a short log: the
		// agent keeps its raft log on disk, each node here keeps it in
		// memory, and every membership change is a configuration entry
		// listing every member, so a thousand nodes' logs held until the
		// agent's snapshot threshold took gigabytes (the configuration
		// entries' size grows with the cluster, their number too).
		TuneLedger: func(c *ledger.Config) { c.Tune = shortRaftLog },
		Dilation:   k,
	})

	var seeds []string
	for i := range meshSeeds {
		seeds = append(seeds, netip.AddrPortFrom(meshtest.HostAddr(i), meshtest.GossipPort).String())
	}
	lagCtx, stopLag := context.WithCancel(ctx)
	defer stopLag()
	lag := watchLag(lagCtx, lagTick)
	agentsCtx, stopAgents := context.WithCancel(ctx)
	var agents sync.WaitGroup
	defer func() {
		_, stopErr := bounded(context.WithoutCancel(ctx), time.Minute, func() error {
			stopAgents()
			agents.Wait()
			return c.Close()
		})
		err = errors.Join(err, stopErr)
	}()
	watch := &clusterWatch{}
	watch.others.Store(int64(cfg.Nodes - 1))
	var watches []*nodeWatch
	start := func(name string, found bool) error {
		n, err := c.Start(meshtest.Spec{Name: name, Join: seeds, Found: found})
		if err != nil {
			return err
		}
		w := &nodeWatch{}
		watches = append(watches, w)
		agents.Go(func() { routeLoop(agentsCtx, n, pool, k, watch, w) })
		return nil
	}
	t0 := time.Now()
	for i := range cfg.Nodes {
		// The first node founds the ledger, as the agent that creates the
		// ledger's record does with --join-kubernetes; every node starts at
		// once.
		if err := start(fmt.Sprintf("node-%04d", i), i == 0); err != nil {
			return nil, err
		}
	}
	waitErr, lastMissing := awaitConverged(ctx, c, watches, t0.Add(cfg.Timeout))
	converged := time.Since(t0)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	coldLag := lag.take()
	if cfg.Converged != nil {
		cfg.Converged()
	}
	// Counted at the transport: what the nodes sent until convergence (or
	// until the deadline), whatever the CPU made of the wall time.
	untilConverged := c.Traffic()
	log.Info("mesh", "nodes", cfg.Nodes, "dilation", k.Factor(), "after", converged.Round(time.Millisecond),
		"simulated", k.Simulated(converged).Round(time.Millisecond), "converged", waitErr == nil, "lag_p99", percentile(coldLag, 99))
	if waitErr != nil {
		rows := unconvergedRows(cfg, meshProgress(ctx, c), waitErr, untilConverged)
		return append(rows, wallRow(cfg, time.Since(wallStart), converged, "start until the deadline", coldLag)), nil
	}
	rows := convergedRows(cfg, converged, lastMissing, untilConverged, coldLag)

	// Steady state: after the join storm's retransmissions have drained.
	if err := poll.Sleep(ctx, k.Wall(cfg.drain())); err != nil {
		return nil, err
	}
	steady, err := measureSteady(ctx, c, cfg, lag)
	if err != nil {
		return nil, err
	}
	rows = append(rows, steady...)

	// One more node joins the converged cluster.
	joiner := fmt.Sprintf("node-%04d", cfg.Nodes)
	watch.joiner.Store(&joiner)
	lag.take()
	tj := time.Now()
	if err := start(joiner, false); err != nil {
		return nil, err
	}
	alive, routed := waitJoinSeen(ctx, watches[:cfg.Nodes], tj, k, cfg.joinTimeout())
	rows = append(rows, joinRow(cfg, alive, routed, lag.take()))
	log.Info("mesh join", "nodes", cfg.Nodes, "alive_99", alive, "routed_99", routed)
	return append(rows, wallRow(cfg, time.Since(wallStart), converged, "whole measurement", nil)), nil
}

// shortRaftLog compacts a simulated node's raft log after a few entries,
// at most a second (simulated) after they were written.
func shortRaftLog(c *raft.Config) {
	c.SnapshotThreshold = 32
	c.TrailingLogs = 32
	c.SnapshotInterval = time.Second
}

// awaitConverged waits until every route loop sees all other running nodes
// alive with a block and then until every View agrees (every view
// against every other, costly with a thousand nodes, so it runs only once
// the route loops agree). Each full check is bounded: in a CPU-starved
// cluster one View can wait minutes for its node's lock. It returns why
// the cluster has not converged by the deadline (nil: it has), and what
// the last full check found missing.
func awaitConverged(ctx context.Context, c *meshtest.Cluster, watches []*nodeWatch, deadline time.Time) (waitErr, lastMissing error) {
	for {
		waitErr = fmt.Errorf("%d of %d nodes do not see all others alive with a block", incomplete(watches), len(watches))
		if incomplete(watches) == 0 {
			notConverged, checkErr := bounded(ctx, max(time.Until(deadline), time.Second), func() error { return meshtest.Converged(c.Views()) })
			waitErr = cmp.Or(checkErr, notConverged)
			lastMissing = cmp.Or(notConverged, lastMissing)
		}
		if waitErr == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return waitErr, lastMissing
		}
		if poll.Sleep(ctx, 20*time.Millisecond) != nil {
			return ctx.Err(), lastMissing
		}
	}
}

// clusterWatch is what every route loop compares its view with.
type clusterWatch struct {
	// others is how many other nodes a complete view sees alive.
	others atomic.Int64
	// joiner names the node whose arrival the route loops time.
	joiner atomic.Pointer[string]
}

// nodeWatch is what one node's route loop last saw, read without taking
// the node's lock.
type nodeWatch struct {
	// complete: ready with a block, every other node alive with a block.
	complete atomic.Bool
	// joinerAlive and joinerRouted are when the joiner was first seen
	// alive, and alive with a block (Unix nanoseconds; zero: not yet).
	joinerAlive, joinerRouted atomic.Int64
}

func incomplete(ws []*nodeWatch) int {
	n := 0
	for _, w := range ws {
		if !w.complete.Load() {
			n++
		}
	}
	return n
}

// waitJoinSeen waits until joinSeen of the nodes have seen the joiner alive
// and alive with a block, or until timeout (simulated), and returns how
// long after t0 each share was reached in simulated time (negative: not
// reached).
func waitJoinSeen(ctx context.Context, ws []*nodeWatch, t0 time.Time, k meshtest.Dilation, timeout time.Duration) (alive, routed time.Duration) {
	need := int(math.Ceil(joinSeen * float64(len(ws))))
	reached := func(at func(*nodeWatch) int64) (time.Duration, bool) {
		var times []time.Duration
		for _, w := range ws {
			if ns := at(w); ns != 0 {
				times = append(times, k.Simulated(time.Unix(0, ns).Sub(t0)))
			}
		}
		if len(times) < need {
			return 0, false
		}
		slices.Sort(times)
		return times[need-1], true
	}
	alive, routed = -1, -1
	for deadline := t0.Add(k.Wall(timeout)); time.Now().Before(deadline) && ctx.Err() == nil; {
		a, aok := reached(func(w *nodeWatch) int64 { return w.joinerAlive.Load() })
		r, rok := reached(func(w *nodeWatch) int64 { return w.joinerRouted.Load() })
		if aok && rok {
			return a, r
		}
		if poll.Sleep(ctx, 20*time.Millisecond) != nil {
			break
		}
	}
	if a, ok := reached(func(w *nodeWatch) int64 { return w.joinerAlive.Load() }); ok {
		alive = a
	}
	if r, ok := reached(func(w *nodeWatch) int64 { return w.joinerRouted.Load() }); ok {
		routed = r
	}
	return alive, routed
}

// measureSteady counts what every node sends over the steady window, and
// the raft RPCs of the ledger's leader.
func measureSteady(ctx context.Context, c *meshtest.Cluster, cfg MeshConfig, lag *lagMonitor) ([]Row, error) {
	k := cfg.Dilation
	leader, err := bounded(ctx, time.Minute, func() *meshtest.Node { return ledgerLeader(c) })
	if err != nil {
		return nil, err
	}
	var rpcs0 map[string]float64
	if leader != nil {
		if rpcs0, err = leader.RaftRPCsSent(); err != nil {
			return nil, err
		}
	}
	sent0 := raftRPCsByNode(c)
	before, w0 := c.Traffic(), time.Now()
	lag.take()
	if err := poll.Sleep(ctx, k.Wall(cfg.Steady)); err != nil {
		return nil, err
	}
	after, wall := c.Traffic(), time.Since(w0)
	sent1 := raftRPCsByNode(c)
	steadyLag := lag.take()
	window := k.Simulated(wall)
	var rpcs1 map[string]float64
	if leader != nil {
		if rpcs1, err = leader.RaftRPCsSent(); err != nil {
			return nil, err
		}
	}
	still, err := bounded(ctx, time.Minute, func() *meshtest.Node { return ledgerLeader(c) })
	if err != nil {
		return nil, err
	}

	var gossipKB, ledgerKB, gossipMsgs, raftMsgs []float64
	for name, a := range after {
		b := before[name]
		gossipKB = append(gossipKB, float64(a.Bytes-b.Bytes)/1000/window.Seconds())
		ledgerKB = append(ledgerKB, float64(a.LedgerBytes-b.LedgerBytes)/1000/window.Seconds())
		gossipMsgs = append(gossipMsgs, float64(a.Messages-b.Messages)/window.Seconds())
		raftMsgs = append(raftMsgs, (sent1[name]-sent0[name])/window.Seconds())
	}
	allMsgs := make([]float64, len(gossipMsgs))
	for i := range allMsgs {
		allMsgs[i] = gossipMsgs[i] + raftMsgs[i]
	}
	lagNote := lagSentence(k, steadyLag)
	rows := []Row{
		{ID: cfg.id("b"), Measure: fmt.Sprintf("%d nodes: gossip per node, steady", cfg.Nodes), Unit: "kB/s", Samples: len(gossipKB),
			Target: Target{Kind: AtMost, Limit: 2},
			Note: fmt.Sprintf("mean over %v simulated (%v wall), per simulated second; memberlist's UDP and TCP payload after encryption, 1 kB = 1000 bytes; median %.3g, max %.3g; the ledger's streams add %.3g kB/s per node (mean; max %.3g, the leader); %s",
				window.Round(time.Second), wall.Round(time.Second), median(gossipKB), slices.Max(gossipKB), mean(ledgerKB), slices.Max(ledgerKB), lagNote)},
		{ID: cfg.id("f"), Measure: fmt.Sprintf("%d nodes: messages per node, steady", cfg.Nodes), Unit: "msgs/s", Value: mean(allMsgs), Samples: len(allMsgs),
			Note: fmt.Sprintf("mean per simulated second: gossip packets and streams (%.3g) plus raft RPCs sent (%.3g; the leader's %.4g); median %.3g",
				mean(gossipMsgs), mean(raftMsgs), slices.Max(raftMsgs), median(allMsgs))},
	}
	leaderRow := Row{ID: cfg.id("g"), Measure: fmt.Sprintf("%d nodes: ledger leader's raft RPCs, steady", cfg.Nodes), Unit: "/s", Samples: 1}
	switch {
	case leader == nil:
		leaderRow.NotMeasured, leaderRow.Note = "no leader", "no node named itself the ledger's leader at the start of the window"
	case still == nil || still.Name != leader.Name:
		leaderRow.NotMeasured, leaderRow.Note = "leader changed", fmt.Sprintf("the leadership moved from %s during the window", leader.Name)
	default:
		var total float64
		var kinds []string
		for _, kind := range slices.Sorted(maps.Keys(rpcs1)) {
			d := rpcs1[kind] - rpcs0[kind]
			total += d
			if d > 0 {
				kinds = append(kinds, fmt.Sprintf("%s %.4g", kind, d/window.Seconds()))
			}
		}
		leaderRow.Value = total / window.Seconds()
		leaderRow.Note = fmt.Sprintf("per simulated second, grapevine_ledger_raft_rpcs_sent_total of %s: %.3g per follower; %s",
			leader.Name, leaderRow.Value/float64(max(cfg.Nodes-1, 1)), strings.Join(kinds, ", "))
	}
	rows = append(rows, leaderRow)
	notConverged, checkErr := bounded(ctx, time.Minute, func() error { return meshtest.Converged(c.Views()) })
	if err := cmp.Or(checkErr, notConverged); err != nil {
		// Traffic of a mesh that is repairing itself is not the steady
		// state: no rate at all rather than the wrong one.
		why := fmt.Sprintf("the mesh fell apart during the %v window (%v), so there is no steady state to measure", window.Round(time.Second), err)
		for i := range rows {
			rows[i].Value, rows[i].NotMeasured, rows[i].Note = 0, "not measured", why
		}
		return rows, nil
	}
	rows[0].Value = mean(gossipKB)
	return rows, nil
}

// ledgerLeader is the node whose ledger leads, or nil.
func ledgerLeader(c *meshtest.Cluster) *meshtest.Node {
	for _, n := range c.Nodes() {
		if n.Mesh.View().Ledger.Role == "leader" {
			return n
		}
	}
	return nil
}

// raftRPCsByNode is every node's raft RPCs sent so far, by node name.
func raftRPCsByNode(c *meshtest.Cluster) map[string]float64 {
	out := make(map[string]float64)
	for _, n := range c.Nodes() {
		kinds, err := n.RaftRPCsSent()
		if err != nil {
			continue
		}
		for _, v := range kinds {
			out[n.Name] += v
		}
	}
	return out
}

const meshDescription = "one process, in-memory transport, agent timers, encrypted, uncompressed"

// convergedRows are the rows of a mesh that converged after d of wall
// time: the simulated time, and what each node sent until then.
func convergedRows(cfg MeshConfig, d time.Duration, lastMissing error, sent map[string]meshtest.Traffic, lag []time.Duration) []Row {
	msgs, kB := trafficPerNode(sent)
	if lastMissing == nil {
		lastMissing = errors.New("nothing (converged at the first full check)")
	}
	return []Row{
		{ID: cfg.id("a"), Measure: fmt.Sprintf("%d agents from empty state until all hold unique blocks and know all", cfg.Nodes),
			Unit: "s", Value: seconds(cfg.Dilation.Simulated(d)), Samples: 1, Target: Target{Kind: AtMost, Limit: 15},
			Note: fmt.Sprintf("simulated: %v of wall time over dilation %g; all started at once; %s, %d seeds; %s; last missing: %v",
				d.Round(time.Millisecond), cfg.Dilation.Factor(), meshDescription, meshSeeds, lagSentence(cfg.Dilation, lag), lastMissing)},
		{ID: cfg.id("c"), Measure: fmt.Sprintf("%d nodes: messages per node until converged", cfg.Nodes), Unit: "msgs", Value: mean(msgs), Samples: len(msgs),
			Note: fmt.Sprintf("mean; counted at the transport: UDP packets sent and TCP streams opened; median %.0f, max %.0f",
				median(msgs), slices.Max(msgs))},
		{ID: cfg.id("d"), Measure: fmt.Sprintf("%d nodes: bytes per node until converged", cfg.Nodes), Unit: "kB", Value: mean(kB), Samples: len(kB),
			Note: fmt.Sprintf("mean; counted at the transport: UDP and TCP payload after encryption, 1 kB = 1000 bytes; median %.3g, max %.3g kB",
				median(kB), slices.Max(kB))},
	}
}

// unconvergedRows say plainly that nothing this run set out to measure was
// measured, and how far the mesh got.
func unconvergedRows(cfg MeshConfig, progress string, lastCheck error, sent map[string]meshtest.Traffic) []Row {
	msgs, kB := trafficPerNode(sent)
	miss := false
	simulated := cfg.Dilation.Simulated(cfg.Timeout)
	soFar := fmt.Sprintf("not converged after %v simulated: %s; by then each node had sent %.0f messages and %.0f kB on average",
		simulated, progress, mean(msgs), mean(kB))
	return []Row{
		{ID: cfg.id("a"), Measure: fmt.Sprintf("%d agents from empty state until all hold unique blocks and know all", cfg.Nodes),
			Unit: "s", NotMeasured: fmt.Sprintf("> %v", simulated), Samples: 1, Target: Target{Kind: AtMost, Limit: 15}, Pass: &miss,
			Note: fmt.Sprintf("all started at once; %s, %d seeds, dilation %g; NOT CONVERGED after %v simulated (%v wall): %s; last check: %v",
				meshDescription, meshSeeds, cfg.Dilation.Factor(), simulated, cfg.Timeout, progress, lastCheck)},
		{ID: cfg.id("c"), Measure: fmt.Sprintf("%d nodes: messages per node until converged", cfg.Nodes), Unit: "msgs", NotMeasured: "not converged", Samples: len(msgs), Note: soFar},
		{ID: cfg.id("d"), Measure: fmt.Sprintf("%d nodes: bytes per node until converged", cfg.Nodes), Unit: "kB", NotMeasured: "not converged", Samples: len(kB), Note: soFar},
		{ID: cfg.id("b"), Measure: fmt.Sprintf("%d nodes: gossip per node, steady", cfg.Nodes), Unit: "kB/s", NotMeasured: "not measured", Samples: cfg.Nodes,
			Target: Target{Kind: AtMost, Limit: 2},
			Note:   "the mesh never converged, so it had no steady state: a rate measured now would be the join storm's"},
	}
}

// joinRow is how long one more node took to be seen alive by joinSeen of
// the nodes, in simulated time (negative: not within the timeout).
func joinRow(cfg MeshConfig, alive, routed time.Duration, lag []time.Duration) Row {
	r := Row{ID: cfg.id("e"), Measure: fmt.Sprintf("%d nodes: one more node joins until 99 %% see it alive", cfg.Nodes),
		Unit: "s", Samples: 1, Target: Target{Kind: AtMost, Limit: 3}}
	routedText := "not within the timeout"
	if routed >= 0 {
		routedText = fmt.Sprintf("%.3g s", routed.Seconds())
	}
	if alive < 0 {
		miss := false
		r.NotMeasured, r.Pass = fmt.Sprintf("> %v", cfg.joinTimeout()), &miss
		r.Note = fmt.Sprintf("simulated; fewer than 99 %% of the nodes saw it alive within %v; %s", cfg.joinTimeout(), lagSentence(cfg.Dilation, lag))
		return r
	}
	r.Value = alive.Seconds()
	r.Note = fmt.Sprintf("simulated, from its start (empty state, the same 3 seeds) until 99 %% of the route loops saw it alive; alive with its block (routed): %s; %s",
		routedText, lagSentence(cfg.Dilation, lag))
	return r
}

// wallRow is the wall time beside the simulated figures.
func wallRow(cfg MeshConfig, whole, coldStart time.Duration, what string, lag []time.Duration) Row {
	note := fmt.Sprintf("wall time of the %s (cluster start to stop: start until converged, drain, steady window, join), of which the start until converged %v; dilation %g: every protocol timer %gx longer in wall time",
		what, coldStart.Round(time.Millisecond), cfg.Dilation.Factor(), cfg.Dilation.Factor())
	if lag != nil {
		note += "; " + lagSentence(cfg.Dilation, lag)
	}
	return Row{ID: cfg.id("h"), Measure: fmt.Sprintf("%d nodes: wall time of the simulation", cfg.Nodes), Unit: "s", Value: whole.Seconds(), Samples: 1, Note: note}
}

// trafficPerNode turns the transports' counts into per-node figures:
// messages, and kB (1000 bytes).
func trafficPerNode(sent map[string]meshtest.Traffic) (msgs, kB []float64) {
	for _, t := range sent {
		msgs = append(msgs, float64(t.Messages))
		kB = append(kB, float64(t.Bytes)/1000)
	}
	return msgs, kB
}

func mean(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	var sum float64
	for _, x := range v {
		sum += x
	}
	return sum / float64(len(v))
}

// routePassEvery is the shortest time, simulated, between two passes of a
// route loop. The agent reconciles on every change, on a machine of its
// own; here a thousand loops that each take a View of a thousand members
// on every change of the join storm would take most of the process's CPU
// (40 % of it with 256 nodes) from the protocol being measured. Changes
// within the pause are taken together by the next pass, so a node notices
// a change up to this late.
const routePassEvery = 100 * time.Millisecond

// routeLoop is the agent's side of a node: on changes of its View it
// reconciles a fake kernel towards the routes the View asks for, as the
// agent does with the real one, at most once per routePassEvery. It also
// notes in w what the measurement waits for, so that the measurement need
// not take every node's View.
func routeLoop(ctx context.Context, n *meshtest.Node, pool netip.Prefix, k meshtest.Dilation, cw *clusterWatch, w *nodeWatch) {
	kernel := node.NewFakeKernel()
	kernel.AddLink("em1", netip.PrefixFrom(n.Addr.Addr(), 15))
	r := node.NewReconciler(kernel, nil, nil)
	for first := true; ; first = false {
		if !first && poll.Sleep(ctx, k.Wall(routePassEvery)) != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-n.Mesh.Changed():
		}
		v := n.Mesh.View()
		now := time.Now()
		joiner := ""
		if j := cw.joiner.Load(); j != nil {
			joiner = *j
		}
		alive := 0
		for _, m := range v.Members {
			if m.State != mesh.Alive {
				continue
			}
			if m.Block.IsValid() {
				alive++
			}
			if m.Name == joiner && joiner != "" {
				w.joinerAlive.CompareAndSwap(0, now.UnixNano())
				if m.Block.IsValid() {
					w.joinerRouted.CompareAndSwap(0, now.UnixNano())
				}
			}
		}
		w.complete.Store(v.Ready && v.Block.IsValid() && int64(alive) >= cw.others.Load())
		if !v.Ready {
			continue
		}
		d := node.Desired{Iface: "em1", OwnBlock: v.Block, Pool: pool, Masquerade: true}
		for _, m := range v.Members {
			if m.Block.IsValid() && m.HostIP.IsValid() && (m.State == mesh.Alive || m.State == mesh.Suspect) {
				d.Peers = append(d.Peers, node.PeerRoute{Peer: m.ID.String(), Block: m.Block, Via: m.HostIP}) // as the agent: by node ID
			}
		}
		r.Reconcile(ctx, d)
	}
}

// lagMonitor measures how late this process's timers fire: a goroutine
// that sleeps for a tick and records how much longer than that it slept.
// A process that keeps up with its timers wakes it within a millisecond or
// two; a starved one, late by up to its whole backlog.
type lagMonitor struct {
	mu      sync.Mutex
	samples []time.Duration
}

func watchLag(ctx context.Context, tick time.Duration) *lagMonitor {
	m := &lagMonitor{}
	go func() {
		for {
			t := time.Now()
			if poll.Sleep(ctx, tick) != nil {
				return
			}
			late := max(time.Since(t)-tick, 0)
			m.mu.Lock()
			m.samples = append(m.samples, late)
			m.mu.Unlock()
		}
	}()
	return m
}

// take returns the samples since the last take.
func (m *lagMonitor) take() []time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.samples
	m.samples = nil
	return s
}

// lagSentence says how late timers fired, in simulated time: what tells a
// run that kept up with its timers from a starved one, whose counts and
// times are the CPU's.
func lagSentence(k meshtest.Dilation, lag []time.Duration) string {
	if len(lag) == 0 {
		return "timer lag not sampled"
	}
	p99, worst := percentile(lag, 99), slices.Max(lag)
	verdict := "kept up with its timers"
	if starved(k, lag) {
		verdict = "STARVED: its timers fired late by a large share of the gossip interval, so the figures are partly the CPU's"
	}
	return fmt.Sprintf("timers fired late by %v at the 99th percentile, %v at worst (simulated; %v and %v wall, %d samples): %s",
		k.Simulated(p99).Round(100*time.Microsecond), k.Simulated(worst).Round(time.Millisecond),
		p99.Round(100*time.Microsecond), worst.Round(time.Millisecond), len(lag), verdict)
}

// starvedLag is the 99th-percentile timer lag, in simulated time, above
// which a run is called starved: a fifth of the agent's gossip interval
// (100 ms), a tenth of memberlist's probe timeout (500 ms).
const starvedLag = 20 * time.Millisecond

// starved says whether timers fired so late that the protocol's own
// timing no longer rules the figures.
func starved(k meshtest.Dilation, lag []time.Duration) bool {
	return k.Simulated(percentile(lag, 99)) > starvedLag
}

// meshProgress says how far a cluster got: nodes ready, members seen alive
// with a block, and packets lost to full receive buffers.
func meshProgress(ctx context.Context, c *meshtest.Cluster) string {
	views, err := bounded(ctx, time.Minute, c.Views)
	if err != nil {
		return err.Error()
	}
	var ready, alive int
	reasons := make(map[string]int)
	for _, v := range views {
		if v.Ready && v.Block.IsValid() {
			ready++
		} else {
			reasons[v.Reason]++
		}
		for _, m := range v.Members {
			if m.State == mesh.Alive && m.Block.IsValid() {
				alive++
			}
		}
	}
	var dropped int64
	for _, n := range c.Nodes() {
		dropped += n.Transport.Dropped()
	}
	n := len(views)
	progress := fmt.Sprintf("%d of %d nodes ready with a block, %.0f%% of the %d member views alive with a block, %d packets dropped by full receive buffers",
		ready, n, 100*float64(alive)/float64(max(n*(n-1), 1)), n*(n-1), dropped)
	if len(reasons) > 0 {
		// The most common reason a node gives for not being ready.
		top := slices.MaxFunc(slices.Collect(maps.Keys(reasons)), func(a, b string) int { return cmp.Compare(reasons[a], reasons[b]) })
		progress += fmt.Sprintf("; %d of the nodes not ready say %q", reasons[top], top)
	}
	return progress
}

// bounded runs f and waits at most d for its result. When f takes longer it
// is left running, and the error says so.
func bounded[T any](ctx context.Context, d time.Duration, f func() T) (T, error) {
	res := make(chan T, 1)
	go func() { res <- f() }()
	t := time.NewTimer(d)
	defer t.Stop()
	var zero T
	select {
	case r := <-res:
		return r, nil
	case <-ctx.Done():
		return zero, ctx.Err()
	case <-t.C:
		return zero, fmt.Errorf("no answer within %v (the process is starved of CPU)", d)
	}
}

// MeshDilation is the time dilation a simulation of nodes agents gets by
// default: none up to 64 nodes, then in proportion to the size, so that
// the process runs about as many node-seconds per wall second as 64 nodes
// without dilation (which keep up on two cores).
func MeshDilation(nodes int) meshtest.Dilation {
	return meshtest.Dilation(max(1, math.Ceil(float64(nodes)/64)))
}

// ParseMeshSizes reads the -mesh-nodes and -mesh-dilation flags: sizes
// "64,256,1000", and dilations "auto" (MeshDilation of each size), one
// factor for all, or one per size.
func ParseMeshSizes(sizes, dilations string) ([]MeshConfig, error) {
	var out []MeshConfig
	for _, f := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("mesh size %q is not a positive number of nodes", f)
		}
		out = append(out, MeshConfig{Nodes: n, Dilation: MeshDilation(n)})
	}
	if strings.TrimSpace(dilations) == "auto" {
		return out, nil
	}
	ks := strings.Split(dilations, ",")
	if len(ks) != 1 && len(ks) != len(out) {
		return nil, fmt.Errorf("%d dilations for %d mesh sizes: give one for all, or one per size", len(ks), len(out))
	}
	for i := range out {
		f := ks[min(i, len(ks)-1)]
		k, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || k < 1 || math.IsInf(k, 0) {
			return nil, fmt.Errorf("dilation %q is not a factor of 1 or more", f)
		}
		out[i].Dilation = meshtest.Dilation(k)
	}
	return out, nil
}
