package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// LabConfig configures the measurements in a lab of hosts running the real
// agent.
type LabConfig struct {
	BinDir  string
	CNIPath []string
	// JoinTrials is how many new hosts join (and how many times a known
	// host rejoins); each leaves after its join. CrashTrials is how many
	// crashes are timed; each takes the default failure detection time.
	// FrozenTrials is how many times an agent is stopped for Freeze.
	// RestartTrials is how many agent restarts are counted in lost pings.
	JoinTrials, CrashTrials, FrozenTrials, RestartTrials int
	Freeze                                               time.Duration
	// IdleWindow is how long idle CPU use is measured over.
	IdleWindow time.Duration
	// IperfDuration is each iperf3 run; IperfRounds how many runs of each
	// path alternate.
	IperfDuration time.Duration
	IperfRounds   int
	Logger        *slog.Logger
}

// peerHosts is how many hosts run throughout; one more joins and leaves.
const peerHosts = 4

// Timeouts for one convergence event: generous, since a miss by far should
// still yield a figure rather than an error.
const (
	joinTimeout  = 30 * time.Second
	crashTimeout = 60 * time.Second
	// quiet is the pause between one timed event and the next, so each
	// starts from a cluster at rest.
	quiet = 2 * time.Second
)

// MeasureLab builds a lab of peerHosts hosts with agents and times, as seen
// in their routing tables: new hosts and a known host joining, leaving
// gracefully and then going off the LAN, and crashing; it counts the pod
// pings lost across an agent freeze and an agent restart. Then, with all five hosts up, it measures the
// agents' idle memory and CPU, `grapevine doctor`'s run time beside
// `grapevine status`'s, and pod-to-pod TCP throughput and round trip
// time beside host-to-host; last, new hosts joining while idle connections
// without the key are held open against their seed's ledger port.
func MeasureLab(ctx context.Context, cfg LabConfig) (_ []Row, err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l, err := lab.New(ctx, lab.Config{Hosts: peerHosts, BinDir: cfg.BinDir, CNIPath: cfg.CNIPath, Logger: log})
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, l.Close(context.WithoutCancel(ctx))) }()
	peers := l.Hosts()
	if err := l.StartAgents(ctx); err != nil {
		return nil, err
	}
	meshCtx, cancel := context.WithTimeout(ctx, time.Minute)
	_, err = lab.WaitMesh(meshCtx, peers)
	cancel()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, h := range peers {
		names = append(names, h.Namespace.Name)
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	w, err := watchRoutes(watchCtx, names)
	if err != nil {
		return nil, err
	}
	b := &labBench{lab: l, mesh: peers, watch: w, log: log}

	var joinNew, joinKnown, leave, crash []time.Duration
	var last *lab.Host
	for i := range cfg.JoinTrials {
		h, err := l.AddHost(ctx)
		if err != nil {
			return nil, err
		}
		last = h
		// New, leave, known, leave: each host joins once with an empty
		// state directory and once with its block on disk; each leave
		// takes the host off the LAN, so that the next join is timed
		// from peers that withdrew its route.
		for _, known := range []bool{false, true} {
			d, err := b.join(ctx, h)
			if err != nil {
				return nil, err
			}
			if known {
				joinKnown = append(joinKnown, d)
			} else {
				joinNew = append(joinNew, d)
			}
			if d, err = b.leave(ctx, h); err != nil {
				return nil, err
			}
			leave = append(leave, d)
		}
		log.Info("join and leave", "trial", i+1, "new", joinNew[i], "known", joinKnown[i], "leave", leave[2*i:])
	}
	if last == nil {
		return nil, errors.New("no join trials")
	}
	for i := range cfg.CrashTrials {
		if _, err := b.join(ctx, last); err != nil {
			return nil, err
		}
		d, err := b.crash(ctx, last)
		if err != nil {
			return nil, err
		}
		crash = append(crash, d)
		log.Info("crash", "trial", i+1, "withdrawn after", d)
	}
	rows := convergenceRows(joinNew, joinKnown, leave, crash)
	frozen, err := b.frozenTrials(ctx, "4b", "", peers[0], peers[1], cfg.FrozenTrials, cfg.Freeze)
	if err != nil {
		return rows, err
	}
	rows = append(rows, frozen)
	restart, err := b.restartTrials(ctx, "3b", peers[0], peers[1], cfg.RestartTrials)
	if err != nil {
		return rows, err
	}
	rows = append(rows, restart)

	// Five hosts up for the idle and data path measurements.
	if _, err := b.join(ctx, last); err != nil {
		return rows, err
	}
	idle, err := measureIdle(ctx, append(peers, last), cfg.IdleWindow)
	if err != nil {
		return rows, err
	}
	rows = append(rows, idle...)
	doctor, err := measureDoctor(ctx, peers[0], len(peers)+1)
	if err != nil {
		return rows, err
	}
	rows = append(rows, doctor)
	failover, err := b.failoverTrials(ctx, append(peers, last), cfg.CrashTrials)
	if err != nil {
		return rows, err
	}
	rows = append(rows, failover)
	path, err := measureDataPath(ctx, peers[0], peers[1], cfg.IperfDuration, cfg.IperfRounds, log)
	if err != nil {
		return rows, err
	}
	rows = append(rows, path...)

	// Last, as its flooding hosts and joined hosts stay in the lab.
	flooded, refused, err := b.floodJoins(ctx, peers[0], cfg.JoinTrials)
	if err != nil {
		return rows, err
	}
	return append(rows, floodJoinRow(flooded, joinNew, refused)), nil
}

