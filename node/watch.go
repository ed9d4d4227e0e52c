package node

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// resubscribeDelay spaces attempts to reopen a broken subscription.
const resubscribeDelay = time.Second

// WatchRoutes reports, in the calling thread's network namespace, the kernel
// events after which a reconcile may have work to do:
//
//   - a change to one of Grapevine's routes (proto RouteProtocol, main
//     table), for instance an operator deleting one;
//   - a link going down, coming up or disappearing: the kernel then flushes
//     the IPv4 routes through it without a route notification;
//   - a change to a neighbour or FDB entry on the VXLAN device or for a
//     VTEP MAC (see VTEPMAC), for instance an operator deleting one;
//   - a change to an IPv4 /32 or IPv6 /128 route in the main table (a
//     pod's route, see PodKernel), and a deleted or no longer PERMANENT
//     neighbour entry on a host veth (a link whose alias begins with
//     NetworkName and "/");
//   - a change to table ip or ip6 grapevine (the masquerade): a rule,
//     chain or the table deleted or added;
//   - a change to the FORWARD chain of table ip filter (iptables-nft), or
//     to that table (see isForwardChange).
//
// Notifications are coalesced: the channel holds at most one, and a receiver
// that was busy gets one for all the events it missed. The subscriptions
// are open when WatchRoutes returns, so every later event is reported; a
// broken one is reopened and followed by a notification, since events may
// have been lost. The channel closes when ctx ends, after the watcher has
// stopped.
func WatchRoutes(ctx context.Context) <-chan struct{} {
	return watch(ctx, netns.None())
}

// WatchRoutes is the package's WatchRoutes for k's network namespace; k must
// stay open until ctx ends.
func (k *NetlinkKernel) WatchRoutes(ctx context.Context) <-chan struct{} {
	if k.netns == nil {
		return WatchRoutes(ctx)
	}
	return watch(ctx, netns.NsHandle(k.netns.Fd()))
}

// subscription is an open set of route, link, neighbour and nftables
// subscriptions.
type subscription struct {
	routes chan netlink.RouteUpdate
	links  chan netlink.LinkUpdate
	neighs chan netlink.NeighUpdate
	// nft carries the nftables changes; nil: none (a select never picks it).
	nft        chan *nftables.MonitorEvents
	nftMonitor *nftables.Monitor
	done       chan struct{}
	// handle looks up the link of a neighbour event; nil: no lookups.
	handle *netlink.Handle
	// linkByIndex is handle.LinkByIndex; tests replace it.
	linkByIndex func(int) (netlink.Link, error)
}

// neighbourMatters reports whether a neighbour event is about an entry a
// reconcile keeps: any on the VXLAN device (events of a deleted entry may
// lack its MAC, so the link tells ours apart), and a pod's entry (IPv4 or
// IPv6, not link-local) on a host veth that was deleted or is no longer
// PERMANENT.
func (s *subscription) neighbourMatters(u netlink.NeighUpdate) bool {
	if s.linkByIndex == nil || u.LinkIndex == 0 {
		return false
	}
	l, err := s.linkByIndex(u.LinkIndex)
	if err != nil {
		return false
	}
	attrs := l.Attrs()
	if attrs.Name == TunnelName {
		return true
	}
	// A host veth's IPv6 link-local neighbours (the pod's fe80:: address,
	// learnt by NDP) come and go with traffic and are nobody's to keep.
	podEntry := u.Family == unix.AF_INET || u.Family == unix.AF_INET6 && !u.IP.IsLinkLocalUnicast()
	return strings.HasPrefix(attrs.Alias, NetworkName+"/") && podEntry &&
		(u.Type == unix.RTM_DELNEIGH || u.State&netlink.NUD_PERMANENT == 0)
}

// isHostRoute reports whether r is an IPv4 /32 or IPv6 /128 route in the
// main table, as every pod's route is.
func isHostRoute(r netlink.Route) bool {
	if r.Table != unix.RT_TABLE_MAIN || r.Dst == nil {
		return false
	}
	ones, bits := r.Dst.Mask.Size()
	return ones == bits && bits > 0
}

// isMasqueradeChange reports whether an nftables change touches table ip
// grapevine or table ip6 grapevine.
func isMasqueradeChange(ev *nftables.MonitorEvent) bool {
	// A message that failed to parse carries a nil object.
	var t *nftables.Table
	switch d := ev.Data.(type) {
	case *nftables.Table:
		t = d
	case *nftables.Chain:
		if d != nil {
			t = d.Table
		}
	case *nftables.Rule:
		if d != nil {
			t = d.Table
		}
	}
	return t != nil && t.Name == NFTTable &&
		(t.Family == nftables.TableFamilyIPv4 || t.Family == nftables.TableFamilyIPv6)
}

