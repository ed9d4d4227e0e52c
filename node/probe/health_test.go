package probe

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func TestQuantile(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = ms(i + 1)
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		q      float64
		want   time.Duration
	}{
		{"no values", nil, 0.5, 0},
		{"one value is every quantile", []time.Duration{ms(3)}, 0.99, ms(3)},
		{"median of two is the lower", []time.Duration{ms(1), ms(9)}, 0.5, ms(1)},
		{"median of three", []time.Duration{ms(1), ms(2), ms(9)}, 0.5, ms(2)},
		{"p99 of three is the largest", []time.Duration{ms(1), ms(2), ms(9)}, 0.99, ms(9)},
		{"p50 of 1..100 ms at its exact rank", hundred, 0.5, ms(50)},
		{"p99 of 1..100 ms at its exact rank", hundred, 0.99, ms(99)},
		{"q 0 is the smallest", hundred, 0, ms(1)},
		{"q 1 is the largest", hundred, 1, ms(100)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := quantile(tt.sorted, tt.q); got != tt.want {
				t.Fatalf("quantile(%v) = %v, want %v", tt.q, got, tt.want)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	ok := func(s, rtt int) sample { return sample{sent: at(s), rtt: ms(rtt)} }
	lost := func(s int) sample { return sample{sent: at(s), lost: true} }
	tests := []struct {
		name    string
		samples []sample
		since   time.Time
		want    Health
	}{
		{"nothing resolved yet", nil, at(0), Health{}},
		{"all answered", []sample{ok(1, 3), ok(2, 1), ok(3, 2)}, at(0),
			Health{Requests: 3, RTTp50: ms(2), RTTp99: ms(3)}},
		{"all lost: no round trip", []sample{lost(1), lost(2)}, at(0),
			Health{Requests: 2, Lost: 2, Loss: 1}},
		{"a quarter lost; losses do not enter the quantiles", []sample{ok(1, 1), lost(2), ok(3, 5), ok(4, 2)}, at(0),
			Health{Requests: 4, Lost: 1, Loss: 0.25, RTTp50: ms(2), RTTp99: ms(5)}},
		{"samples before the window are left out", []sample{lost(1), ok(2, 100), ok(70, 1), ok(71, 3)}, at(11),
			Health{Requests: 2, RTTp50: ms(1), RTTp99: ms(3)}},
		{"a sample at the window's start counts", []sample{lost(10), ok(11, 4)}, at(10),
			Health{Requests: 2, Lost: 1, Loss: 0.5, RTTp50: ms(4), RTTp99: ms(4)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := summarize(tt.samples, tt.since); got != tt.want {
				t.Fatalf("summarize = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestHistoryRing(t *testing.T) {
	tests := []struct {
		name             string
		added            int
		wantN            int
		wantOld, wantNew int // rtt in ms of the oldest and newest held
	}{
		{"empty", 0, 0, 0, 0},
		{"partly filled", 3, 3, 1, 3},
		{"exactly full", historySize, historySize, 1, historySize},
		{"wrapped: the oldest are dropped", historySize + 10, historySize, 11, historySize + 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h history
			for i := 1; i <= tt.added; i++ {
				h.add(sample{rtt: ms(i)})
			}
			got := h.samples()
			if len(got) != tt.wantN {
				t.Fatalf("held %d samples, want %d", len(got), tt.wantN)
			}
			if tt.wantN == 0 {
				return
			}
			if got[0].rtt != ms(tt.wantOld) || got[len(got)-1].rtt != ms(tt.wantNew) {
				t.Fatalf("oldest %v newest %v, want %v %v", got[0].rtt, got[len(got)-1].rtt, ms(tt.wantOld), ms(tt.wantNew))
			}
		})
	}
}

// TestTrackerHistory: the tracker records a round trip for an answer to the
// latest request, a loss for a request still unanswered at the next tick,
// and nothing for duplicate or late answers.
func TestTrackerHistory(t *testing.T) {
	tr := tracker{misses: 3, hosts: map[netip.Addr]*target{}}
	tr.watch([]netip.Addr{hostA})
	now := t0
	send := func() uint16 {
		probes, _ := tr.tick(now)
		return probes[0].seq
	}
	seq := send()
	now = now.Add(ms(4))
	tr.reply(hostA, seq, now)            // answered in 4 ms
	tr.reply(hostA, seq, now.Add(ms(1))) // a duplicate: not a second sample
	now = now.Add(time.Second)
	send() // unanswered
	now = now.Add(time.Second)
	seq = send()                           // the previous one counts as lost
	tr.reply(hostA, seq-1, now.Add(ms(1))) // late answer to the lost one: still lost here
	now = now.Add(ms(2))
	tr.reply(hostA, seq, now) // answered in 2 ms
	got := summarize(tr.hosts[hostA].history.samples(), t0)
	want := Health{Requests: 3, Lost: 1, Loss: 1.0 / 3, RTTp50: ms(2), RTTp99: ms(4)}
	if got != want {
		t.Fatalf("health %+v, want %+v", got, want)
	}
}

func TestHealthMetrics(t *testing.T) {
	now := t0
	reg := prometheus.NewPedanticRegistry()
	p, err := New(Config{Registerer: reg, Now: func() time.Time { return now }}, newLoopConn())
	if err != nil {
		t.Fatal(err)
	}
	p.Watch([]netip.Addr{hostA, hostB})
	p.mu.Lock()
	probes, _ := p.targets.tick(now)
	now = now.Add(ms(3))
	p.targets.reply(hostA, probes[0].seq, now)
	now = now.Add(time.Second)
	p.targets.tick(now) // b's request is lost, a's next is outstanding
	p.mu.Unlock()

	want := `
# HELP grapevine_probe_loss_ratio Share of the echo requests to a watched peer host over the last minute that went unanswered.
# TYPE grapevine_probe_loss_ratio gauge
grapevine_probe_loss_ratio{host="172.16.254.2"} 0
grapevine_probe_loss_ratio{host="172.16.254.3"} 1
# HELP grapevine_probe_rtt_seconds Round trip of the echo requests a watched peer host answered over the last minute, by quantile (nearest rank); absent while none was answered.
# TYPE grapevine_probe_rtt_seconds gauge
grapevine_probe_rtt_seconds{host="172.16.254.2",quantile="0.5"} 0.003
grapevine_probe_rtt_seconds{host="172.16.254.2",quantile="0.99"} 0.003
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "grapevine_probe_loss_ratio", "grapevine_probe_rtt_seconds"); err != nil {
		t.Fatal(err)
	}
	p.Watch([]netip.Addr{hostA})
	if n := testutil.CollectAndCount(healthCollector{p}, "grapevine_probe_loss_ratio"); n != 1 {
		t.Fatalf("%d loss series after b is no longer watched, want 1", n)
	}
}
