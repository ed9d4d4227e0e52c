package node

import (
	"context"
	"sync"
	"time"

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
//     VTEP MAC (see VTEPMAC), for instance an operator deleting one.
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

// subscription is an open pair of route and link subscriptions.
type subscription struct {
	routes chan netlink.RouteUpdate
	links  chan netlink.LinkUpdate
	neighs chan netlink.NeighUpdate
	done   chan struct{}
	// handle looks up the link of a neighbour event; nil: no lookups.
	handle *netlink.Handle
}

// onTunnel reports whether index is the VXLAN device's. Neighbour events of
// a deleted entry may lack its MAC, so the link tells ours apart from pods'.
func (s *subscription) onTunnel(index int) bool {
	if s.handle == nil || index == 0 {
		return false
	}
	l, err := s.handle.LinkByIndex(index)
	return err == nil && l.Attrs().Name == TunnelName
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
	s.handle = h
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
			if int(u.Route.Protocol) == RouteProtocol && u.Route.Table == unix.RT_TABLE_MAIN {
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
			if isVTEPMAC(u.HardwareAddr) || sub.onTunnel(u.LinkIndex) {
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
