package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// crashScenario is one kind of crash in the routed lab: which hosts die at
// once.
type crashScenario struct {
	id, measure string
	victims     []int // host numbers
}

// crashScenarios: in a routed lab of h1 and h2 on one LAN and h3 behind the
// router, h3 is a VXLAN peer of both others, h2 a direct peer of h1 and a
// VXLAN peer of h3; when both die, h1 is the only survivor.
var crashScenarios = []crashScenario{
	{id: "10f", measure: "crash of a VXLAN peer (kill -9, link cut) until both peers withdrew its route", victims: []int{3}},
	{id: "10g", measure: "crash of a peer direct to one host, VXLAN to the other, until both withdrew", victims: []int{2}},
	{id: "10h", measure: "two of three hosts crash at once (a direct and a VXLAN peer) until the survivor withdrew both", victims: []int{2, 3}},
}

// crashVerdicts is when, after a crash, the survivors' agents logged
// memberlist's suspicion and death verdicts and the data path's down verdict
// about a victim: the latest across survivors, zero if not logged.
type crashVerdicts struct {
	suspect, dead, pathDown time.Duration
}

func (v crashVerdicts) String() string {
	return fmt.Sprintf("suspect %v, dead %v, data path down %v", v.suspect.Round(10*time.Millisecond),
		v.dead.Round(10*time.Millisecond), v.pathDown.Round(10*time.Millisecond))
}

// MeasureCrashes builds a routed lab of three hosts and times crashes (link
// cut, then kill -9) of a VXLAN peer, of a peer that is direct to one host
// and VXLAN to another, and of two hosts at once: CrashTrials of each, from
// the cut until the last survivor's kernel reported the last victim's block
// route gone. From the survivors' logs it tells which verdict came last:
// memberlist's (suspect, then dead) or the data path's. Then it stops the
// agent behind the router for Freeze, FrozenTrials times, while pods on it
// and on h1 ping each other over VXLAN.
func MeasureCrashes(ctx context.Context, cfg LabConfig) (_ []Row, err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.CrashTrials < 1 && cfg.FrozenTrials < 1 {
		return nil, errors.New("no crash or frozen-agent trials")
	}
	l, err := lab.New(ctx, lab.Config{Hosts: 2, Routed: true, Hosts2: 1, BinDir: cfg.BinDir, CNIPath: cfg.CNIPath, Logger: log})
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, l.Close(context.WithoutCancel(ctx))) }()
	if err := l.StartAgents(ctx); err != nil {
		return nil, err
	}
	meshCtx, cancel := context.WithTimeout(ctx, time.Minute)
	_, err = lab.WaitMesh(meshCtx, l.Hosts())
	cancel()
	if err != nil {
		return nil, err
	}
	var rows []Row
	for _, sc := range crashScenarios {
		if cfg.CrashTrials < 1 {
			break
		}
		var took []time.Duration
		var verdicts []string
		for i := range cfg.CrashTrials {
			d, v, err := crashOnce(ctx, l, sc.victims)
			if err != nil {
				return rows, fmt.Errorf("%s trial %d: %w", sc.id, i+1, err)
			}
			took = append(took, d)
			verdicts = append(verdicts, v)
			log.Info("crash", "scenario", sc.id, "trial", i+1, "withdrawn after", d, "verdicts", v)
		}
		rows = append(rows, Row{ID: sc.id, Measure: sc.measure, Unit: "s",
			Value: seconds(median(took)), Samples: len(took),
			Peer:   &Peer{Name: "flannel+etcd", Text: "never; BGP: hold timer 90-240 s", Published: true},
			Target: Target{Kind: AtMost, Limit: 6},
			Note: fmt.Sprintf("median; all trials %v; worst %v; per trial, each survivor's withdrawal of each victim, and the survivors' last verdicts on it: %s",
				roundAll(took), slicesMax(took).Round(time.Millisecond), strings.Join(verdicts, "; "))})
	}
	if cfg.FrozenTrials == 0 {
		return rows, nil
	}
	b := &labBench{lab: l, mesh: l.Hosts(), log: log}
	frozen, err := b.frozenTrials(ctx, "10i", " behind the router, pods pinging over VXLAN", l.Host(1), l.Host(3), cfg.FrozenTrials, cfg.Freeze)
	if err != nil {
		return rows, err
	}
	return append(rows, frozen), nil
}

func slicesMax(d []time.Duration) time.Duration {
	var m time.Duration
	for _, x := range d {
		m = max(m, x)
	}
	return m
}

