package meshtest

import (
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/grapevine-net/grapevine/internal/hostclock"
	"github.com/grapevine-net/grapevine/mesh"
)

// Leases checks what hosts do with blocks, not what they believe: every
// time a host's view is ready with a block, that host's CNI plugin may hand
// out addresses from it until the view's lease ends, whether or not its
// agent keeps running (node.json stays behind a stopped or hung agent). No
// two hosts may have such a window on one block that overlap in real time.
type Leases struct {
	mu      sync.Mutex
	windows map[netip.Prefix][]leaseWindow
}

type leaseWindow struct {
	host        string
	from, until time.Time // real time
}

// NewLeases returns an empty record.
func NewLeases() *Leases { return &Leases{windows: make(map[netip.Prefix][]leaseWindow)} }

// Observe records host's view v, read when host's clock said hostNow and
// real time was at, and returns an error if the window it opens overlaps
// another host's window on the same block.
func (l *Leases) Observe(host string, v mesh.View, hostNow hostclock.Instant, at time.Time) error {
	if !v.Ready || !v.Block.IsValid() {
		return nil
	}
	left, ok := v.Lease.Sub(hostNow)
	if !ok || left <= 0 {
		return fmt.Errorf("%s is ready on %s without a lease that holds (lease %+v, host clock %+v)", host, v.Block, v.Lease, hostNow)
	}
	w := leaseWindow{host: host, from: at, until: at.Add(left)}
	l.mu.Lock()
	defer l.mu.Unlock()
	ws := l.windows[v.Block]
	for _, o := range ws {
		if o.host != host && o.from.Before(w.until) && w.from.Before(o.until) {
			return fmt.Errorf("block %s handed out by %s from %s until %s and by %s from %s until %s",
				v.Block, o.host, o.from.Format(time.StampMilli), o.until.Format(time.StampMilli),
				host, w.from.Format(time.StampMilli), w.until.Format(time.StampMilli))
		}
	}
	// Extend this host's latest window on the block, or open one.
	if n := len(ws); n > 0 && ws[n-1].host == host && !ws[n-1].until.Before(w.from) {
		ws[n-1].until = maxTime(ws[n-1].until, w.until)
	} else {
		ws = append(ws, w)
	}
	l.windows[v.Block] = ws
	return nil
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
