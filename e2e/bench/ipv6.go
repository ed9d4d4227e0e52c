package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// benchPool6 is the IPv6 pool of the dual-stack lab, as `lab up --dual-stack`.
const benchPool6 = "fd00:10:244::/48"

// MeasureIPv6 builds a dual-stack lab of three hosts with an IPv6 underlay
// (each host also on fd00:172:16:254::/64, agents with --pool6), so peers
// route each other's IPv6 blocks directly via their IPv6 addresses. It
// measures pod-to-pod TCP throughput and round trip time over IPv6 beside
// host-to-host IPv6 and pod-to-pod IPv4 between h1 and h2, then crashes h3
// (link cut, kill -9) CrashTrials times and times, from the same crashes,
// the withdrawal of its IPv6 block route beside that of its IPv4 one.
func MeasureIPv6(ctx context.Context, cfg LabConfig) (_ []Row, err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.CrashTrials < 1 || cfg.IperfRounds < 1 {
		return nil, errors.New("no IPv6 crash trials or iperf3 rounds")
	}
	l, err := lab.New(ctx, lab.Config{Hosts: 3, BinDir: cfg.BinDir, CNIPath: cfg.CNIPath, Logger: log})
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, l.Close(context.WithoutCancel(ctx))) }()
	host6 := make(map[*lab.Host]netip.Addr)
	for _, h := range l.Hosts() {
		if host6[h], err = h.AddIP6(ctx); err != nil {
			return nil, err
		}
		h.ExtraArgs = append(h.ExtraArgs, "--pool6", benchPool6)
	}
	if err := l.StartAgents(ctx); err != nil {
		return nil, err
	}
	meshCtx, cancel := context.WithTimeout(ctx, time.Minute)
	_, err = lab.WaitMesh(meshCtx, l.Hosts())
	cancel()
	if err != nil {
		return nil, err
	}
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	w, err := watchRoutes(watchCtx, []string{h1.Namespace.Name, h2.Namespace.Name})
	if err != nil {
		return nil, err
	}
	// Both survivors route h3's IPv6 block via its IPv6 address, h1 h2's:
	// the direct IPv6 path, not VXLAN.
	direct := w.expect("h1 and h2 route IPv6 blocks via h3's IPv6 address", routesVia(host6[h3]))
	if _, err := w.wait(ctx, direct, joinTimeout); err != nil {
		return nil, err
	}

	path, err := measureDataPath6(ctx, h1, h2, host6[h2], cfg.IperfDuration, cfg.IperfRounds, log)
	if err != nil {
		return nil, err
	}
	rows := path

	var took4, took6 []time.Duration
	for i := range cfg.CrashTrials {
		d4, d6, err := crashDualStack(ctx, l, w, []*lab.Host{h1, h2}, h3)
		if err != nil {
			return rows, fmt.Errorf("IPv6 crash trial %d: %w", i+1, err)
		}
		took4, took6 = append(took4, d4), append(took6, d6)
		log.Info("dual-stack crash", "trial", i+1, "IPv4 withdrawn after", d4, "IPv6 withdrawn after", d6)
	}
	return append(rows, Row{ID: "13c", Measure: "crash (kill -9, link cut) of a dual-stack peer until both peers withdrew its IPv6 block", Unit: "s",
		Value: seconds(median(took6)), Samples: len(took6),
		Peer:   &Peer{Name: "its IPv4 block, same crashes", Value: seconds(median(took4))},
		Target: Target{Kind: AtMostPeer, Limit: 1.1},
		Note: fmt.Sprintf("median; h3 of three hosts with an IPv6 underlay crashes, h1 and h2 survive; per trial IPv6 %v, IPv4 %v",
			roundAll(took6), roundAll(took4))}), nil
}

