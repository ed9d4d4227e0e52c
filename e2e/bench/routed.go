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
)

// vxlanDevice is the agent's VXLAN device; handVXLAN the one wired by hand
// for comparison, on another VNI of the same port.
const (
	vxlanDevice  = "gv.vxlan"
	handVXLAN    = "hv.vxlan"
	handVNI      = 75
	vxlanPort    = 4789
	vxlanPodMTU  = 1500 - 50
	routedTrials = 5
)

// MeasureRouted builds a routed lab (h1 on one LAN, h2 behind the router)
// and measures the VXLAN path: how long after h2's agent starts every peer
// routes its block and it routes theirs, then pod-to-pod TCP throughput and
// round trip time over VXLAN beside host-to-host across the router and beside
// the same VXLAN path wired by hand with iproute2.
func MeasureRouted(ctx context.Context, cfg LabConfig) (_ []Row, err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l, err := lab.New(ctx, lab.Config{Hosts: 1, Routed: true, Hosts2: 1, BinDir: cfg.BinDir, CNIPath: cfg.CNIPath, Logger: log})
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, l.Close(context.WithoutCancel(ctx))) }()
	h1, h2 := l.Host(1), l.Host(2)
	if err := h1.StartAgent(ctx); err != nil {
		return nil, err
	}
	if _, err := h1.WaitReady(ctx); err != nil {
		return nil, err
	}

	trials := max(cfg.JoinTrials, routedTrials)
	var joins []time.Duration
	for i := range trials {
		d, err := timeCrossSubnetJoin(ctx, h1, h2)
		if err != nil {
			return nil, err
		}
		joins = append(joins, d)
		log.Info("cross-subnet join", "trial", i+1, "routed after", d)
		if i == trials-1 {
			break // keep h2 up for the data path
		}
		// h1 keeps a stopped agent's route while its host answers: take
		// the host off its LAN until h1 has withdrawn it.
		if err := h2.StopAgent(ctx); err != nil {
			return nil, err
		}
		if err := h2.CutLink(ctx); err != nil {
			return nil, err
		}
		err = waitRoutes(ctx, h1, func(n int) bool { return n == 0 })
		if err = errors.Join(err, h2.RestoreLink(context.WithoutCancel(ctx))); err != nil {
			return nil, err
		}
		if err := poll.Sleep(ctx, quiet); err != nil {
			return nil, err
		}
	}
	rows := []Row{{ID: "10a", Measure: "cross-subnet join: host behind a router starts until every peer routes its block over VXLAN, and it theirs", Unit: "s",
		Value: seconds(median(joins)), Samples: len(joins),
		Target: Target{Kind: AtMost, Limit: 0.3},
		Note:   fmt.Sprintf("first trial with an empty state directory, the others with the block on disk; all trials %v", roundAll(joins))}}

	path, err := measureRoutedDataPath(ctx, h1, h2, cfg.IperfDuration, cfg.IperfRounds, log)
	return append(rows, path...), err
}

