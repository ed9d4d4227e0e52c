package meshtest

import (
	"sync"
	"time"

	"github.com/grapevine-net/grapevine/internal/hostclock"
)

// Clock is a node's host clock: the real one shifted by an offset a test
// sets, so hosts of one cluster booted hours apart, and a test can suspend
// one (Advance). Give a node one in Spec.Clock (clock.Host).
type Clock struct {
	mu     sync.Mutex
	offset time.Duration
}

// NewClock returns a clock offset from real time.
func NewClock(offset time.Duration) *Clock { return &Clock{offset: offset} }

// Host is the host clock (CLOCK_BOOTTIME) plus the offset: give it to a
// node in Spec.Clock, so that its leases run on a clock a test moves.
func (c *Clock) Host() (hostclock.Instant, error) {
	now, err := hostclock.Now()
	if err != nil {
		return now, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return now.Add(c.offset), nil
}

// Advance moves the clock by d (negative: back).
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}
