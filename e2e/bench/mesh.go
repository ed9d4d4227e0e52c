package bench

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/ledger"
	"github.com/grapevine-net/grapevine/mesh/meshtest"
	"github.com/grapevine-net/grapevine/node"
)

// MeshConfig configures the in-process cluster measurement.
type MeshConfig struct {
	Nodes int
	// Steady is the window over which steady gossip traffic is counted.
	Steady time.Duration
	// Timeout bounds the wait for convergence; a cluster that has not
	// converged by then is reported as such, with how far it got.
	Timeout time.Duration
	// Drain is the pause between convergence and the steady window, for the
	// join storm's retransmissions to die down (zero: 10 s).
	Drain  time.Duration
	Logger *slog.Logger
}

func (c MeshConfig) drain() time.Duration { return cmp.Or(c.Drain, 10*time.Second) }

// meshSeeds is how many of the first nodes every node is told to join, as
// an operator would list a few seeds.
const meshSeeds = 3

// MeasureMesh starts Nodes agents (a mesh node reconciling a fake kernel)
// at once in one process, on an in-memory network, each with an empty state
// directory, the agent's timers (memberlist's LAN defaults) and
// encryption, and times how long until every node holds a unique block and
// sees every other node alive with its block, counting the messages and bytes
// each node sent until then: figures that, unlike the wall time, do not
// depend on how busy the machine is. Then it counts the gossip bytes the
// nodes send while nothing changes. A mesh that does not converge gets rows
// that say so, and no steady-state rate.
func MeasureMesh(ctx context.Context, cfg MeshConfig) (_ []Row, err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
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
		// The agent's memberlist timers, but no compression: here all
		// nodes share this machine's cores, and memberlist allocates a new
		// LZW coder per message, which in one process costs a quarter of
		// all CPU (and more in garbage collection). Uncompressed, the byte
		// counts are an upper bound of the agent's.
		Tune: func(c *memberlist.Config) { c.EnableCompression = false },
		// The agent's raft and autopilot timers.
		TuneLedger: func(*ledger.Config) {},
	})

	var seeds []string
	for i := range meshSeeds {
		seeds = append(seeds, netip.AddrPortFrom(meshtest.HostAddr(i), meshtest.GossipPort).String())
	}
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
	t0 := time.Now()
	for i := range cfg.Nodes {
		// The first node founds the ledger, as the agent that creates the
		// ledger's record does with --join-kubernetes; every node starts at
		// once.
		n, err := c.Start(meshtest.Spec{Name: fmt.Sprintf("node-%03d", i), Join: seeds, Found: i == 0})
		if err != nil {
			return nil, err
		}
		agents.Go(func() { routeLoop(agentsCtx, n, pool) })
	}
	// Each check is bounded: in a CPU-starved cluster one View can wait
	// minutes for its node's lock.
	var waitErr, lastMissing error
	for deadline := t0.Add(cfg.Timeout); ; {
		notConverged, checkErr := bounded(ctx, max(time.Until(deadline), time.Second), func() error { return meshtest.Converged(c.Views()) })
		waitErr = cmp.Or(checkErr, notConverged)
		lastMissing = cmp.Or(notConverged, lastMissing)
		if waitErr == nil || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		if err := lab.Sleep(ctx, 100*time.Millisecond); err != nil {
			return nil, err
		}
	}
	converged := time.Since(t0)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	// Counted at the transport: what the nodes sent until convergence (or
	// until the deadline), whatever the CPU made of the wall time.
	untilConverged := c.Traffic()
	log.Info("mesh", "nodes", cfg.Nodes, "after", converged.Round(time.Millisecond), "converged", waitErr == nil)
	if waitErr != nil {
		return unconvergedRows(cfg, meshProgress(ctx, c), waitErr, untilConverged), nil
	}
	rows := convergedRows(cfg, converged, lastMissing, untilConverged)

	// Steady state: after the join storm's retransmissions have drained.
	if err := lab.Sleep(ctx, cfg.drain()); err != nil {
		return nil, err
	}
	b0, w0 := c.BytesSent(), time.Now()
	if err := lab.Sleep(ctx, cfg.Steady); err != nil {
		return nil, err
	}
	b1, window := c.BytesSent(), time.Since(w0)
	steady := Row{ID: "5b", Measure: "gossip per node, steady", Unit: "kB/s", Samples: cfg.Nodes,
		Target: Target{Kind: AtMost, Limit: 2},
		Note:   fmt.Sprintf("bytes sent (UDP and TCP payload after encryption) over %v, 1 kB = 1000 bytes", window.Round(time.Second))}
	if notConverged, err := bounded(ctx, time.Minute, func() error { return meshtest.Converged(c.Views()) }); notConverged != nil || err != nil {
		// Traffic of a mesh that is repairing itself is not the steady
		// state: no rate at all rather than the wrong one.
		steady.NotMeasured = "not measured"
		steady.Note = fmt.Sprintf("the mesh fell apart during the %v window (%s), so there is no steady state to measure",
			window.Round(time.Second), meshProgress(ctx, c))
	} else {
		steady.Value = float64(b1-b0) / float64(cfg.Nodes) / window.Seconds() / 1000
	}
	return append(rows, steady), nil
}

