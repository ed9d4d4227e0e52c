package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/node"
)

// RoutesConfig configures the route programming measurement.
type RoutesConfig struct {
	Peers int
	// Trials is how often the full table is programmed; NoopTrials how
	// many reconciles with nothing to change are timed.
	Trials, NoopTrials int
}

// MeasureRoutes programs Peers peer routes with the real netlink kernel into
// the empty table of a namespace of its own (em1 on 172.16.0.1/16, every
// next hop on it), then times reconciles that find nothing to change.
func MeasureRoutes(ctx context.Context, cfg RoutesConfig) (_ []Row, err error) {
	s := newScope()
	defer func() { err = errors.Join(err, s.close(context.WithoutCancel(ctx))) }()
	name, err := s.addNamespace(ctx, "routes")
	if err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"link", "add", "em1", "type", "veth", "peer", "name", NamePrefix + s.id},
		{"addr", "add", "172.16.0.1/16", "dev", "em1"},
		{"link", "set", "em1", "up"},
		{"link", "set", NamePrefix + s.id, "up"},
	} {
		if _, err := lab.Run(ctx, "ip", append([]string{"-n", name}, args...)...); err != nil {
			return nil, err
		}
	}
	k, err := node.NewNetlinkKernelAt(lab.Namespace{Name: name}.Path())
	if err != nil {
		return nil, err
	}
	defer k.Close()

	full := node.Desired{
		Iface:      "em1",
		OwnBlock:   netip.MustParsePrefix("10.255.254.0/23"),
		Pool:       netip.MustParsePrefix("10.0.0.0/8"),
		Masquerade: true,
		Peers:      PeerRoutes(cfg.Peers),
	}
	empty := full
	empty.OwnBlock, empty.Peers = netip.Prefix{}, nil
	r := node.NewReconciler(k, nil, nil)
	// One untimed pass sets up forwarding and masquerade, which the agent
	// does once at start, not per peer.
	if _, err := r.Reconcile(ctx, empty); err != nil {
		return nil, err
	}
	var program, noop []time.Duration
	for range cfg.Trials {
		t0 := time.Now()
		res, err := r.Reconcile(ctx, full)
		d := time.Since(t0)
		if err != nil {
			return nil, err
		}
		if res.Added != cfg.Peers+1 {
			return nil, fmt.Errorf("programmed %d routes, want %d", res.Added, cfg.Peers+1)
		}
		program = append(program, d)
		if _, err := r.Reconcile(ctx, empty); err != nil {
			return nil, err
		}
	}
	if _, err := r.Reconcile(ctx, full); err != nil {
		return nil, err
	}
	for range cfg.NoopTrials {
		t0 := time.Now()
		res, err := r.Reconcile(ctx, full)
		d := time.Since(t0)
		if err != nil {
			return nil, err
		}
		if res.Added+res.Replaced+res.Deleted != 0 {
			return nil, fmt.Errorf("reconcile with nothing to change changed %d routes", res.Added+res.Replaced+res.Deleted)
		}
		noop = append(noop, d)
	}
	return []Row{
		{ID: "6a", Measure: fmt.Sprintf("program %d peer routes, empty table", cfg.Peers), Unit: "s",
			Value: seconds(median(program)), Samples: len(program), Target: Target{Kind: AtMost, Limit: 0.5},
			Note: "median; netlink kernel in a namespace of its own, em1 one end of a veth pair, masquerade on"},
		{ID: "6b", Measure: fmt.Sprintf("reconcile %d routes, nothing to change", cfg.Peers), Unit: "ms",
			Value: millis(median(noop)), Samples: len(noop), Target: Target{Kind: AtMost, Limit: 10}},
	}, nil
}

// PeerRoutes returns n peers with /23 blocks from 10.0.0.0/8 and next hops
// on 172.16.0.0/16.
func PeerRoutes(n int) []node.PeerRoute {
	peers := make([]node.PeerRoute, n)
	for i := range peers {
		block := netip.AddrFrom4([4]byte{10, byte(i >> 7), byte(i&127) << 1, 0})
		via := netip.AddrFrom4([4]byte{172, 16, byte((i + 2) >> 8), byte(i + 2)})
		peers[i] = node.PeerRoute{Peer: fmt.Sprintf("node-%04d", i), Block: netip.PrefixFrom(block, 23), Via: via}
	}
	return peers
}
