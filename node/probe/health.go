package probe

import (
	"math"
	"net/netip"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// HealthWindow is the span the per-host round-trip statistics cover.
const HealthWindow = time.Minute

// historySize is how many resolved requests a host keeps: a minute at the
// retry pace (four a second with the default interval) fits, so memory per
// host is fixed however long the agent runs. A shorter --probe-interval
// fills it sooner and the statistics then cover less than HealthWindow.
const historySize = 256

// Health is one watched host's data path over the last HealthWindow: how
// many of the requests sent to it were answered and how fast. A request
// counts once it is resolved: answered, or still unanswered when the next
// one is sent (a reply later than that counts as lost here, as `ping -W`
// would count it, though it still keeps the host up).
type Health struct {
	// Requests resolved in the window, and how many of them were lost.
	Requests, Lost int
	// Loss is Lost/Requests; 0 without requests.
	Loss float64
	// RTTp50 and RTTp99 are the round-trip quantiles of the answered
	// requests (nearest rank); zero when none was answered.
	RTTp50, RTTp99 time.Duration
}

// sample is one resolved request.
type sample struct {
	sent time.Time
	rtt  time.Duration // of the reply; meaningless when lost
	lost bool
}

// history is a fixed-size ring of a host's last resolved requests.
type history struct {
	buf  [historySize]sample
	next int // where the next sample goes
	n    int // samples held, at most historySize
}

func (h *history) add(s sample) {
	h.buf[h.next] = s
	h.next = (h.next + 1) % historySize
	h.n = min(h.n+1, historySize)
}

// samples returns the held samples, oldest first.
func (h *history) samples() []sample {
	out := make([]sample, 0, h.n)
	start := (h.next - h.n + historySize) % historySize
	for i := range h.n {
		out = append(out, h.buf[(start+i)%historySize])
	}
	return out
}

// summarize computes the health from the samples of requests sent at or
// after since.
func summarize(samples []sample, since time.Time) Health {
	var h Health
	rtts := make([]time.Duration, 0, len(samples))
	for _, s := range samples {
		if s.sent.Before(since) {
			continue
		}
		h.Requests++
		if s.lost {
			h.Lost++
			continue
		}
		rtts = append(rtts, s.rtt)
	}
	if h.Requests > 0 {
		h.Loss = float64(h.Lost) / float64(h.Requests)
	}
	slices.Sort(rtts)
	h.RTTp50 = quantile(rtts, 0.5)
	h.RTTp99 = quantile(rtts, 0.99)
	return h
}

// quantile is the nearest-rank q-quantile of sorted: the smallest value
// with at least q of the values at or below it; zero for no values.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	// The epsilon keeps an exact rank (0.99 of 100) from rounding up.
	rank := int(math.Ceil(q*float64(len(sorted)) - 1e-9))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// Health returns the health of every watched host over the last
// HealthWindow.
func (p *Prober) Health() map[netip.Addr]Health {
	since := p.cfg.Now().Add(-HealthWindow)
	p.mu.Lock()
	held := make(map[netip.Addr][]sample, len(p.targets.hosts))
	for h, t := range p.targets.hosts {
		held[h] = t.history.samples()
	}
	p.mu.Unlock()
	out := make(map[netip.Addr]Health, len(held))
	for h, s := range held {
		out[h] = summarize(s, since)
	}
	return out
}

// healthCollector exports Health per watched host at scrape time, so a
// host no longer watched leaves no series behind: the label values are
// exactly the watched peers.
type healthCollector struct{ p *Prober }

var (
	rttDesc = prometheus.NewDesc("grapevine_probe_rtt_seconds",
		"Round trip of the echo requests a watched peer host answered over the last minute, by quantile (nearest rank); absent while none was answered.",
		[]string{"host", "quantile"}, nil)
	lossDesc = prometheus.NewDesc("grapevine_probe_loss_ratio",
		"Share of the echo requests to a watched peer host over the last minute that went unanswered.",
		[]string{"host"}, nil)
	windowRequestsDesc = prometheus.NewDesc("grapevine_probe_window_requests",
		"Echo requests to a watched peer host resolved (answered or lost) over the last minute: the sample behind the loss ratio.",
		[]string{"host"}, nil)
)

func (c healthCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- rttDesc
	ch <- lossDesc
	ch <- windowRequestsDesc
}

func (c healthCollector) Collect(ch chan<- prometheus.Metric) {
	for host, h := range c.p.Health() {
		label := host.String()
		ch <- prometheus.MustNewConstMetric(windowRequestsDesc, prometheus.GaugeValue, float64(h.Requests), label)
		ch <- prometheus.MustNewConstMetric(lossDesc, prometheus.GaugeValue, h.Loss, label)
		if h.Requests > h.Lost {
			ch <- prometheus.MustNewConstMetric(rttDesc, prometheus.GaugeValue, h.RTTp50.Seconds(), label, "0.5")
			ch <- prometheus.MustNewConstMetric(rttDesc, prometheus.GaugeValue, h.RTTp99.Seconds(), label, "0.99")
		}
	}
}