// labBench times events in a running lab through the peers' route tables.
type labBench struct {
	lab *lab.Lab
	// mesh is the hosts whose agents run throughout.
	mesh  []*lab.Host
	watch *routeWatch
	log   *slog.Logger
}

// join starts h's agent and returns how long until every peer routes a
// block to it.
func (b *labBench) join(ctx context.Context, h *lab.Host) (time.Duration, error) {
	e := b.watch.expect(fmt.Sprintf("every peer routes to %s (%s)", h.Name, h.IP), routesVia(h.IP))
	t0 := time.Now()
	if err := h.StartAgent(ctx); err != nil {
		return 0, err
	}
	at, err := b.watch.wait(ctx, e, joinTimeout)
	if err != nil {
		return 0, fmt.Errorf("join: %w\nagent log of %s:\n%s", err, h.Name, h.LogTail(20))
	}
	return at.Sub(t0), poll.Sleep(ctx, quiet)
}

// leave stops h's agent with SIGTERM, checks that the peers keep its route
// while its host is up, then cuts its link and returns how long from the
// cut until every peer has withdrawn the route. The link goes back in
// afterwards.
func (b *labBench) leave(ctx context.Context, h *lab.Host) (d time.Duration, err error) {
	waitCtx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	// The data path keeps only a host it has seen answer.
	for _, p := range b.mesh {
		_, err := p.WaitStatus(waitCtx, h.Name+"'s data path up", func(s lab.Status) bool {
			m, ok := s.Member(h.Name)
			return ok && m.DataPath == "up"
		})
		if err != nil {
			return 0, fmt.Errorf("leave: %w", err)
		}
	}
	if err := h.StopAgent(ctx); err != nil {
		return 0, err
	}
	// The peers see it left and keep its route on the data path.
	for _, p := range b.mesh {
		_, err := p.WaitStatus(waitCtx, h.Name+" left, its route kept by the data path", func(s lab.Status) bool {
			m, ok := s.Member(h.Name)
			return ok && m.State == "left" && m.Route == "programmed"
		})
		if err != nil {
			return 0, fmt.Errorf("leave: %w", err)
		}
	}
	e := b.watch.expect(fmt.Sprintf("no peer routes to %s (%s) after SIGTERM and link cut", h.Name, h.IP), noRouteVia(h.IP))
	t0 := time.Now()
	if err := h.CutLink(ctx); err != nil {
		return 0, err
	}
	defer func() { err = errors.Join(err, h.RestoreLink(context.WithoutCancel(ctx))) }()
	at, err := b.watch.wait(ctx, e, crashTimeout)
	if err != nil {
		return 0, fmt.Errorf("leave: %w", err)
	}
	return at.Sub(t0), poll.Sleep(ctx, quiet)
}

// crash pulls h's cable and kills its agent, and returns how long until
// every peer has withdrawn the route to it. The cable goes back in
// afterwards.
func (b *labBench) crash(ctx context.Context, h *lab.Host) (d time.Duration, err error) {
	e := b.watch.expect(fmt.Sprintf("no peer routes to %s (%s) after kill -9 and link cut", h.Name, h.IP), noRouteVia(h.IP))
	t0 := time.Now()
	if err := h.CutLink(ctx); err != nil {
		return 0, err
	}
	defer func() { err = errors.Join(err, h.RestoreLink(context.WithoutCancel(ctx))) }()
	if err := h.KillAgent(); err != nil {
		return 0, err
	}
	at, err := b.watch.wait(ctx, e, crashTimeout)
	if err != nil {
		return 0, fmt.Errorf("crash: %w", err)
	}
	return at.Sub(t0), poll.Sleep(ctx, quiet)
}

// pingInterval is the pods' ping rate while an agent is frozen.
const pingInterval = 100 * time.Millisecond

