package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"syscall"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// pingPairs is how many round trips of each path are timed, alternating.
const pingPairs = 50

// dataPath is one way across the lab: a client namespace and a server
// address in a namespace that runs the iperf3 server.
type dataPath struct {
	name   string
	client lab.Namespace
	server lab.Namespace
	addr   netip.Addr
	bps    []float64
	rtt    []time.Duration
}

// measureDataPath wires a pod on a and one on b, and measures TCP
// throughput (iperf3) and round trip time (ICMP echo) from pod to pod and,
// alternating with it, from a's em1 to b's em1, and between two pods wired
// by hand as the seed article does.
func measureDataPath(ctx context.Context, a, b *lab.Host, iperf time.Duration, rounds int, log *slog.Logger) (_ []Row, err error) {
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
	sa, sb, err := wireSeedPods(ctx, s, a, b)
	if err != nil {
		return nil, err
	}

	host := &dataPath{name: "host", client: a.Namespace, server: b.Namespace, addr: b.IP}
	pod := &dataPath{name: "pod", client: pa.Namespace, server: pb.Namespace, addr: pb.IP}
	seed := &dataPath{name: "seed", client: sa.ns, server: sb.ns, addr: sb.addr}
	if err := measurePaths(ctx, []*dataPath{host, pod, seed}, iperf, rounds, log); err != nil {
		return nil, err
	}
	return []Row{
		{ID: "7a", Measure: "TCP throughput pod to pod across hosts", Unit: "Gbit/s",
			Value: median(pod.bps) / 1e9, Samples: len(pod.bps),
			Peer:   &Peer{Name: "host em1 to em1", Value: median(host.bps) / 1e9},
			Target: Target{Kind: AtLeastPeer, Limit: 0.95},
			Note: fmt.Sprintf("iperf3 single stream, %v per run, runs alternating: pod %s, host %s, hand-wired %s Gbit/s",
				iperf, formatAll(scale(pod.bps, 1e-9)), formatAll(scale(host.bps, 1e-9)), formatAll(scale(seed.bps, 1e-9)))},
		{ID: "7b", Measure: "round trip time pod to pod", Unit: "µs",
			Value: micros(median(pod.rtt)), Samples: len(pod.rtt),
			Peer:   &Peer{Name: "host em1 to em1", Value: micros(median(host.rtt))},
			Target: Target{Kind: AtMostPeer, Limit: 1.2},
			Note:   "median ICMP echo, one socket per echo, alternating with the host path"},
		{ID: "7c", Measure: "TCP throughput, pods wired by hand (seed path)", Unit: "Gbit/s",
			Value: median(seed.bps) / 1e9, Samples: len(seed.bps),
			Peer: &Peer{Name: "host em1 to em1", Value: median(host.bps) / 1e9},
			Note: "the same routed path built with iproute2 alone: what the design costs in this lab, apart from the plugin"},
		{ID: "7d", Measure: "round trip time, pods wired by hand (seed path)", Unit: "µs",
			Value: micros(median(seed.rtt)), Samples: len(seed.rtt),
			Peer: &Peer{Name: "host em1 to em1", Value: micros(median(host.rtt))}},
	}, nil
}

// measurePaths times pingPairs round trips and rounds iperf3 runs of each
// path, alternating, into the paths' rtt and bps.
func measurePaths(ctx context.Context, paths []*dataPath, iperf time.Duration, rounds int, log *slog.Logger) error {
	for _, p := range paths {
		stop, err := startIperfServer(ctx, p.server, p.addr)
		if err != nil {
			return err
		}
		defer stop()
		// Warm up: ARP and neighbour entries, the routes, the server.
		for range 3 {
			if _, err := pingOnce(ctx, p); err != nil {
				return err
			}
		}
	}
	for i := range pingPairs {
		for _, p := range alternate(paths, i) {
			d, err := pingOnce(ctx, p)
			if err != nil {
				return err
			}
			p.rtt = append(p.rtt, d)
		}
	}
	for i := range rounds {
		for _, p := range alternate(paths, i) {
			bps, err := runIperf(ctx, p, iperf)
			if err != nil {
				return err
			}
			p.bps = append(p.bps, bps)
			log.Info("iperf3", "path", p.name, "Gbit/s", bps/1e9)
		}
	}
	return nil
}

// alternate rotates the paths by i, so each takes every place in turn.
func alternate(p []*dataPath, i int) []*dataPath {
	k := i % len(p)
	return append(p[k:len(p):len(p)], p[:k]...)
}

func scale(v []float64, f float64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = x * f
	}
	return out
}

func pingOnce(ctx context.Context, p *dataPath) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	d, err := p.client.Ping(ctx, p.addr)
	if err != nil {
		return 0, fmt.Errorf("%s path: %w", p.name, err)
	}
	return d, nil
}

// startIperfServer runs `iperf3 -s` bound to addr inside ns until stop.
func startIperfServer(ctx context.Context, ns lab.Namespace, addr netip.Addr) (stop func(), err error) {
	cmd := ns.Command(ctx, "iperf3", "--server", "--bind", addr.String())
	// `ip netns exec` execs iperf3 in place: it dies with this process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("iperf3 server in %s: %w", ns.Name, err)
	}
	return func() {
		cmd.Process.Kill()
		cmd.Wait()
	}, nil
}

// runIperf runs one iperf3 client test and returns the receiver's rate in
// bits per second. It retries while the server is still starting.
func runIperf(ctx context.Context, p *dataPath, d time.Duration) (float64, error) {
	var last error
	for range 20 {
		out, err := p.client.Command(ctx, "iperf3", "--client", p.addr.String(), "--time",
			fmt.Sprint(int(d.Seconds())), "--json").Output()
		var res struct {
			Error string `json:"error"`
			End   struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if jerr := json.Unmarshal(out, &res); jerr != nil {
			last = fmt.Errorf("iperf3 %s path: %w, output: %s", p.name, errors.Join(err, jerr), out)
		} else if res.Error != "" || err != nil {
			last = fmt.Errorf("iperf3 %s path: %s (%v)", p.name, res.Error, err)
		} else {
			return res.End.SumReceived.BitsPerSecond, nil
		}
		if err := poll.Sleep(ctx, 250*time.Millisecond); err != nil {
			return 0, err
		}
	}
	return 0, last
}
