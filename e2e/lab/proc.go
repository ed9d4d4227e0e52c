package lab

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ProcStat is what the lab reads from /proc/<pid>/stat, in clock ticks
// (USER_HZ): CPU time spent, and the start time since boot that tells a
// process from a later one with the same pid.
type ProcStat struct {
	UTime, STime uint64 // fields 14 and 15
	StartTime    uint64 // field 22
}

// ReadProcStat parses /proc/<pid>/stat.
func ReadProcStat(pid int) (ProcStat, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ProcStat{}, err
	}
	// The command name (field 2) may contain spaces and parentheses; the
	// fields after it are counted from its last closing parenthesis.
	rest := string(data)
	if i := strings.LastIndexByte(rest, ')'); i >= 0 {
		rest = rest[i+1:]
	}
	fields := strings.Fields(rest)
	field := func(n int) (uint64, error) {
		i := n - 3 // fields 1 and 2 are cut off; index from 0
		if i >= len(fields) {
			return 0, fmt.Errorf("/proc/%d/stat: %d fields, want at least %d", pid, len(fields)+2, n)
		}
		v, err := strconv.ParseUint(fields[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: field %d: %w", pid, n, err)
		}
		return v, nil
	}
	var st ProcStat
	for n, dst := range map[int]*uint64{14: &st.UTime, 15: &st.STime, 22: &st.StartTime} {
		if *dst, err = field(n); err != nil {
			return ProcStat{}, err
		}
	}
	return st, nil
}

// CPUTicks is the process's user and system time.
func (s ProcStat) CPUTicks() uint64 { return s.UTime + s.STime }
