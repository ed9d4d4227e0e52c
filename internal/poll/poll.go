// Package poll waits for conditions: the one poller of Grapevine's tests,
// labs and benchmarks. A test waits for what it needs (a route, a lease, a
// leader), never for a fixed time; poll owns nothing else.
package poll

import (
	"context"
	"fmt"
	"time"
)

// Sleep waits d or until ctx ends, whichever comes first.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// Until calls check every interval until it returns nil or ctx ends. The
// error names what was awaited, why the wait ended (ctx's cause: cancel it
// with a cause to stop early, say when a process exits) and check's last
// error. Tests wait this way for what they need, never for a fixed time.
func Until(ctx context.Context, what string, interval time.Duration, check func() error) error {
	for {
		err := check()
		if err == nil {
			return nil
		}
		if werr := Sleep(ctx, interval); werr != nil {
			return fmt.Errorf("waiting for %s: %w (last: %w)", what, werr, err)
		}
	}
}

// Hold calls check every interval for the window d and returns its first
// error: for what must stay true throughout (no route withdrawn, no block
// handed out), where Until waits for what must become true. ctx ending
// before the window does is an error too.
func Hold(ctx context.Context, what string, d, interval time.Duration, check func() error) error {
	end := time.Now().Add(d)
	for {
		if err := check(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		left := time.Until(end)
		if left <= 0 {
			return nil
		}
		if err := Sleep(ctx, min(interval, left)); err != nil {
			return fmt.Errorf("%s: the window ended early: %w", what, err)
		}
	}
}