const meshDescription = "one process, in-memory transport, agent timers, encrypted, uncompressed"

// convergedRows are the rows of a mesh that converged after d: the wall
// time, and what each node sent until then.
func convergedRows(cfg MeshConfig, d time.Duration, lastMissing error, sent map[string]meshtest.Traffic) []Row {
	msgs, kB := trafficPerNode(sent)
	if lastMissing == nil {
		lastMissing = errors.New("nothing (converged at the first check)")
	}
	return []Row{
		{ID: "5a", Measure: fmt.Sprintf("%d agents from empty state until all hold unique blocks and know all", cfg.Nodes),
			Unit: "s", Value: seconds(d), Samples: 1, Target: Target{Kind: AtMost, Limit: 15},
			Note: fmt.Sprintf("%s, %d seeds; the wall time follows how busy the CPU is, 5c and 5d count what was sent (a starved process adds only the retransmissions of its timeouts); last missing: %v",
				meshDescription, meshSeeds, lastMissing)},
		{ID: "5c", Measure: "messages per node until converged", Unit: "msgs", Value: mean(msgs), Samples: len(msgs),
			Note: fmt.Sprintf("mean; counted at the transport: UDP packets sent and TCP streams opened; median %.0f, max %.0f",
				median(msgs), slices.Max(msgs))},
		{ID: "5d", Measure: "bytes per node until converged", Unit: "kB", Value: mean(kB), Samples: len(kB),
			Note: fmt.Sprintf("mean; counted at the transport: UDP and TCP payload after encryption, 1 kB = 1000 bytes; median %.3g, max %.3g kB",
				median(kB), slices.Max(kB))},
	}
}

// unconvergedRows say plainly that nothing this run set out to measure was
// measured, and how far the mesh got.
func unconvergedRows(cfg MeshConfig, progress string, lastCheck error, sent map[string]meshtest.Traffic) []Row {
	msgs, kB := trafficPerNode(sent)
	miss := false
	soFar := fmt.Sprintf("not converged after %v: %s; by then each node had sent %.0f messages and %.0f kB on average",
		cfg.Timeout, progress, mean(msgs), mean(kB))
	return []Row{
		{ID: "5a", Measure: fmt.Sprintf("%d agents from empty state until all hold unique blocks and know all", cfg.Nodes),
			Unit: "s", NotMeasured: fmt.Sprintf("> %v", cfg.Timeout), Samples: 1, Target: Target{Kind: AtMost, Limit: 15}, Pass: &miss,
			Note: fmt.Sprintf("%s, %d seeds; NOT CONVERGED after %v: %s; last check: %v", meshDescription, meshSeeds, cfg.Timeout, progress, lastCheck)},
		{ID: "5c", Measure: "messages per node until converged", Unit: "msgs", NotMeasured: "not converged", Samples: len(msgs), Note: soFar},
		{ID: "5d", Measure: "bytes per node until converged", Unit: "kB", NotMeasured: "not converged", Samples: len(kB), Note: soFar},
		{ID: "5b", Measure: "gossip per node, steady", Unit: "kB/s", NotMeasured: "not measured", Samples: cfg.Nodes,
			Target: Target{Kind: AtMost, Limit: 2},
			Note:   "the mesh never converged, so it had no steady state: a rate measured now would be the join storm's"},
	}
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

// routeLoop is the agent's side of a node: on every change of its View it
// reconciles a fake kernel towards the routes the View asks for, as the
// agent does with the real one.
func routeLoop(ctx context.Context, n *meshtest.Node, pool netip.Prefix) {
	k := node.NewFakeKernel()
	k.AddLink("em1", netip.PrefixFrom(n.Addr.Addr(), 15))
	r := node.NewReconciler(k, nil, nil)
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.Mesh.Changed():
		}
		v := n.Mesh.View()
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

// meshProgress says how far a cluster got: nodes ready, members seen alive
// with a block, and packets lost to full receive buffers.
func meshProgress(ctx context.Context, c *meshtest.Cluster) string {
	views, err := bounded(ctx, time.Minute, c.Views)
	if err != nil {
		return err.Error()
	}
	var ready, alive int
	for _, v := range views {
		if v.Ready && v.Block.IsValid() {
			ready++
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
	return fmt.Sprintf("%d of %d nodes ready with a block, %.0f%% of the %d member views alive with a block, %d packets dropped by full receive buffers",
		ready, n, 100*float64(alive)/float64(max(n*(n-1), 1)), n*(n-1), dropped)
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