// timeCrossSubnetJoin starts h2's agent and returns how long until h1 routes
// a block over VXLAN and h2 routes one too.
func timeCrossSubnetJoin(ctx context.Context, h1, h2 *lab.Host) (time.Duration, error) {
	t0 := time.Now()
	if err := h2.StartAgent(ctx); err != nil {
		return 0, err
	}
	if err := waitRoutes(ctx, h1, func(n int) bool { return n > 0 }); err != nil {
		return 0, err
	}
	if err := waitRoutes(ctx, h2, func(n int) bool { return n > 0 }); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// waitRoutes polls h's proto 74 routes through the VXLAN device until their
// number satisfies ok.
func waitRoutes(ctx context.Context, h *lab.Host, ok func(int) bool) error {
	ctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	for {
		n := 0
		dev, err := h.LinkByName(vxlanDevice)
		if err == nil {
			routes, err := h.Routes()
			if err != nil {
				return err
			}
			for _, r := range routes {
				if r.Protocol == 74 && r.LinkIndex == dev.Attrs().Index {
					n++
				}
			}
		}
		if ok(n) {
			return nil
		}
		if err := poll.Sleep(ctx, 5*time.Millisecond); err != nil {
			return fmt.Errorf("%s: waiting for its VXLAN routes (%d now): %w\n%s", h.Name, n, err, h.LogTail(20))
		}
	}
}

// measureRoutedDataPath compares three paths between h1 and h2 across the
// router: Grapevine's pods over gv.vxlan, the hosts' em1 addresses (what the
// router forwards), and two pods wired by hand over a VXLAN device made with
// iproute2 alone.
func measureRoutedDataPath(ctx context.Context, a, b *lab.Host, iperf time.Duration, rounds int, log *slog.Logger) (_ []Row, err error) {
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

	s := newScope()
	defer func() { err = errors.Join(err, s.close(context.WithoutCancel(ctx))) }()
	ha, hb, err := wireHandPods(ctx, s, a, b, vxlanPodMTU, handVXLANRoute)
	if err != nil {
		return nil, err
	}

	host := &dataPath{name: "host across the router", client: a.Namespace, server: b.Namespace, addr: b.IP}
	pod := &dataPath{name: "pod over gv.vxlan", client: pa.Namespace, server: pb.Namespace, addr: pb.IP}
	hand := &dataPath{name: "hand-wired VXLAN", client: ha.ns, server: hb.ns, addr: hb.addr}
	if err := measurePaths(ctx, []*dataPath{host, pod, hand}, iperf, rounds, log); err != nil {
		return nil, err
	}
	gbps := func(p *dataPath) float64 { return median(p.bps) / 1e9 }
	rtt := func(p *dataPath) float64 { return micros(median(p.rtt)) }
	runs := fmt.Sprintf("iperf3 single stream, %v per run, runs alternating: pod %s, host %s, hand-wired %s Gbit/s",
		iperf, formatAll(scale(pod.bps, 1e-9)), formatAll(scale(host.bps, 1e-9)), formatAll(scale(hand.bps, 1e-9)))
	return []Row{
		{ID: "10b", Measure: "TCP throughput pod to pod over VXLAN, across a router", Unit: "Gbit/s",
			Value: gbps(pod), Samples: len(pod.bps),
			Peer: &Peer{Name: "host em1 to em1 across the router", Value: gbps(host)},
			Note: runs + fmt.Sprintf("; pod MTU %d", vxlanPodMTU)},
		{ID: "10c", Measure: "round trip time pod to pod over VXLAN, across a router", Unit: "µs",
			Value: rtt(pod), Samples: len(pod.rtt),
			Peer: &Peer{Name: "host em1 to em1 across the router", Value: rtt(host)},
			Note: "median ICMP echo, alternating with the other paths"},
		{ID: "10d", Measure: "TCP throughput pod to pod over VXLAN, Grapevine", Unit: "Gbit/s",
			Value: gbps(pod), Samples: len(pod.bps),
			Peer:   &Peer{Name: "same VXLAN path wired by hand (iproute2)", Value: gbps(hand)},
			Target: Target{Kind: AtLeastPeer, Limit: 0.9},
			Note:   "what the design costs apart from the agent: the hand-wired pods have the same veth, MTU, VXLAN device settings and routes"},
		{ID: "10e", Measure: "round trip time pod to pod over VXLAN, Grapevine", Unit: "µs",
			Value: rtt(pod), Samples: len(pod.rtt),
			Peer:   &Peer{Name: "same VXLAN path wired by hand (iproute2)", Value: rtt(hand)},
			Target: Target{Kind: AtMostPeer, Limit: 1.2}},
	}, nil
}

// handVXLANRoute wires host self's side of the hand-made VXLAN path to the
// pod at other on peer, with iproute2 exactly as the agent does for gv.vxlan:
// a device (another VNI on the same port), the peer's VTEP as a permanent
// neighbour, an FDB entry to the peer's host address and an onlink route.
func handVXLANRoute(self, peer *lab.Host, other netip.Addr) [][]string {
	vtep := func(pod netip.Addr) netip.Addr { // the hand pods' /24 network address
		a := pod.As4()
		a[3] = 0
		return netip.AddrFrom4(a)
	}
	mac := func(h *lab.Host) string {
		a := h.IP.As4()
		return fmt.Sprintf("0e:75:%02x:%02x:%02x:%02x", a[0], a[1], a[2], a[3])
	}
	ns := self.Namespace.Name
	return [][]string{
		{"ip", "-n", ns, "link", "add", handVXLAN, "type", "vxlan", "id", fmt.Sprint(handVNI), "dstport", fmt.Sprint(vxlanPort),
			"local", self.IP.String(), "dev", "em1", "nolearning"},
		{"ip", "-n", ns, "link", "set", handVXLAN, "address", mac(self), "up"},
		{"ip", "-n", ns, "neigh", "add", vtep(other).String(), "lladdr", mac(peer), "dev", handVXLAN, "nud", "permanent"},
		{"bridge", "-n", ns, "fdb", "append", mac(peer), "dev", handVXLAN, "dst", peer.IP.String()},
		{"ip", "-n", ns, "route", "add", other.String() + "/32", "via", vtep(other).String(), "dev", handVXLAN, "onlink"},
	}
}
