package bench

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat;
// Linux fixes it at 100 on every architecture Grapevine runs on.
const clockTicks = 100

// measureIdle samples the agents of hosts over window while nothing
// happens: resident memory at the end, CPU time spent during it.
func measureIdle(ctx context.Context, hosts []*lab.Host, window time.Duration) ([]Row, error) {
	// Let the last join's gossip die down first.
	if err := poll.Sleep(ctx, 5*time.Second); err != nil {
		return nil, err
	}
	pids := make([]int, len(hosts))
	before := make([]uint64, len(hosts))
	sentBefore := make([]float64, len(hosts))
	for i, h := range hosts {
		sent, _, err := ledgerSent(ctx, h)
		if err != nil {
			return nil, err
		}
		sentBefore[i] = sent
		pid := h.AgentPID()
		if pid == 0 {
			return nil, fmt.Errorf("no grapevine process in namespace %s", h.Namespace.Name)
		}
		ticks, err := cpuTicks(pid)
		if err != nil {
			return nil, err
		}
		pids[i], before[i] = pid, ticks
	}
	t0 := time.Now()
	if err := poll.Sleep(ctx, window); err != nil {
		return nil, err
	}
	elapsed := time.Since(t0)
	var cpu, rss, anon, file, pss []float64
	leader, leaderSent := -1, 0.0
	for i, h := range hosts {
		sent, leads, err := ledgerSent(ctx, h)
		if err != nil {
			return nil, err
		}
		if leads {
			leader, leaderSent = i, sent-sentBefore[i]
		}
	}
	for i, pid := range pids {
		after, err := cpuTicks(pid)
		if err != nil {
			return nil, err
		}
		cpu = append(cpu, 100*float64(after-before[i])/clockTicks/elapsed.Seconds())
		mem, err := memoryKB(pid)
		if err != nil {
			return nil, err
		}
		rss = append(rss, float64(mem["VmRSS"])/1024)
		anon = append(anon, float64(mem["RssAnon"])/1024)
		file = append(file, float64(mem["RssFile"])/1024)
		pss = append(pss, float64(mem["Pss"])/1024)
	}
	rpcs := Row{ID: "8c", Measure: "ledger RPCs per follower, idle", Unit: "/s", Samples: len(hosts) - 1,
		Target: Target{Kind: AtMost, Limit: 5}}
	leaderCPU := Row{ID: "8d", Measure: "ledger leader's agent CPU, idle", Unit: "%", Samples: 1, Target: Target{Kind: AtMost, Limit: 0.2}}
	if leader < 0 {
		rpcs.NotMeasured, leaderCPU.NotMeasured = "no leader", "no leader"
		rpcs.Note = "no agent reported itself the ledger's leader at the end of the window"
		leaderCPU.Note = rpcs.Note
	} else {
		rpcs.Value = leaderSent / float64(len(hosts)-1) / elapsed.Seconds()
		rpcs.Note = fmt.Sprintf("raft RPCs the leader (%s) sent over %v, counted at its transport (grapevine_ledger_raft_rpcs_sent_total), per follower",
			hosts[leader].Name, elapsed.Round(time.Second))
		leaderCPU.Value = cpu[leader]
		leaderCPU.Note = fmt.Sprintf("utime+stime of %s's agent over %v, %% of one core", hosts[leader].Name, elapsed.Round(time.Second))
	}
	return []Row{
		{ID: "8a", Measure: "agent resident memory, idle (worst of 5)", Unit: "MB", Value: slices.Max(rss), Samples: len(rss),
			Peer:   &Peer{Name: "flanneld", Value: 40, Published: true},
			Target: Target{Kind: AtMost, Limit: 25}, // issue 20: an idle agent cheaper than flanneld
			Note: fmt.Sprintf("VmRSS of each agent %s MB, of which anonymous (heap, stacks) %s MB and file-backed (the binary's pages) %s MB; "+
				"proportional (binary pages shared by the 5 agents split among them) %s MB; flanneld also needs etcd, 34 MB (published)",
				formatAll(rss), formatAll(anon), formatAll(file), formatAll(pss))},
		{ID: "8b", Measure: "agent CPU, idle (worst of 5)", Unit: "%", Value: slices.Max(cpu), Samples: len(cpu),
			Target: Target{Kind: AtMost, Limit: 0.2},
			Note:   fmt.Sprintf("utime+stime over %v, %% of one core, each agent %s", elapsed.Round(time.Second), formatAll(cpu))},
		rpcs, leaderCPU,
	}, nil
}

// ledgerSent reads from an agent's /metrics the raft RPCs it has sent, of
// every kind, and whether it leads the ledger.
func ledgerSent(ctx context.Context, h *lab.Host) (sent float64, leader bool, err error) {
	_, metrics, err := h.Get(ctx, "/metrics")
	if err != nil {
		return 0, false, err
	}
	for _, n := range lab.Counters(metrics, "grapevine_ledger_raft_rpcs_sent_total") {
		sent += n
	}
	return sent, strings.Contains("\n"+metrics+"\n", "\ngrapevine_ledger_leader 1\n"), nil
}

func formatAll(v []float64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = strconv.FormatFloat(x, 'g', 3, 64)
	}
	return strings.Join(s, ", ")
}

// cpuTicks is the process's utime+stime in clock ticks.
func cpuTicks(pid int) (uint64, error) {
	st, err := lab.ReadProcStat(pid)
	return st.CPUTicks(), err
}

// memoryKB returns the Vm* and Rss* lines of /proc/<pid>/status and Pss
// from /proc/<pid>/smaps_rollup, in kB.
func memoryKB(pid int) (map[string]int, error) {
	mem := make(map[string]int)
	for _, f := range []string{"status", "smaps_rollup"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, f))
		if err != nil {
			return nil, err
		}
		for line := range strings.Lines(string(data)) {
			k, v, ok := strings.Cut(line, ":")
			if !ok || !(strings.HasPrefix(k, "Vm") || strings.HasPrefix(k, "Rss") || k == "Pss") {
				continue
			}
			if n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB")); err == nil {
				mem[k] = n
			}
		}
	}
	if _, ok := mem["VmRSS"]; !ok {
		return nil, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
	}
	return mem, nil
}
