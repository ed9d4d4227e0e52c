// Package netlinkdump repeats netlink dumps that a concurrent change
// interrupted. It owns nothing else; node and plugin share it so that both
// treat an inconsistent dump alike.
package netlinkdump

import (
	"errors"

	"github.com/vishvananda/netlink"
)

// Attempts bounds the tries of one dump.
const Attempts = 3

// Retry runs dump until it is not interrupted by a concurrent change, at
// most Attempts times. Pods come and go while routes, addresses, links and
// neighbours are listed; the kernel then flags the dump (NLM_F_DUMP_INTR)
// and netlink returns ErrDumpInterrupted with results that may miss
// entries, which must not be taken for the truth.
func Retry[T any](dump func() (T, error)) (T, error) {
	var v T
	var err error
	for range Attempts {
		if v, err = dump(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}
