package lab

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/grapevine-net/grapevine/internal/poll"
)

// LedgerPort is the agent's default --ledger-port.
const LedgerPort = 7963

// FloodIdle holds conns TCP connections from the hosts in from (round
// robin) to target, as a host without the key can: it never sends a byte,
// and opens each connection again redial after the target drops it. The
// hosts need no agent. stop ends the flood and waits until every
// connection is closed.
func FloodIdle(ctx context.Context, from []*Host, target netip.AddrPort, conns int, redial time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i := range conns {
		h := from[i%len(from)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if c, err := h.Namespace.Dial(ctx, target.String()); err == nil {
					closeOnEnd := context.AfterFunc(ctx, func() { c.Close() })
					c.Read(make([]byte, 1)) // until the target drops it
					closeOnEnd()
					c.Close()
				}
				if poll.Sleep(ctx, redial) != nil {
					return
				}
			}
		}()
	}
	return func() {
		cancel()
		wg.Wait()
	}
}

// Counters sums the samples of counter name by the value of its first
// label, from an agent's /metrics (Prometheus text format).
func Counters(metrics, name string) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(metrics, "\n") {
		rest, ok := strings.CutPrefix(line, name+"{")
		if !ok {
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		_, label, ok := strings.Cut(labels, `="`)
		if !ok {
			continue
		}
		label, _, _ = strings.Cut(label, `"`)
		if v, err := strconv.ParseFloat(strings.TrimSpace(value), 64); err == nil {
			out[label] += v
		}
	}
	return out
}
