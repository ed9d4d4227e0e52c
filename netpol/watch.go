package netpol

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// Watching's restarts wait from watchBackoffMin, doubling up to
// watchBackoffMax while they keep failing.
const (
	watchBackoffMin = 100 * time.Millisecond
	watchBackoffMax = 10 * time.Second
)

// monitorBuffer is the receive buffer of the monitor's socket: an Apply of
// a large ruleset notifies every set element it writes, and a smaller
// buffer overflows (ENOBUFS), which costs a restart of watching.
const monitorBuffer = 8 << 20

// Watch implements Kernel with an nftables monitor in the kernel's
// namespace. It is told of every transaction and looks, for each, for a
// table, chain or rule of table inet grapevine-policy among its changes.
// Its first signal comes once the monitor listens.
//
// google/nftables v0.3.0 decodes every message of the nftables group,
// set elements included, whatever object the monitor is given: its filter
// reads flags&1<<type as (flags&1)<<type, so that a monitor of chains or
// rules alone would hear nothing, not even the end of a transaction.
// MonitorObjectAny is the one choice that works now and once that is
// fixed; elements are skipped here.
func (k *NFTKernel) Watch(ctx context.Context) <-chan struct{} {
	out := make(chan struct{}, 1)
	signal := func() {
		select {
		case out <- struct{}{}:
		default: // one pending signal stands for any number
		}
	}
	go func() {
		backoff := watchBackoffMin
		for {
			// An error, opening or watching, is not worth more than the
			// signal after the restart: the consumer's answer to both is
			// to check the table.
			if monitor, events, err := k.openMonitor(); err == nil {
				signal() // changes before this may have gone unseen
				if watchMonitor(ctx, monitor, events, signal) {
					backoff = watchBackoffMin
				}
				if ctx.Err() != nil {
					return
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, watchBackoffMax)
		}
	}()
	return out
}

// openMonitor starts a monitor of every nftables transaction in the
// kernel's namespace.
func (k *NFTKernel) openMonitor() (*nftables.Monitor, chan *nftables.MonitorEvents, error) {
	conn, err := k.conn(monitorBuffer)
	if err != nil {
		return nil, nil, err
	}
	monitor := nftables.NewMonitor(nftables.WithMonitorObject(nftables.MonitorObjectAny))
	events, err := conn.AddGenerationalMonitor(monitor)
	if err != nil {
		return nil, nil, fmt.Errorf("network policy: monitor nftables: %w", err)
	}
	return monitor, events, nil
}

// watchMonitor signals for every transaction of events that touches our
// table, until ctx ends or the monitor fails (an out-of-band error such as
// ENOBUFS, after which it closes events). It reports whether any
// transaction came through, i.e. whether watching worked for a while.
func watchMonitor(ctx context.Context, monitor *nftables.Monitor, events chan *nftables.MonitorEvents, signal func()) (delivered bool) {
	defer func() {
		monitor.Close()
		// The monitor's goroutine may be sending its last events; it
		// closes events when it ends.
		for range events {
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return delivered
		case gen, ok := <-events:
			if !ok || gen.GeneratedBy == nil || gen.GeneratedBy.Type == nftables.MonitorEventTypeOOB {
				return delivered
			}
			delivered = true
			if slices.ContainsFunc(gen.Changes, touchesOurTable) {
				signal()
			}
		}
	}
}

// touchesOurTable reports whether a monitor event is of table inet
// grapevine-policy, one of its chains or one of its rules.
func touchesOurTable(ev *nftables.MonitorEvent) bool {
	var t *nftables.Table
	switch data := ev.Data.(type) {
	case *nftables.Table:
		t = data
	case *nftables.Chain:
		t = data.Table
	case *nftables.Rule:
		t = data.Table
	}
	return t != nil && t.Name == TableName && t.Family == nftables.TableFamilyINet
}

// Intact implements Kernel: it lists the chains of the inet tables and the
// sets of ours, without their rules or elements.
func (k *NFTKernel) Intact(rs Ruleset) (bool, error) {
	conn, err := k.conn(0)
	if err != nil {
		return false, err
	}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("network policy: list chains: %w", err)
	}
	var chainNames []string
	for _, c := range chains {
		if c.Table != nil && c.Table.Name == TableName {
			chainNames = append(chainNames, c.Name)
		}
	}
	wantChains, wantSets := tableObjects(rs)
	if !sameNames(chainNames, wantChains) {
		return false, nil // no table lists no chain
	}
	sets, err := conn.GetSets(table())
	if errors.Is(err, unix.ENOENT) {
		return false, nil // deleted since its chains were listed
	}
	if err != nil {
		return false, fmt.Errorf("network policy: list sets: %w", err)
	}
	var setNames []string
	for _, s := range sets {
		if !s.Anonymous {
			setNames = append(setNames, s.Name)
		}
	}
	return sameNames(setNames, wantSets), nil
}

// tableObjects names the chains and the named sets and maps Apply writes
// for rs: the Ruleset's chains and the two base chains; each Ruleset set
// once per family it has addresses of, and the verdict maps and
// unknown-pods once per family each.
func tableObjects(rs Ruleset) (chains, sets []string) {
	for _, c := range rs.Chains {
		chains = append(chains, c.Name)
	}
	chains = append(chains, egressChain, ingressChain)
	for _, s := range rs.Sets {
		for _, f := range families {
			if len(ofFamily(s.Ranges, f.v6)) > 0 {
				sets = append(sets, s.Name+f.suffix)
			}
		}
	}
	for _, f := range families {
		sets = append(sets, unknownSet+f.suffix, egressPodsMap+f.suffix, ingressMap+f.suffix)
	}
	return chains, sets
}

// sameNames reports whether got and want hold the same names, in any
// order, as many times each.
func sameNames(got, want []string) bool {
	if len(got) != len(want) {
		return false
	}
	g, w := slices.Clone(got), slices.Clone(want)
	slices.Sort(g)
	slices.Sort(w)
	return slices.Equal(g, w)
}