// frozenTrials stops frozen's agent (SIGSTOP) for freeze, trials times,
// while a pod on client and a pod on frozen ping each other, and counts the
// pings lost in both directions. It is row id; where says where the frozen
// host is, if it matters.
func (b *labBench) frozenTrials(ctx context.Context, id, where string, client, frozen *lab.Host, trials int, freeze time.Duration) (Row, error) {
	row := Row{ID: id, Measure: fmt.Sprintf("agent frozen %v (SIGSTOP)%s: pod packets lost", freeze, where), Unit: "packets",
		Target: Target{Kind: AtMost, Limit: 0}}
	if trials == 0 {
		return row, errors.New("no frozen-agent trials")
	}
	a, c, err := podPair(ctx, client, frozen)
	if err != nil {
		return row, fmt.Errorf("frozen agent: before the freeze: %w", err)
	}
	var lost []float64
	var sent int
	var dead []time.Duration
	for i := range trials {
		n, total, deadAfter, err := b.freezeOnce(ctx, a, c, client, frozen, freeze)
		if err != nil {
			return row, err
		}
		lost, sent, dead = append(lost, float64(n)), sent+total, append(dead, deadAfter)
		b.log.Info("frozen agent", "trial", i+1, "lost", n, "of", total, "declared dead after", deadAfter)
	}
	row.Value = slices.Max(lost)
	row.Samples = len(lost)
	row.Peer = &Peer{Name: "flannel host-gw", Value: 0, Published: true, Text: "0 lost"}
	row.Note = fmt.Sprintf("worst trial; pods on two hosts ping each other every %v, both directions counted; lost per trial %v of %d sent in all; the peers declared the frozen agent dead after %v and kept its route on the data path",
		pingInterval, lost, sent, roundAll(dead))
	return row, nil
}

func (b *labBench) freezeOnce(ctx context.Context, a, c *lab.Pod, client, frozen *lab.Host, freeze time.Duration) (lost, sent int, deadAfter time.Duration, err error) {
	meshCtx, cancel := context.WithTimeout(ctx, crashTimeout)
	defer cancel()
	if _, err := lab.WaitMesh(meshCtx, b.mesh); err != nil {
		return 0, 0, 0, err
	}
	there, back, err := pingBothWays(a, c)
	if err != nil {
		return 0, 0, 0, err
	}
	if err := frozen.FreezeAgent(); err != nil {
		return 0, 0, 0, err
	}
	t0 := time.Now()
	_, err = client.WaitStatus(meshCtx, frozen.Name+" dead", func(s lab.Status) bool {
		m, ok := s.Member(frozen.Name)
		return ok && m.State == "dead"
	})
	deadAfter = time.Since(t0)
	if err == nil {
		err = poll.Sleep(ctx, freeze-deadAfter)
	}
	err = errors.Join(err, frozen.ThawAgent())
	if err != nil {
		return 0, 0, 0, err
	}
	if _, err := lab.WaitMesh(meshCtx, b.mesh); err != nil {
		return 0, 0, 0, err
	}
	if err := poll.Sleep(ctx, quiet); err != nil {
		return 0, 0, 0, err
	}
	r1, r2 := there.Stop(time.Second), back.Stop(time.Second)
	return len(r1.Lost) + len(r2.Lost), r1.Sent + r2.Sent, deadAfter, nil
}

// restartDowntime is how long a restarted agent stays stopped: longer than
// the peers' probes take to call a silent host down (3 s), as a restart
// that pulls an image is.
const restartDowntime = 5 * time.Second

// restartTrials restarts restarted's agent (SIGTERM, restartDowntime, then
// start), trials times, while a pod on client and a pod on restarted ping each other, and
// counts the pings lost in both directions. It is row id.
func (b *labBench) restartTrials(ctx context.Context, id string, client, restarted *lab.Host, trials int) (Row, error) {
	row := Row{ID: id, Measure: fmt.Sprintf("agent restart (SIGTERM, %v down, start), host up: pod packets lost", restartDowntime), Unit: "packets",
		Target: Target{Kind: AtMost, Limit: 0}}
	if trials == 0 {
		return row, errors.New("no restart trials")
	}
	a, c, err := podPair(ctx, client, restarted)
	if err != nil {
		return row, fmt.Errorf("agent restart: before the restart: %w", err)
	}
	var lost []float64
	var sent int
	var down []time.Duration
	for i := range trials {
		n, total, back, err := b.restartOnce(ctx, a, c, restarted)
		if err != nil {
			return row, err
		}
		lost, sent, down = append(lost, float64(n)), sent+total, append(down, back)
		b.log.Info("agent restart", "trial", i+1, "lost", n, "of", total, "mesh whole again after", back)
	}
	row.Value = slices.Max(lost)
	row.Samples = len(lost)
	row.Peer = &Peer{Name: "Calico (BIRD graceful restart), flannel (lease)", Value: 0, Published: true, Text: "routes kept"}
	row.Note = fmt.Sprintf("worst trial; pods on two hosts ping each other every %v, both directions counted; lost per trial %v of %d sent in all; from SIGTERM until the mesh was whole again %v; the peers kept the route on the data path throughout",
		pingInterval, lost, sent, roundAll(down))
	return row, nil
}

