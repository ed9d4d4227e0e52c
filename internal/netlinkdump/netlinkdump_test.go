package netlinkdump

import (
	"errors"
	"fmt"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestRetry(t *testing.T) {
	other := errors.New("permission denied")
	tests := []struct {
		name      string
		results   []error // what each call returns, in order
		wantCalls int
		wantErr   error
		wantValue int
	}{
		{"first try", []error{nil}, 1, nil, 1},
		{"interrupted once", []error{netlink.ErrDumpInterrupted, nil}, 2, nil, 2},
		{"wrapped interruption", []error{fmt.Errorf("dump: %w", netlink.ErrDumpInterrupted), nil}, 2, nil, 2},
		{"other error is not retried", []error{other}, 1, other, 1},
		{"interrupted every time", []error{netlink.ErrDumpInterrupted, netlink.ErrDumpInterrupted, netlink.ErrDumpInterrupted}, Attempts, netlink.ErrDumpInterrupted, Attempts},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			v, err := Retry(func() (int, error) {
				calls++
				return calls, tt.results[calls-1]
			})
			if calls != tt.wantCalls {
				t.Errorf("calls = %d, want %d", calls, tt.wantCalls)
			}
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
			if v != tt.wantValue {
				t.Errorf("value = %d, want %d", v, tt.wantValue)
			}
		})
	}
}
