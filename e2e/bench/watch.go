package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// routeProtocol marks the routes the agent owns (proto 74).
const routeProtocol = 74

// routeTable is the agent-owned routes of one namespace's main table:
// destination to next hop.
type routeTable map[netip.Prefix]netip.Addr

// routeWatch follows the agent-owned routes of several namespaces through
// netlink notifications, so a change is timed when the kernel reports it,
// not when a poll happens to look.
type routeWatch struct {
	names []string
	errc  chan error

	mu     sync.Mutex
	tables []routeTable
	exp    *expectation
}

// expectation is a condition awaited on every watched namespace, and when
// each first met it.
type expectation struct {
	what string
	cond func(routeTable) bool
	met  []time.Time
	left int
	done chan struct{}
	// removed is when each namespace's route to a destination was first
	// deleted while this expectation was awaited.
	removed []map[netip.Prefix]time.Time
}

// watchRoutes subscribes to route changes in the named namespaces until ctx
// ends.
func watchRoutes(ctx context.Context, names []string) (*routeWatch, error) {
	w := &routeWatch{names: names, errc: make(chan error, len(names)), tables: make([]routeTable, len(names))}
	for i, name := range names {
		h, err := netns.GetFromPath(lab.Namespace{Name: name}.Path())
		if err != nil {
			return nil, fmt.Errorf("namespace %s: %w", name, err)
		}
		updates := make(chan netlink.RouteUpdate, 4096)
		err = netlink.RouteSubscribeWithOptions(updates, ctx.Done(), netlink.RouteSubscribeOptions{
			Namespace:    &h,
			ListExisting: true,
			// A notification lost to a full socket buffer would be a
			// wrong figure; fail instead.
			ErrorCallback:     func(err error) { w.fail(fmt.Errorf("route updates in %s: %w", name, err)) },
			ReceiveBufferSize: 1 << 20,
		})
		h.Close()
		if err != nil {
			return nil, fmt.Errorf("subscribe to routes in %s: %w", name, err)
		}
		w.tables[i] = make(routeTable)
		go w.follow(i, updates)
	}
	// The existing routes arrive first; let them.
	return w, poll.Sleep(ctx, 200*time.Millisecond)
}

func (w *routeWatch) fail(err error) {
	select {
	case w.errc <- err:
	default:
	}
}

func (w *routeWatch) follow(i int, updates <-chan netlink.RouteUpdate) {
	for u := range updates {
		at := time.Now()
		if u.Table != syscall.RT_TABLE_MAIN || u.Dst == nil {
			continue
		}
		dst, ok := netip.AddrFromSlice(u.Dst.IP)
		if !ok {
			continue
		}
		ones, _ := u.Dst.Mask.Size()
		key := netip.PrefixFrom(dst.Unmap(), ones)
		w.mu.Lock()
		switch {
		case u.Type == syscall.RTM_DELROUTE:
			delete(w.tables[i], key)
			if e := w.exp; e != nil && e.removed[i][key].IsZero() {
				e.removed[i][key] = at
			}
		case u.Type == syscall.RTM_NEWROUTE && u.Protocol == routeProtocol && u.Route.Type != syscall.RTN_UNREACHABLE:
			// The pool's unreachable route is there from the start and
			// never moves; only block routes are watched.
			gw, _ := netip.AddrFromSlice(u.Gw)
			w.tables[i][key] = gw.Unmap()
		}
		w.check(i, at)
		w.mu.Unlock()
	}
}

// check records when namespace i first meets the current expectation.
func (w *routeWatch) check(i int, at time.Time) {
	e := w.exp
	if e == nil || !e.met[i].IsZero() || !e.cond(w.tables[i]) {
		return
	}
	e.met[i] = at
	e.left--
	if e.left == 0 {
		close(e.done)
	}
}

// expect starts awaiting cond on every namespace. Call it before the
// action whose effect it times.
func (w *routeWatch) expect(what string, cond func(routeTable) bool) *expectation {
	e := &expectation{what: what, cond: cond, met: make([]time.Time, len(w.names)), left: len(w.names), done: make(chan struct{}),
		removed: make([]map[netip.Prefix]time.Time, len(w.names))}
	for i := range e.removed {
		e.removed[i] = make(map[netip.Prefix]time.Time)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.exp = e
	now := time.Now()
	for i := range w.names {
		w.check(i, now)
	}
	return e
}

// wait returns when the last namespace met the expectation.
func (w *routeWatch) wait(ctx context.Context, e *expectation, timeout time.Duration) (time.Time, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-e.done:
		w.mu.Lock()
		defer w.mu.Unlock()
		w.exp = nil
		var last time.Time
		for _, at := range e.met {
			if at.After(last) {
				last = at
			}
		}
		return last, nil
	case err := <-w.errc:
		return time.Time{}, err
	case <-ctx.Done():
		return time.Time{}, ctx.Err()
	case <-t.C:
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.exp = nil
	var missing []error
	for i, at := range e.met {
		if at.IsZero() {
			missing = append(missing, fmt.Errorf("%s: %v", w.names[i], w.tables[i]))
		}
	}
	return time.Time{}, fmt.Errorf("%s: not after %v in %w", e.what, timeout, errors.Join(missing...))
}

// routesVia holds when some agent route has next hop via.
func routesVia(via netip.Addr) func(routeTable) bool {
	return func(t routeTable) bool {
		for _, gw := range t {
			if gw == via {
				return true
			}
		}
		return false
	}
}

// noRouteVia holds when no agent route has next hop via.
func noRouteVia(via netip.Addr) func(routeTable) bool {
	has := routesVia(via)
	return func(t routeTable) bool { return !has(t) }
}

// removedAt is when namespace i's route to dst was deleted while e was
// awaited; zero if it was not.
func (w *routeWatch) removedAt(e *expectation, i int, dst netip.Prefix) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return e.removed[i][dst]
}