// crashOnce waits for a whole mesh, cuts the victims' links and kills their
// agents, and returns how long until every survivor routes none of their
// blocks, with the verdicts behind it. It restores the victims afterwards.
func crashOnce(ctx context.Context, l *lab.Lab, victimNums []int) (time.Duration, string, error) {
	meshCtx, cancel := context.WithTimeout(ctx, crashTimeout)
	defer cancel()
	statuses, err := lab.WaitMesh(meshCtx, l.Hosts())
	if err != nil {
		return 0, "", err
	}
	if err := poll.Sleep(ctx, quiet); err != nil {
		return 0, "", err
	}
	var victims, survivors []*lab.Host
	var blocks []netip.Prefix
	for _, h := range l.Hosts() {
		if contains(victimNums, h) {
			victims = append(victims, h)
			blocks = append(blocks, statuses[h.Name].Block)
		} else {
			survivors = append(survivors, h)
		}
	}
	var names []string
	offsets := map[*lab.Host]int64{}
	for _, h := range survivors {
		names = append(names, h.Namespace.Name)
		if fi, err := os.Stat(h.LogPath()); err == nil {
			offsets[h] = fi.Size()
		}
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	w, err := watchRoutes(watchCtx, names)
	if err != nil {
		return 0, "", err
	}
	// Under load the watch may not have read the routes in place yet; a
	// crash timed from then would be over before it started.
	if _, err := w.wait(ctx, w.expect(fmt.Sprintf("every survivor routes %v", blocks), routesTo(blocks)), joinTimeout); err != nil {
		return 0, "", err
	}
	e := w.expect(fmt.Sprintf("no survivor routes %v", blocks), noRouteTo(blocks))
	t0 := time.Now()
	for _, h := range victims {
		if err := h.CutLink(ctx); err != nil {
			return 0, "", err
		}
		if err := h.KillAgent(); err != nil {
			return 0, "", err
		}
	}
	at, err := w.wait(ctx, e, crashTimeout)
	for _, h := range victims {
		err = errors.Join(err, h.RestoreLink(context.WithoutCancel(ctx)))
	}
	if err != nil {
		return 0, "", err
	}
	var parts []string
	for i, s := range survivors {
		for j, v := range victims {
			path := "direct"
			if s.LAN != v.LAN {
				path = "vxlan"
			}
			after := "?"
			if at := w.removedAt(e, i, blocks[j]); !at.IsZero() {
				after = at.Sub(t0).Round(time.Millisecond).String()
			}
			parts = append(parts, fmt.Sprintf("%s withdrew %s (%s) after %s", s.Name, v.Name, path, after))
		}
	}
	for _, v := range victims {
		var latest crashVerdicts
		for _, s := range survivors {
			got, err := verdictsInLog(s.LogPath(), offsets[s], v, t0)
			if err != nil {
				return 0, "", err
			}
			latest.suspect = max(latest.suspect, got.suspect)
			latest.dead = max(latest.dead, got.dead)
			latest.pathDown = max(latest.pathDown, got.pathDown)
		}
		parts = append(parts, fmt.Sprintf("%s verdicts: %s", v.Name, latest))
	}
	if err := l.StartAgents(ctx, victims...); err != nil {
		return 0, "", err
	}
	return at.Sub(t0), "[" + strings.Join(parts, ", ") + "]", nil
}

func contains(nums []int, h *lab.Host) bool {
	for _, n := range nums {
		if h.Name == fmt.Sprintf("h%d", n) {
			return true
		}
	}
	return false
}

// routesTo holds when agent routes go to all of blocks.
func routesTo(blocks []netip.Prefix) func(routeTable) bool {
	return func(t routeTable) bool {
		for _, b := range blocks {
			if _, ok := t[b]; !ok {
				return false
			}
		}
		return true
	}
}

// noRouteTo holds when no agent route goes to any of blocks.
func noRouteTo(blocks []netip.Prefix) func(routeTable) bool {
	return func(t routeTable) bool {
		for _, b := range blocks {
			if _, ok := t[b]; ok {
				return false
			}
		}
		return true
	}
}

// verdictsInLog reads an agent's log from offset and returns, relative to
// t0, when it first logged memberlist's suspicion of victim (its own failed
// probe), memberlist marking victim failed, and the data path calling
// victim's host down.
func verdictsInLog(path string, offset int64, victim *lab.Host, t0 time.Time) (crashVerdicts, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return crashVerdicts{}, err
	}
	if offset > int64(len(data)) {
		offset = 0
	}
	var v crashVerdicts
	first := func(d *time.Duration, at time.Time) {
		if *d == 0 {
			*d = at.Sub(t0)
		}
	}
	sc := bufio.NewScanner(bytes.NewReader(data[offset:]))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		ts, _, ok := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		if !ok || !strings.HasPrefix(line, "time=") {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil || at.Before(t0) {
			continue
		}
		switch {
		case strings.Contains(line, "Suspect "+victim.Name+" has failed"):
			first(&v.suspect, at)
		case strings.Contains(line, "Marking "+victim.Name+" as failed"):
			first(&v.dead, at)
		case strings.Contains(line, "stopped answering on the data path") && strings.Contains(line, "host="+victim.IP.String()):
			first(&v.pathDown, at)
		}
	}
	return v, sc.Err()
}
