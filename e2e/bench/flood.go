package bench

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// The ledger-port flood (issue 19): idle TCP connections without the key,
// held open against a seed's ledger port by hosts that run no agent, while
// new hosts join through that seed.
const (
	floodConns   = 500
	floodSources = 10
	// floodRedial is how long a flooding connection waits before it opens
	// again once the seed dropped it: fast enough to keep the seed's slots
	// for strangers full, slow enough that the two cores spend their time
	// on the join rather than on dialling.
	floodRedial = time.Second
)

// floodJoins times trials new hosts joining through seed (until every peer
// routes their block, as row 2a) while floodConns idle connections from
// floodSources hosts without the key are held open against the seed's
// ledger port. Each joined host leaves again before the next trial.
// It also returns the seed's refusals of ledger connections by reason, as
// its metrics count them, to show the flood was held.
func (b *labBench) floodJoins(ctx context.Context, seed *lab.Host, trials int) (_ []time.Duration, refused map[string]float64, err error) {
	var flooders []*lab.Host
	for range floodSources {
		h, err := b.lab.AddHost(ctx)
		if err != nil {
			return nil, nil, err
		}
		flooders = append(flooders, h)
	}
	stopFlood := lab.FloodIdle(ctx, flooders, netip.AddrPortFrom(seed.IP, lab.LedgerPort), floodConns, floodRedial)
	defer stopFlood()
	// Let the flood fill the seed's slots and reach its steady state (every
	// admitted connection dropped once at the 2 s handshake deadline).
	if err := poll.Sleep(ctx, 3*time.Second); err != nil {
		return nil, nil, err
	}
	var joins []time.Duration
	for i := range trials {
		h, err := b.lab.AddHost(ctx)
		if err != nil {
			return joins, nil, err
		}
		d, err := b.join(ctx, h)
		if err != nil {
			return joins, nil, fmt.Errorf("join under the ledger-port flood: %w", err)
		}
		joins = append(joins, d)
		b.log.Info("join under the ledger-port flood", "trial", i+1, "took", d)
		if _, err := b.leave(ctx, h); err != nil {
			return joins, nil, err
		}
	}
	_, metrics, err := seed.Get(ctx, "/metrics")
	if err != nil {
		return joins, nil, err
	}
	return joins, lab.Counters(metrics, "grapevine_ledger_rpc_rejected_total"), nil
}

// floodJoinRow compares the joins under the flood with the same run's
// unloaded joins of new hosts (row 2a); the goal is within a second.
func floodJoinRow(flooded, unloaded []time.Duration, refused map[string]float64) Row {
	base := seconds(median(unloaded))
	var counts []string
	for _, r := range slices.Sorted(maps.Keys(refused)) {
		counts = append(counts, fmt.Sprintf("%s %.0f", r, refused[r]))
	}
	return Row{ID: "2c", Measure: fmt.Sprintf("join, new host, %d keyless connections held open against its seed", floodConns), Unit: "s",
		Value: seconds(median(flooded)), Samples: len(flooded),
		Peer:   &Peer{Name: "unloaded join (2a, this run)", Value: base},
		Target: Target{Kind: AtMost, Limit: base + 1},
		Note: fmt.Sprintf("idle TCP connections from %d hosts without the key or an agent, each opened again %s after the seed drops it; the seed refused [%s]; target: within 1 s of 2a; all trials %v",
			floodSources, floodRedial, strings.Join(counts, ", "), roundAll(flooded))}
}
