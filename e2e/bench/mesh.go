package bench

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/meshtest"
)

// MeshConfig configures the in-process cluster measurement.
type MeshConfig struct {
	Nodes int
	// Steady is the window over which steady gossip traffic is counted.
	Steady time.Duration
	Logger *slog.Logger
}

// meshSeeds is how many of the first nodes every node is told to join, as
// an operator would list a few seeds.
const meshSeeds = 3

// MeasureMesh starts Nodes mesh nodes at once in one process, on an
// in-memory network, each with an empty state directory, the agent's
// timers (memberlist's LAN defaults), encryption and compression, and times
// how long until every node holds a unique block and sees every other node
// alive with its block. Then it counts the gossip bytes the nodes send while
// nothing changes.
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
	key := make([]byte, 32)
	rand.Read(key)
	c := meshtest.NewCluster(dir, meshtest.Options{
		// Enough /23 blocks that claims rarely collide, outside the
		// cluster's host addresses (10.1.0.0/15).
		Pool:              netip.MustParsePrefix("10.128.0.0/9"),
		BlockBits:         mesh.DefaultBlockBits,
		ReconnectInterval: mesh.DefaultReconnectInterval,
		SecretKey:         key,
		// The agent's memberlist configuration, unchanged.
		Tune: func(*memberlist.Config) {},
	})
	defer func() { err = errors.Join(err, c.Close()) }()

	var seeds []string
	for i := range meshSeeds {
		seeds = append(seeds, netip.AddrPortFrom(meshtest.HostAddr(i), meshtest.GossipPort).String())
	}
	t0 := time.Now()
	for i := range cfg.Nodes {
		if _, err := c.Start(meshtest.Spec{Name: fmt.Sprintf("node-%03d", i), Join: seeds}); err != nil {
			return nil, err
		}
	}
	waitCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	_, err = meshtest.WaitFor(waitCtx, 100*time.Millisecond, func() error { return meshtest.Converged(c.Views()) })
	converged := time.Since(t0)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("%d nodes did not converge: %w", cfg.Nodes, err)
	}
	startup := c.BytesSent()
	log.Info("mesh converged", "nodes", cfg.Nodes, "after", converged.Round(time.Millisecond), "bytes", startup)

	// Steady state: after the join storm's retransmissions have drained.
	if err := settle(ctx, 10*time.Second); err != nil {
		return nil, err
	}
	b0, w0 := c.BytesSent(), time.Now()
	if err := settle(ctx, cfg.Steady); err != nil {
		return nil, err
	}
	b1, window := c.BytesSent(), time.Since(w0)
	if err := meshtest.Converged(c.Views()); err != nil {
		return nil, fmt.Errorf("mesh fell apart while idle: %w", err)
	}
	perNode := float64(b1-b0) / float64(cfg.Nodes) / window.Seconds() / 1000
	return []Row{
		{ID: "5a", Measure: fmt.Sprintf("%d agents from empty state until all hold unique blocks and know all", cfg.Nodes),
			Unit: "s", Value: seconds(converged), Samples: 1, Target: Target{Kind: AtMost, Limit: 15},
			Note: fmt.Sprintf("one process, in-memory transport, agent timers, encrypted, %d seeds; %.0f kB sent per node until converged",
				meshSeeds, float64(startup)/float64(cfg.Nodes)/1000)},
		{ID: "5b", Measure: "gossip per node, steady", Unit: "kB/s", Value: perNode, Samples: cfg.Nodes,
			Target: Target{Kind: AtMost, Limit: 2},
			Note:   fmt.Sprintf("bytes sent (UDP and TCP payload after encryption) over %v, 1 kB = 1000 bytes", window.Round(time.Second))},
	}, nil
}