func (b *labBench) restartOnce(ctx context.Context, a, c *lab.Pod, restarted *lab.Host) (lost, sent int, back time.Duration, err error) {
	meshCtx, cancel := context.WithTimeout(ctx, crashTimeout)
	defer cancel()
	if _, err := lab.WaitMesh(meshCtx, b.mesh); err != nil {
		return 0, 0, 0, err
	}
	there, fro, err := pingBothWays(a, c)
	if err != nil {
		return 0, 0, 0, err
	}
	if err := poll.Sleep(ctx, quiet); err != nil {
		return 0, 0, 0, err
	}
	t0 := time.Now()
	err = restarted.StopAgent(ctx)
	if err == nil {
		err = poll.Sleep(ctx, restartDowntime)
	}
	if err == nil {
		err = restarted.StartAgent(ctx)
	}
	if err == nil {
		_, err = lab.WaitMesh(meshCtx, b.mesh)
	}
	back = time.Since(t0)
	if err == nil {
		err = poll.Sleep(ctx, quiet)
	}
	r1, r2 := there.Stop(time.Second), fro.Stop(time.Second)
	if err != nil {
		return 0, 0, 0, err
	}
	return len(r1.Lost) + len(r2.Lost), r1.Sent + r2.Sent, back, nil
}

func convergenceRows(joinNew, joinKnown, leave, crash []time.Duration) []Row {
	flannelJoin := &Peer{Name: "flannel+etcd", Value: 0.16, Published: true}
	return []Row{
		{ID: "2a", Measure: "join, new host: all 4 peers route its block", Unit: "s",
			Value: seconds(median(joinNew)), Samples: len(joinNew), Peer: flannelJoin,
			Target: Target{Kind: AtMost, Limit: 0.3},
			Note:   fmt.Sprintf("median from starting the agent until the last peer's kernel reported the route; all trials %v", roundAll(joinNew))},
		{ID: "2b", Measure: "join, known host (block on disk)", Unit: "s",
			Value: seconds(median(joinKnown)), Samples: len(joinKnown), Peer: flannelJoin,
			Target: Target{Kind: AtMost, Limit: 0.15},
			Note:   fmt.Sprintf("all trials %v", roundAll(joinKnown))},
		{ID: "3", Measure: "graceful leave (SIGTERM), then link cut: until all peers withdrew", Unit: "s",
			Value: seconds(median(leave)), Samples: len(leave), Peer: &Peer{Name: "flannel+etcd", Text: "never (24 h lease)", Published: true},
			Target: Target{Kind: AtMost, Limit: 5},
			Note:   fmt.Sprintf("from the link cut; the peers kept the route while the agent was stopped and the host up; all trials %v", roundAll(leave))},
		{ID: "4", Measure: "crash (kill -9, link cut) until all peers withdrew", Unit: "s",
			Value: seconds(median(crash)), Samples: len(crash),
			Peer:   &Peer{Name: "flannel+etcd", Text: "never; BGP: hold timer 90-240 s", Published: true},
			Target: Target{Kind: AtMost, Limit: 6},
			Note:   fmt.Sprintf("default timers; all trials %v", roundAll(crash))},
	}
}

func roundAll(d []time.Duration) []time.Duration {
	out := make([]time.Duration, len(d))
	for i, x := range d {
		out[i] = x.Round(time.Millisecond)
	}
	return out
}

// podPair adds a pod on each host and waits until the first reaches the
// second.
func podPair(ctx context.Context, from, to *lab.Host) (*lab.Pod, *lab.Pod, error) {
	a, err := from.AddPod(ctx)
	if err != nil {
		return nil, nil, err
	}
	c, err := to.AddPod(ctx)
	if err != nil {
		return nil, nil, err
	}
	pingCtx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	if _, err := a.Ping(pingCtx, c.IP); err != nil {
		return nil, nil, fmt.Errorf("pods do not reach each other: %w", err)
	}
	return a, c, nil
}

// pingBothWays starts a ping stream from a to c and one from c to a.
func pingBothWays(a, c *lab.Pod) (there, back *lab.PingStream, err error) {
	if there, err = a.StartPings(c.IP, pingInterval); err != nil {
		return nil, nil, err
	}
	if back, err = c.StartPings(a.IP, pingInterval); err != nil {
		there.Stop(0)
		return nil, nil, err
	}
	return there, back, nil
}
