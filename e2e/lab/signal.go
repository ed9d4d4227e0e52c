package lab

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// SignalIf sends sig to process pid only if belongs(pid) still holds once
// the process is pinned by a pidfd. A pid read from a listing (a
// namespace's, a cgroup's, /proc) may be freed and handed to another
// process before the signal: on a small machine pid_max is 32,768 and the
// suite starts tens of thousands of processes, so a kill by number can hit
// a stranger, such as a parallel test's agent that has just started. The
// pidfd holds the process the pid named when it was opened; checking
// belongs after opening it makes sure that process is ours, and a process
// that exits in between gets no signal at all. A pid already gone is not
// an error.
func SignalIf(pid int, sig syscall.Signal, belongs func(pid int) bool) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfd of process %d: %w", pid, err)
	}
	defer unix.Close(fd)
	if !belongs(pid) {
		return nil
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("%v to process %d: %w", sig, pid, err)
	}
	return nil
}

// InNetNS reports whether process pid is in the network namespace bound
// at path.
func InNetNS(pid int, path string) bool {
	return sameFile(path, fmt.Sprintf("/proc/%d/ns/net", pid))
}

// InCgroup reports whether process pid is in cgroup parent (a path from a
// hierarchy's root, such as /grapevine-e2e-gvl1234-h1-containerd) or below
// it, in any hierarchy.
func InCgroup(pid int, parent string) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		// hierarchy-ID:controllers:path
		if f := strings.SplitN(line, ":", 3); len(f) == 3 && (f[2] == parent || strings.HasPrefix(f[2], parent+"/")) {
			return true
		}
	}
	return false
}

func sameFile(a, b string) bool {
	sa, err := os.Stat(a)
	if err != nil {
		return false
	}
	sb, err := os.Stat(b)
	return err == nil && os.SameFile(sa, sb)
}
