// Package hostclock owns the clock that the agent and the CNI plugin share
// on one host, on which a block's lease ends: CLOCK_BOOTTIME, tagged with
// the kernel's boot ID.
//
// CLOCK_BOOTTIME is one clock for every process of a host, never steps
// (NTP, an operator's date, a VM's wall-clock jump leave it alone) and keeps
// counting while the host is suspended, so a lease on it ends no later in
// real time than it says. It restarts from zero at boot: a reading from
// another boot (another boot ID) is no reading at all, and a lease saved
// before a reboot has ended.
//
// It touches nothing but the clock and /proc/sys/kernel/random/boot_id.
package hostclock

import (
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Instant is a reading of CLOCK_BOOTTIME in one boot of the host.
type Instant struct {
	// Boot is the kernel's boot ID.
	Boot string `json:"boot"`
	// Since is the time since that boot, suspend included.
	Since time.Duration `json:"sinceBoot"`
}

// Clock reads the host clock; tests give a fake one.
type Clock func() (Instant, error)

// bootIDPath is where Linux states the boot ID, a random UUID per boot.
const bootIDPath = "/proc/sys/kernel/random/boot_id"

// Now reads CLOCK_BOOTTIME and the boot ID: what a short-lived process
// (the CNI plugin) reads once.
func Now() (Instant, error) {
	boot, err := bootID()
	if err != nil {
		return Instant{}, err
	}
	return sinceBoot(boot)
}

// ThisBoot returns a Clock that reads the boot ID once, now, for a process
// that reads the clock often (the agent): a running process never sees
// another boot.
func ThisBoot() (Clock, error) {
	boot, err := bootID()
	if err != nil {
		return nil, err
	}
	return func() (Instant, error) { return sinceBoot(boot) }, nil
}

func bootID() (string, error) {
	b, err := os.ReadFile(bootIDPath)
	if err != nil {
		return "", fmt.Errorf("read the boot ID: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func sinceBoot(boot string) (Instant, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return Instant{}, fmt.Errorf("read CLOCK_BOOTTIME: %w", err)
	}
	return Instant{Boot: boot, Since: time.Duration(ts.Nano())}, nil
}

// IsZero reports whether i is no reading.
func (i Instant) IsZero() bool { return i.Boot == "" }

// Add returns i moved by d within the same boot.
func (i Instant) Add(d time.Duration) Instant { return Instant{Boot: i.Boot, Since: i.Since + d} }

// Before reports whether i is earlier than j in the same boot. Readings of
// different boots are not ordered: Before is false.
func (i Instant) Before(j Instant) bool {
	return !i.IsZero() && i.Boot == j.Boot && i.Since < j.Since
}

// Sub returns i-j, and false when they belong to different boots.
func (i Instant) Sub(j Instant) (time.Duration, bool) {
	if i.IsZero() || i.Boot != j.Boot {
		return 0, false
	}
	return i.Since - j.Since, true
}
