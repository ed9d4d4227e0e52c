package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/grapevine-net/grapevine/doctor"
	"github.com/grapevine-net/grapevine/mesh/ledger"
	"github.com/grapevine-net/grapevine/status"
)

// `grapevine doctor --all` asks the local agent, over its status socket,
// for every host's findings. The agent runs doctor itself against its own
// status, and asks each live member's agent for its findings over the
// ledger's connection: TLS with the certificate derived from the gossip
// key, dialed from a member's address, which every member already accepts
// from every other. No new port and no unauthenticated endpoint: a host
// without the key gets nothing.

// diagnoser runs doctor on this host against st; netlinkHost's reads the
// kernel, tests pass a fake or none.
type diagnoser func(ctx context.Context, st status.Report) []doctor.Finding

func linuxDiagnoser(ctx context.Context, st status.Report) []doctor.Finding {
	return doctor.Diagnose(doctor.Observe(ctx, doctor.NewLinuxHost(), &doctor.LinuxNetwork{}, st, nil))
}

// doctorAllWait bounds a --all run: each peer's doctor run, at most
// doctorDeadline, and the answer's way back, within callAgent's 10 s.
const doctorAllWait = 9 * time.Second

// ownSummary runs doctor on this host against the agent's status. Runs
// are one at a time (each sends probes to every peer); a peer's request
// that finds one under way is refused (wait: false) rather than queued.
func (a *agent) ownSummary(ctx context.Context, wait bool) (doctor.Summary, error) {
	if a.diagnose == nil {
		return doctor.Summary{}, errors.New("this agent does not run doctor")
	}
	if wait {
		a.doctorRun.Lock()
	} else if !a.doctorRun.TryLock() {
		return doctor.Summary{}, errors.New("a doctor run is under way on this host; ask again")
	}
	defer a.doctorRun.Unlock()
	ctx, cancel := context.WithTimeout(ctx, doctorDeadline)
	defer cancel()
	return doctor.Summarize(a.opts.NodeName, a.diagnose(ctx, a.fullStatus(ctx))), nil
}

// ownReport is ownSummary as a member's report (mesh.Config.Report).
func (a *agent) ownReport(ctx context.Context) ([]byte, error) {
	s, err := a.ownSummary(ctx, false)
	if err != nil {
		return nil, err
	}
	return fitReport(s)
}

// fitReport encodes s within ledger.MaxReport: causes and fixes go first
// (the table shows neither), then findings from the end, counted.
func fitReport(s doctor.Summary) ([]byte, error) {
	b, err := json.Marshal(s)
	if err != nil || len(b) <= ledger.MaxReport {
		return b, err
	}
	for i := range s.Findings {
		s.Findings[i].Cause, s.Findings[i].Fix = "", ""
	}
	all := len(s.Findings)
	for {
		b, err = json.Marshal(s)
		if err != nil || len(b) <= ledger.MaxReport || len(s.Findings) == 0 {
			return b, err
		}
		s.Findings = s.Findings[:len(s.Findings)/2]
		s.Err = fmt.Sprintf("%d of %d findings left out: run grapevine doctor on %s", all-len(s.Findings), all, s.Host)
	}
}

// doctorAll is every live member's summary and this host's, this host
// first, then by name.
func (a *agent) doctorAll(ctx context.Context) []doctor.Summary {
	ctx, cancel := context.WithTimeout(ctx, doctorAllWait)
	defer cancel()
	v := a.mesh.View()
	var members []netip.AddrPort
	var names []string
	for _, m := range v.Members {
		if m.Foreign || !m.State.Live() || !m.Addr.IsValid() {
			continue
		}
		members = append(members, netip.AddrPortFrom(m.Addr, uint16(a.opts.LedgerPort)))
		names = append(names, m.Name)
	}
	out := make([]doctor.Summary, len(members)+1)
	var wg sync.WaitGroup
	wg.Go(func() {
		s, err := a.ownSummary(ctx, true)
		if err != nil {
			s = doctor.Summary{Host: a.opts.NodeName, Err: err.Error()}
		}
		out[0] = s
	})
	for i, addr := range members {
		wg.Go(func() {
			s := doctor.Summary{Host: names[i]}
			report, err := a.mesh.Report(ctx, addr)
			if err == nil {
				err = json.Unmarshal(report, &s)
			}
			if err != nil {
				s = doctor.Summary{Host: names[i], Err: err.Error()}
			}
			s.Host = names[i] // the name gossip knows, whatever the answer says
			out[i+1] = s
		})
	}
	wg.Wait()
	slices.SortStableFunc(out[1:], func(x, y doctor.Summary) int { return cmp.Compare(x.Host, y.Host) })
	return out
}
