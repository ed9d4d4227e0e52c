package poll

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestUntil(t *testing.T) {
	calls := 0
	err := Until(context.Background(), "the third call", time.Millisecond, func() error {
		if calls++; calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("Until = %v after %d calls, want nil after 3", err, calls)
	}

	ctx, cancel := context.WithCancelCause(context.Background())
	exited := errors.New("the agent exited")
	err = Until(ctx, "a ready agent", time.Millisecond, func() error {
		cancel(exited)
		return errors.New("not ready")
	})
	if !errors.Is(err, exited) || !strings.Contains(err.Error(), "a ready agent") || !strings.Contains(err.Error(), "not ready") {
		t.Fatalf("Until ended by a cause = %v, want what, the cause and the last error", err)
	}
}

func TestHold(t *testing.T) {
	calls := 0
	if err := Hold(context.Background(), "routes kept", 20*time.Millisecond, time.Millisecond, func() error {
		calls++
		return nil
	}); err != nil || calls < 2 {
		t.Fatalf("Hold = %v after %d checks, want nil after several", err, calls)
	}
	broken := errors.New("route withdrawn")
	if err := Hold(context.Background(), "routes kept", time.Hour, time.Millisecond, func() error { return broken }); !errors.Is(err, broken) {
		t.Fatalf("Hold with a failing check = %v, want its error", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Hold(ctx, "routes kept", time.Hour, time.Millisecond, func() error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("Hold with ctx ended early = %v, want context.Canceled", err)
	}
}
