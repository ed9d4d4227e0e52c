package ratelog

import (
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	type step struct {
		at             time.Duration
		ok             bool
		wantSuppressed int
	}
	for _, tt := range []struct {
		name  string
		burst int
		steps []step
	}{
		{"burst passes, rest held back", 2, []step{{0, true, 0}, {1, true, 0}, {2, false, 0}, {3, false, 0}}},
		{"next window reports what was held back", 1, []step{{0, true, 0}, {time.Millisecond, false, 0}, {2 * time.Millisecond, false, 0}, {time.Second, true, 2}, {time.Second + 1, false, 0}}},
		{"quiet stream never suppressed", 1, []step{{0, true, 0}, {time.Second, true, 0}, {3 * time.Second, true, 0}}},
		{"clock stepping back opens a window", 1, []step{{time.Second, true, 0}, {0, true, 0}}},
		{"zero burst still lets one through", 0, []step{{0, true, 0}, {1, false, 0}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := New(tt.burst, time.Second)
			for i, s := range tt.steps {
				ok, n := l.Allow(t0.Add(s.at))
				if ok != s.ok || n != s.wantSuppressed {
					t.Fatalf("step %d at %s: Allow = %v, %d; want %v, %d", i, s.at, ok, n, s.ok, s.wantSuppressed)
				}
			}
		})
	}
}
