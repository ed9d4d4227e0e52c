package node

import (
	"context"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// resubscribeDelay spaces attempts to (re)open the route subscription.
const resubscribeDelay = time.Second

// WatchRoutes reports changes to Grapevine's routes (proto RouteProtocol, main
// table) in the calling thread's network namespace, for instance an operator
// deleting one: a reconcile then puts it back. Notifications are coalesced:
// the channel holds at most one, and a receiver that was busy gets one for
// all the changes it missed. A failed or broken subscription is reopened
// and followed by a notification, since changes may have been lost. The
// channel closes when ctx ends, after the watcher has stopped.
//
// Routes the kernel removes with a deleted link are flushed without a
// notification; the agent's periodic resync covers that case.
func WatchRoutes(ctx context.Context) <-chan struct{} {
	return watchRoutes(ctx, netns.None())
}

// WatchRoutes is the package's WatchRoutes for k's network namespace; k must
// stay open until ctx ends.
func (k *NetlinkKernel) WatchRoutes(ctx context.Context) <-chan struct{} {
	if k.netns == nil {
		return WatchRoutes(ctx)
	}
	return watchRoutes(ctx, netns.NsHandle(k.netns.Fd()))
}

func watchRoutes(ctx context.Context, ns netns.NsHandle) <-chan struct{} {
	out := make(chan struct{}, 1)
	notify := func() {
		select {
		case out <- struct{}{}:
		default:
		}
	}
	subscribe := func() (chan netlink.RouteUpdate, chan struct{}, error) {
		updates := make(chan netlink.RouteUpdate, 64)
		done := make(chan struct{})
		opts := netlink.RouteSubscribeOptions{Namespace: &ns}
		if err := netlink.RouteSubscribeWithOptions(updates, done, opts); err != nil {
			close(done)
			return nil, nil, err
		}
		return updates, done, nil
	}
	// The first subscription is made before returning, so every change
	// after the call is reported.
	updates, done, err := subscribe()
	go func() {
		defer close(out)
		for {
			if err == nil {
				stopped := !forward(ctx, updates, notify)
				close(done)
				if stopped {
					for range updates { // until the subscriber goroutine exits
					}
					return
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(resubscribeDelay):
			}
			if updates, done, err = subscribe(); err == nil {
				notify() // for the changes made while unsubscribed
			}
		}
	}()
	return out
}

// forward turns route updates into notifications until ctx ends (false) or
// the subscription breaks (true).
func forward(ctx context.Context, updates <-chan netlink.RouteUpdate, notify func()) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case u, ok := <-updates:
			if !ok {
				return true
			}
			if int(u.Route.Protocol) == RouteProtocol && u.Route.Table == unix.RT_TABLE_MAIN {
				notify()
			}
		}
	}
}