// isForwardChange reports whether an nftables change touches the FORWARD
// chain of iptables-nft's table ip filter (a policy set to DROP, as Docker
// does, or a rule added or deleted), or that table as a whole: the
// reconcile then rechecks the pool's accept rules at once rather than at
// its next resync. iptables-legacy's chains announce nothing.
func isForwardChange(ev *nftables.MonitorEvent) bool {
	var t *nftables.Table
	chain := ""
	switch d := ev.Data.(type) {
	case *nftables.Table:
		t = d
	case *nftables.Chain:
		if d != nil {
			t, chain = d.Table, d.Name
		}
	case *nftables.Rule:
		if d != nil && d.Chain != nil {
			t, chain = d.Table, d.Chain.Name
		}
	}
	if t == nil || t.Name != "filter" || t.Family != nftables.TableFamilyIPv4 {
		return false
	}
	_, isTable := ev.Data.(*nftables.Table)
	return isTable || chain == "FORWARD"
}

// subscribeNFT opens the nftables monitor of ns.
func (s *subscription) subscribeNFT(ns netns.NsHandle) error {
	var opts []nftables.ConnOption
	if ns != netns.None() {
		opts = append(opts, nftables.WithNetNSFd(int(ns)))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return err
	}
	s.nftMonitor = nftables.NewMonitor(
		nftables.WithMonitorAction(nftables.MonitorActionAny),
		nftables.WithMonitorObject(nftables.MonitorObjectRuleset),
		nftables.WithMonitorEventBuffer(64))
	s.nft, err = conn.AddGenerationalMonitor(s.nftMonitor)
	if err != nil {
		s.nftMonitor, s.nft = nil, nil
	}
	return err
}

func subscribe(ns netns.NsHandle) (*subscription, error) {
	s := &subscription{
		routes: make(chan netlink.RouteUpdate, 64),
		links:  make(chan netlink.LinkUpdate, 64),
		neighs: make(chan netlink.NeighUpdate, 64),
		done:   make(chan struct{}),
	}
	err := netlink.RouteSubscribeWithOptions(s.routes, s.done, netlink.RouteSubscribeOptions{Namespace: &ns})
	if err != nil {
		close(s.done)
		return nil, err
	}
	if err := netlink.LinkSubscribeWithOptions(s.links, s.done, netlink.LinkSubscribeOptions{Namespace: &ns}); err != nil {
		// A failed subscription does not close its channel.
		close(s.links)
		close(s.neighs)
		s.close()
		return nil, err
	}
	if err := netlink.NeighSubscribeWithOptions(s.neighs, s.done, netlink.NeighSubscribeOptions{Namespace: &ns}); err != nil {
		close(s.neighs)
		s.close()
		return nil, err
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		s.close()
		return nil, err
	}
	s.handle, s.linkByIndex = h, h.LinkByIndex
	// Without nftables (a kernel lacking nf_tables) the masquerade cannot
	// be set up either, and the reconcile says so; the other events still
	// matter.
	_ = s.subscribeNFT(ns)
	return s, nil
}

// close ends the subscriptions and drains their channels until the
// subscriber goroutines have exited.
func (s *subscription) close() {
	close(s.done)
	var wg sync.WaitGroup
	wg.Go(func() {
		for range s.links {
		}
	})
	wg.Go(func() {
		for range s.neighs {
		}
	})
	if s.nftMonitor != nil {
		s.nftMonitor.Close()
		wg.Go(func() {
			for range s.nft {
			}
		})
	}
	for range s.routes {
	}
	wg.Wait()
	if s.handle != nil {
		s.handle.Close()
	}
}

func watch(ctx context.Context, ns netns.NsHandle) <-chan struct{} {
	out := make(chan struct{}, 1)
	notify := func() {
		select {
		case out <- struct{}{}:
		default:
		}
	}
	sub, err := subscribe(ns)
	go func() {
		defer close(out)
		for {
			if err == nil {
				stopped := !forward(ctx, sub, notify)
				sub.close()
				if stopped {
					return
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(resubscribeDelay):
			}
			if sub, err = subscribe(ns); err == nil {
				notify() // for the events while unsubscribed
			}
		}
	}()
	return out
}

// forward turns kernel events into notifications until ctx ends (false) or
// a subscription breaks (true).
func forward(ctx context.Context, sub *subscription, notify func()) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case u, ok := <-sub.routes:
			if !ok {
				return true
			}
			ours := int(u.Route.Protocol) == RouteProtocol && u.Route.Table == unix.RT_TABLE_MAIN
			if ours || isHostRoute(u.Route) {
				notify()
			}
		case u, ok := <-sub.links:
			if !ok {
				return true
			}
			if u.Header.Type == unix.RTM_DELLINK || u.Change&unix.IFF_UP != 0 {
				notify()
			}
		case u, ok := <-sub.neighs:
			if !ok {
				return true
			}
			if isVTEPMAC(u.HardwareAddr) || sub.neighbourMatters(u) {
				notify()
			}
		case evs, ok := <-sub.nft:
			if !ok {
				return true
			}
			if evs.GeneratedBy != nil && evs.GeneratedBy.Type == nftables.MonitorEventTypeOOB {
				return true // the monitor's socket failed; it closes its channel
			}
			if slices.ContainsFunc(evs.Changes, isMasqueradeChange) || slices.ContainsFunc(evs.Changes, isForwardChange) {
				notify()
			}
		}
	}
}

// isVTEPMAC reports whether mac has the form VTEPMAC gives every host's
// VXLAN device: the entries Grapevine owns carry it, pods' never do.
func isVTEPMAC(mac []byte) bool {
	return len(mac) == 6 && mac[0] == 0x0e && mac[1] == 0x74
}
