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
	Logger  *slog.Logger
}

// meshSeeds is how many of the first nodes every node is told to join, as
// an operator would list a few seeds.
const meshSeeds = 3

// MeasureMesh starts Nodes agents (a mesh node reconciling a fake kernel)
// at once in one process, on an in-memory network, each with an empty state
// directory, the agent's timers (memberlist's LAN defaults) and
// encryption, and times how long until every node holds a unique block and
// sees every other node alive with its block. Then it counts the gossip
// bytes the nodes send while nothing changes.
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
		// The first node founds the ledger, as the oldest Node does with
		// --join-kubernetes; every node starts at once.
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
		notConverged, checkErr := bounded(ctx, time.Until(deadline), func() error { return meshtest.Converged(c.Views()) })
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
	startup := c.BytesSent()
	// The last thing missing is what held convergence up.
	convergedNote := fmt.Sprintf("one process, in-memory transport, agent timers, encrypted, uncompressed, %d seeds; %.0f kB sent per node until converged; last missing: %v",
		meshSeeds, float64(startup)/float64(cfg.Nodes)/1000, lastMissing)
	if waitErr != nil {
		convergedNote = fmt.Sprintf("NOT CONVERGED after %v: %s; last check: %v", cfg.Timeout, meshProgress(ctx, c), waitErr)
	}
	log.Info("mesh", "nodes", cfg.Nodes, "after", converged.Round(time.Millisecond), "converged", waitErr == nil)

	// Steady state: after the join storm's retransmissions have drained.
	if err := lab.Sleep(ctx, 10*time.Second); err != nil {
		return nil, err
	}
	b0, w0 := c.BytesSent(), time.Now()
	if err := lab.Sleep(ctx, cfg.Steady); err != nil {
		return nil, err
	}
	b1, window := c.BytesSent(), time.Since(w0)
	steadyNote := fmt.Sprintf("bytes sent (UDP and TCP payload after encryption) over %v, 1 kB = 1000 bytes", window.Round(time.Second))
	if notConverged, err := bounded(ctx, time.Minute, func() error { return meshtest.Converged(c.Views()) }); notConverged != nil || err != nil {
		steadyNote += fmt.Sprintf("; NOT CONVERGED at the end of the window: %s", meshProgress(ctx, c))
	}
	perNode := float64(b1-b0) / float64(cfg.Nodes) / window.Seconds() / 1000
	return []Row{
		{ID: "5a", Measure: fmt.Sprintf("%d agents from empty state until all hold unique blocks and know all", cfg.Nodes),
			Unit: "s", Value: seconds(converged), Samples: 1, Target: Target{Kind: AtMost, Limit: 15},
			Note: convergedNote},
		{ID: "5b", Measure: "gossip per node, steady", Unit: "kB/s", Value: perNode, Samples: cfg.Nodes,
			Target: Target{Kind: AtMost, Limit: 2},
			Note:   steadyNote},
	}, nil
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
				d.Peers = append(d.Peers, node.PeerRoute{Peer: m.Name, Block: m.Block, Via: m.HostIP})
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
