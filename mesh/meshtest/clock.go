package meshtest

import (
	"github.com/grapevine-net/grapevine/internal/hostclock"

	"sync"
	"time"
)

// Clock is a node's wall clock: real time shifted by an offset a test
// sets, so nodes of one cluster can disagree by hours. Give a node one in
// Spec.Now (clock.Now).
type Clock struct {
	mu     sync.Mutex
	offset time.Duration
}

// NewClock returns a clock offset from real time.
func NewClock(offset time.Duration) *Clock { return &Clock{offset: offset} }

// Now is real time plus the offset.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

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