// measureDataPath6 wires a pod on a and one on b and measures TCP
// throughput and round trip time from pod to pod over IPv6, alternating
// with a's em1 to b's em1 over IPv6 (b6) and pod to pod over IPv4.
func measureDataPath6(ctx context.Context, a, b *lab.Host, b6 netip.Addr, iperf time.Duration, rounds int, log *slog.Logger) (_ []Row, err error) {
	pa, err := a.AddPod(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, pa.Delete(context.WithoutCancel(ctx))) }()
	pb, err := b.AddPod(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, pb.Delete(context.WithoutCancel(ctx))) }()
	if !pa.IP6.IsValid() || !pb.IP6.IsValid() {
		return nil, fmt.Errorf("pods without an IPv6 address (%v, %v): is --pool6 set?", pa.IP6, pb.IP6)
	}

	host6 := &dataPath{name: "host IPv6", client: a.Namespace, server: b.Namespace, addr: b6}
	pod6 := &dataPath{name: "pod IPv6", client: pa.Namespace, server: pb.Namespace, addr: pb.IP6}
	pod4 := &dataPath{name: "pod IPv4", client: pa.Namespace, server: pb.Namespace, addr: pb.IP}
	if err := measurePaths(ctx, []*dataPath{host6, pod6, pod4}, iperf, rounds, log); err != nil {
		return nil, err
	}
	return []Row{
		{ID: "13a", Measure: "TCP throughput pod to pod across hosts over IPv6", Unit: "Gbit/s",
			Value: median(pod6.bps) / 1e9, Samples: len(pod6.bps),
			Peer:   &Peer{Name: "host em1 to em1 over IPv6", Value: median(host6.bps) / 1e9},
			Target: Target{Kind: AtLeastPeer, Limit: 0.95},
			Note: fmt.Sprintf("iperf3 single stream, %v per run, runs alternating: pod IPv6 %s, host IPv6 %s, pod IPv4 %s Gbit/s; blocks routed via the peers' IPv6 addresses",
				iperf, formatAll(scale(pod6.bps, 1e-9)), formatAll(scale(host6.bps, 1e-9)), formatAll(scale(pod4.bps, 1e-9)))},
		{ID: "13b", Measure: "round trip time pod to pod over IPv6", Unit: "µs",
			Value: micros(median(pod6.rtt)), Samples: len(pod6.rtt),
			Peer:   &Peer{Name: "host em1 to em1 over IPv6", Value: micros(median(host6.rtt))},
			Target: Target{Kind: AtMostPeer, Limit: 1.2},
			Note:   fmt.Sprintf("median ICMPv6 echo, one socket per echo, alternating with the host path; pod to pod over IPv4 %.0f µs", micros(median(pod4.rtt)))},
	}, nil
}

// crashDualStack waits until every survivor routes both of victim's blocks,
// cuts victim's link and kills its agent, and returns how long until the
// last survivor deleted the route to its IPv4 block and to its IPv6 block.
// It restores the victim and waits for the mesh afterwards.
func crashDualStack(ctx context.Context, l *lab.Lab, w *routeWatch, survivors []*lab.Host, victim *lab.Host) (d4, d6 time.Duration, err error) {
	meshCtx, cancel := context.WithTimeout(ctx, crashTimeout)
	defer cancel()
	statuses, err := lab.WaitMesh(meshCtx, l.Hosts())
	if err != nil {
		return 0, 0, err
	}
	st, err := nodestate.Read(victim.RunDir())
	if err != nil {
		return 0, 0, err
	}
	block4, block6 := statuses[victim.Name].Block, st.Block6
	if !block6.IsValid() {
		return 0, 0, fmt.Errorf("%s has no IPv6 block in node.json", victim.Name)
	}
	blocks := []netip.Prefix{block4, block6}
	if _, err := w.wait(ctx, w.expect(fmt.Sprintf("every survivor routes %v", blocks), routesTo(blocks)), joinTimeout); err != nil {
		return 0, 0, err
	}
	if err := poll.Sleep(ctx, quiet); err != nil {
		return 0, 0, err
	}
	e := w.expect(fmt.Sprintf("no survivor routes %v", blocks), noRouteTo(blocks))
	t0 := time.Now()
	if err := victim.CutLink(ctx); err != nil {
		return 0, 0, err
	}
	if err := victim.KillAgent(); err != nil {
		return 0, 0, errors.Join(err, victim.RestoreLink(context.WithoutCancel(ctx)))
	}
	_, err = w.wait(ctx, e, crashTimeout)
	err = errors.Join(err, victim.RestoreLink(context.WithoutCancel(ctx)))
	if err != nil {
		return 0, 0, err
	}
	for i := range survivors {
		at4, at6 := w.removedAt(e, i, block4), w.removedAt(e, i, block6)
		if at4.IsZero() || at6.IsZero() {
			return 0, 0, fmt.Errorf("%s: no deletion of %s or %s seen", survivors[i].Name, block4, block6)
		}
		d4, d6 = max(d4, at4.Sub(t0)), max(d6, at6.Sub(t0))
	}
	return d4, d6, l.StartAgents(ctx, victim)
}
