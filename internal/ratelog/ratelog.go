// Package ratelog bounds how often a repeated line is logged: a flood of
// hostile packets or connections must cost a counter increment each, not a
// log line each. It is shared by the mesh (gossip packets) and the ledger
// (its port's refusals), so it depends on nothing but the standard library.
package ratelog

import (
	"sync"
	"time"
)

// Limiter lets at most Burst lines through per Every; the lines it holds
// back are counted and reported with the next line it lets through.
type Limiter struct {
	burst int
	every time.Duration

	mu          sync.Mutex
	windowStart time.Time
	inWindow    int
	suppressed  int
}

// New returns a limiter of burst lines per every.
func New(burst int, every time.Duration) *Limiter {
	return &Limiter{burst: max(burst, 1), every: every}
}

// Allow reports whether a line may be logged at now and, if so, how many
// lines were held back since the last one let through (to log with it).
func (l *Limiter) Allow(now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.windowStart.IsZero() || now.Sub(l.windowStart) >= l.every || now.Before(l.windowStart) {
		l.windowStart, l.inWindow = now, 0
	}
	if l.inWindow >= l.burst {
		l.suppressed++
		return false, 0
	}
	l.inWindow++
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}
