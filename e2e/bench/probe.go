package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/node/probe"
)

// ProbeConfig configures the data-path probe measurement.
type ProbeConfig struct {
	Peers  int // hosts watched
	Rounds int // probing rounds timed
}

// probeRoundInterval paces the timed rounds; the agent's default is 1 s, a
// faster pace only makes the measurement shorter.
const probeRoundInterval = 10 * time.Millisecond

// MeasureProbes runs the agent's data-path prober against Peers addresses in
// a namespace of its own, where the kernel answers every 127.0.0.0/8 address
// on loopback, and reports the CPU time (user and system, the replies'
// kernel work included, so both ends of every echo) per round of one request
// to every peer. At the default of one round a second that is the CPU share
// probing costs a host; the packet and byte rates follow from the peer
// count.
func MeasureProbes(ctx context.Context, cfg ProbeConfig) (_ []Row, err error) {
	s := newScope()
	defer func() { err = errors.Join(err, s.close(context.WithoutCancel(ctx))) }()
	name, err := s.addNamespace(ctx, "probe")
	if err != nil {
		return nil, err
	}
	if _, err := lab.Run(ctx, "ip", "-n", name, "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	var conn probe.Conn
	if err := (lab.Namespace{Name: name}).Do(func() (err error) {
		conn, err = probe.Listen()
		return err
	}); err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	p, err := probe.New(probe.Config{Interval: probeRoundInterval, Registerer: reg}, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	hosts := make([]netip.Addr, cfg.Peers)
	for i := range hosts {
		hosts[i] = netip.AddrFrom4([4]byte{127, 0, byte(1 + i/250), byte(1 + i%250)})
	}
	p.Watch(hosts)

	var before, after unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &before)
	runCtx, cancel := context.WithTimeout(ctx, time.Duration(cfg.Rounds)*probeRoundInterval)
	err = p.Run(runCtx)
	cancel()
	unix.Getrusage(unix.RUSAGE_SELF, &after)
	if err != nil {
		return nil, err
	}
	requests, replies, err := probeCounts(reg)
	if err != nil {
		return nil, err
	}
	if requests == 0 {
		return nil, errors.New("data-path probes: no request sent")
	}
	rounds := requests / float64(cfg.Peers)
	cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
	perRound := cpu / time.Duration(rounds)
	// One request and one reply per peer and direction: a host sends its
	// requests and its replies to every peer's requests, and receives as
	// many. 36 bytes of IP each (20 header, 8 ICMP, 8 payload), a 64-byte
	// Ethernet frame with its checksum.
	pps := 2 * cfg.Peers
	return []Row{{
		ID: "9", Measure: fmt.Sprintf("data-path probes at %d peers, one round a second: CPU", cfg.Peers), Unit: "%",
		Value: 100 * perRound.Seconds(), Samples: int(rounds),
		Target: Target{Kind: AtMost, Limit: 1},
		Note: fmt.Sprintf("%v CPU per round of %d echo requests and replies on loopback (both ends' work), %.0f rounds, %.0f of %.0f requests answered; on the wire each host sends and receives %d packets/s, %.1f kB/s each way (64-byte frames)",
			perRound.Round(time.Microsecond), cfg.Peers, rounds, replies, requests, pps, float64(pps*64)/1000),
	}}, nil
}

func probeCounts(reg *prometheus.Registry) (requests, replies float64, err error) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, 0, err
	}
	for _, mf := range mfs {
		// Summed over the families (ipv4, ipv6).
		for _, m := range mf.GetMetric() {
			switch mf.GetName() {
			case "grapevine_probe_requests_total":
				requests += m.GetCounter().GetValue()
			case "grapevine_probe_replies_total":
				replies += m.GetCounter().GetValue()
			}
		}
	}
	return requests, replies, nil
}
