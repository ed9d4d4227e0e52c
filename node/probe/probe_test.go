package probe

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

var (
	hostA = netip.MustParseAddr("172.16.254.2")
	hostB = netip.MustParseAddr("172.16.254.3")
	t0    = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
)

// step is one event of a tracker scenario: a tick (the end of a round and
// the next requests), or a reply from a host to the request sent `age`
// rounds ago (0: the latest).
type step struct {
	tick  bool
	reply netip.Addr
	age   uint16
	// what the step must report
	wantFlips []flip
	wantCount bool // for a reply: it counted
}

func TestTracker(t *testing.T) {
	tick := func(flips ...flip) step { return step{tick: true, wantFlips: flips} }
	reply := func(h netip.Addr, age uint16, counted bool, flips ...flip) step {
		return step{reply: h, age: age, wantCount: counted, wantFlips: flips}
	}
	up := func(h netip.Addr) flip { return flip{h, true} }
	down := func(h netip.Addr) flip { return flip{h, false} }

	tests := []struct {
		name  string
		steps []step
		want  map[netip.Addr]Verdict // after the steps; LastReply checked for zero only
	}{
		{
			name:  "new host is down until it answers",
			steps: []step{tick(), tick(), tick(), tick()},
			want:  map[netip.Addr]Verdict{hostA: {Misses: 3}, hostB: {Misses: 3}},
		},
		{
			name:  "first reply brings a host up",
			steps: []step{tick(), reply(hostA, 0, true, up(hostA))},
			want:  map[netip.Addr]Verdict{hostA: {Up: true}, hostB: {}},
		},
		{
			name: "two lost requests in a row do not flap",
			steps: []step{
				tick(), reply(hostA, 0, true, up(hostA)),
				tick(), tick(), tick(), reply(hostA, 0, true),
			},
			want: map[netip.Addr]Verdict{hostA: {Up: true}, hostB: {Misses: 3}},
		},
		{
			name: "three unanswered in a row: down; the next reply: up",
			steps: []step{
				tick(), reply(hostA, 0, true, up(hostA)), reply(hostB, 0, true, up(hostB)),
				tick(), reply(hostB, 0, true),
				tick(), reply(hostB, 0, true),
				tick(), reply(hostB, 0, true),
				tick(down(hostA)), reply(hostB, 0, true),
				reply(hostA, 0, true, up(hostA)),
			},
			want: map[netip.Addr]Verdict{hostA: {Up: true}, hostB: {Up: true}},
		},
		{
			name: "a late reply to a recent request counts",
			steps: []step{
				tick(), reply(hostA, 0, true, up(hostA)),
				tick(), tick(), reply(hostA, 1, true),
			},
			want: map[netip.Addr]Verdict{hostA: {Up: true}, hostB: {Misses: 2}},
		},
		{
			name: "a reply to a request older than the window does not",
			steps: []step{
				tick(), tick(), tick(), tick(), tick(),
				reply(hostA, 4, false),
				reply(hostA, 0, true, up(hostA)),
			},
			want: map[netip.Addr]Verdict{hostA: {Up: true}, hostB: {Misses: 4}},
		},
		{
			name:  "a reply before any request, or from a host not watched, does not count",
			steps: []step{reply(hostA, 0, false), tick(), reply(netip.MustParseAddr("10.0.0.9"), 0, false)},
			want:  map[netip.Addr]Verdict{hostA: {}, hostB: {}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := tracker{misses: 3, hosts: map[netip.Addr]*target{}}
			tr.watch([]netip.Addr{hostB, hostA, hostA})
			now := t0
			for i, s := range tt.steps {
				now = now.Add(100 * time.Millisecond)
				if s.tick {
					probes, flips := tr.tick(now)
					if len(probes) != 2 || probes[0].host != hostA || probes[1].host != hostB {
						t.Fatalf("step %d: probes %v, want one to each host in order", i, probes)
					}
					if !slices.Equal(flips, s.wantFlips) {
						t.Fatalf("step %d: tick flipped %v, want %v", i, flips, s.wantFlips)
					}
					continue
				}
				seq := uint16(0)
				if tg, ok := tr.hosts[s.reply]; ok {
					seq = tg.seq - s.age
				}
				counted, flips := tr.reply(s.reply, seq, now)
				if counted != s.wantCount || !slices.Equal(flips, s.wantFlips) {
					t.Fatalf("step %d: reply from %s counted %v flipped %v, want %v %v", i, s.reply, counted, flips, s.wantCount, s.wantFlips)
				}
			}
			got := tr.verdicts()
			for h, want := range tt.want {
				g := got[h]
				if g.Up != want.Up || g.Misses != want.Misses || want.Up && g.LastReply.IsZero() {
					t.Errorf("%s: verdict %+v, want %+v", h, g, want)
				}
			}
		})
	}
}

func TestTrackerWatch(t *testing.T) {
	tr := tracker{misses: 3, hosts: map[netip.Addr]*target{}}
	tr.watch([]netip.Addr{hostA, hostB, {}})
	tr.tick(t0)
	tr.reply(hostA, tr.hosts[hostA].seq, t0)
	tr.watch([]netip.Addr{hostA}) // b goes, a keeps its verdict
	v := tr.verdicts()
	if len(v) != 1 || !v[hostA].Up || !v[hostA].LastReply.Equal(t0) {
		t.Fatalf("verdicts after watch = %v", v)
	}
	tr.watch([]netip.Addr{hostA, hostB}) // b is new again: down
	if v := tr.verdicts(); v[hostB].Up || !v[hostA].Up {
		t.Fatalf("verdicts after re-watch = %v", v)
	}
}

func TestTrackerSequenceWraps(t *testing.T) {
	tr := tracker{misses: 3, hosts: map[netip.Addr]*target{}}
	tr.watch([]netip.Addr{hostA})
	for range 70000 {
		probes, _ := tr.tick(t0)
		if counted, _ := tr.reply(hostA, probes[0].seq, t0); !counted {
			t.Fatalf("reply to seq %d (sent %d) not counted", probes[0].seq, tr.hosts[hostA].sent)
		}
	}
	if !tr.verdicts()[hostA].Up {
		t.Fatal("host down after answering every request")
	}
}

// loopConn answers every request from the hosts in answering, as their
// kernels would, and records what was sent.
type loopConn struct {
	mu        sync.Mutex
	answering map[netip.Addr]bool
	sent      []netip.Addr
	replies   chan [3]any
	closed    chan struct{}
	once      sync.Once
}

func newLoopConn(answering ...netip.Addr) *loopConn {
	c := &loopConn{answering: map[netip.Addr]bool{}, replies: make(chan [3]any, 64), closed: make(chan struct{})}
	for _, h := range answering {
		c.answering[h] = true
	}
	return c
}

func (c *loopConn) set(h netip.Addr, answers bool) {
	c.mu.Lock()
	c.answering[h] = answers
	c.mu.Unlock()
}

func (c *loopConn) WriteEcho(dst netip.Addr, id, seq uint16) error {
	c.mu.Lock()
	c.sent = append(c.sent, dst)
	answers := c.answering[dst]
	c.mu.Unlock()
	if answers {
		c.replies <- [3]any{dst, id, seq}
	}
	return nil
}

func (c *loopConn) ReadEcho() (netip.Addr, uint16, uint16, error) {
	select {
	case r := <-c.replies:
		return r[0].(netip.Addr), r[1].(uint16), r[2].(uint16), nil
	case <-c.closed:
		return netip.Addr{}, 0, 0, ErrClosed
	}
}

func (c *loopConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// TestProberRun: a running Prober calls an answering host up and, after it
// stops answering, down, and says so on Changed each time.
func TestProberRun(t *testing.T) {
	conn := newLoopConn(hostA)
	p, err := New(Config{Interval: 10 * time.Millisecond}, conn)
	if err != nil {
		t.Fatal(err)
	}
	p.Watch([]netip.Addr{hostA, hostB})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()

	waitVerdict := func(h netip.Addr, up bool) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for p.Verdicts()[h].Up != up {
			select {
			case <-p.Changed():
			case <-time.After(50 * time.Millisecond):
			case <-deadline:
				t.Fatalf("%s never became up=%v: %+v", h, up, p.Verdicts()[h])
			}
		}
	}
	waitVerdict(hostA, true)
	if v := p.Verdicts()[hostB]; v.Up || !v.LastReply.IsZero() {
		t.Fatalf("silent host b: %+v", v)
	}
	conn.set(hostA, false)
	waitVerdict(hostA, false)
	conn.set(hostA, true)
	waitVerdict(hostA, true)

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestNewRejectsNegative(t *testing.T) {
	if _, err := New(Config{Interval: -time.Second}, newLoopConn()); err == nil {
		t.Fatal("negative interval accepted")
	}
	if _, err := New(Config{Misses: -1}, newLoopConn()); err == nil {
		t.Fatal("negative misses accepted")
	}
}

// TestTrackerRetriesSooner: a host that answers is asked once an interval;
// one whose request went unanswered is asked every retry until it answers
// or is down, so a dead host is down within interval + (misses-1)*retry of
// its last request, and a host that answers again goes back to the
// interval.
func TestTrackerRetriesSooner(t *testing.T) {
	const interval, retry = time.Second, 250 * time.Millisecond
	tr := tracker{misses: DefaultMisses, interval: interval, retry: retry, hosts: map[netip.Addr]*target{}}
	tr.watch([]netip.Addr{hostA})
	now := t0
	sends := func() int {
		probes, _ := tr.tick(now)
		return len(probes)
	}
	if sends() != 1 {
		t.Fatal("a new host is not asked at once")
	}
	tr.reply(hostA, tr.hosts[hostA].seq, now)
	now = now.Add(retry)
	if sends() != 0 || tr.untilDue(now) != interval-retry {
		t.Fatalf("a host that answered is asked again before the interval (due in %v)", tr.untilDue(now))
	}
	// It stops answering: asked at the interval, then every retry.
	now = t0.Add(interval)
	if sends() != 1 {
		t.Fatal("not asked after the interval")
	}
	var downAt time.Time
	for i := 0; downAt.IsZero() && i < 20; i++ {
		if d := tr.untilDue(now); i > 0 && d != retry {
			t.Fatalf("after %d misses the next request is due in %v, want %v", tr.hosts[hostA].misses, d, retry)
		}
		now = now.Add(tr.untilDue(now))
		if _, flips := tr.tick(now); len(flips) == 1 && !flips[0].up {
			downAt = now
		}
	}
	lastAnswered := t0
	if want := lastAnswered.Add(2*interval + (DefaultMisses-1)*retry); !downAt.Equal(want) {
		t.Fatalf("down at +%v, want +%v", downAt.Sub(t0), want.Sub(t0))
	}
	// It answers again: up, and back to one request an interval.
	if _, flips := tr.reply(hostA, tr.hosts[hostA].seq, now); len(flips) != 1 || !flips[0].up {
		t.Fatalf("reply after down flipped %v", flips)
	}
	if d := tr.untilDue(now); d != interval {
		t.Fatalf("after answering again the next request is due in %v, want %v", d, interval)
	}
}

// TestTrackerFallsIntoOnePhase: hosts added at different moments are asked
// in one tick from the second round on, so an idle agent wakes once a
// round, while a host being retried keeps its own pace.
func TestTrackerFallsIntoOnePhase(t *testing.T) {
	const interval = time.Second
	tr := tracker{misses: DefaultMisses, interval: interval, retry: interval / retryDivisor, hosts: map[netip.Addr]*target{}}
	tr.watch([]netip.Addr{hostA})
	tr.tick(t0)
	tr.reply(hostA, tr.hosts[hostA].seq, t0)

	later := t0.Add(300 * time.Millisecond)
	tr.watch([]netip.Addr{hostA, hostB})
	if probes, _ := tr.tick(later); len(probes) != 1 || probes[0].host != hostB {
		t.Fatalf("a host added later is not asked at once: %v", probes)
	}
	tr.reply(hostB, tr.hosts[hostB].seq, later)

	now := t0.Add(tr.untilDue(t0))
	if probes, _ := tr.tick(now); len(probes) != 2 {
		t.Fatalf("at +%v %d hosts asked, want both", now.Sub(t0), len(probes))
	}
	tr.reply(hostA, tr.hosts[hostA].seq, now)
	// hostB stops answering: it is retried at its own pace, hostA is not
	// pulled along.
	now = now.Add(interval)
	if probes, _ := tr.tick(now); len(probes) != 2 {
		t.Fatalf("second round: %d hosts asked, want both", len(probes))
	}
	tr.reply(hostA, tr.hosts[hostA].seq, now)
	now = now.Add(tr.untilDue(now))
	if probes, _ := tr.tick(now); len(probes) != 1 || probes[0].host != hostB {
		t.Fatalf("retry tick asked %v, want only the host that missed", probes)
	}
}

// TestProberMetricsByFamily: an IPv6 host is probed like an IPv4 one, and
// the counters and the watched hosts are labelled by family.
func TestProberMetricsByFamily(t *testing.T) {
	host6 := netip.MustParseAddr("fd00:172:16:254::2")
	conn := newLoopConn(hostA, host6)
	reg := prometheus.NewRegistry()
	p, err := New(Config{Interval: 10 * time.Millisecond, Registerer: reg}, conn)
	if err != nil {
		t.Fatal(err)
	}
	p.Watch([]netip.Addr{hostA, hostB, host6})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	deadline := time.After(10 * time.Second) // a deadline, not a speed goal
	for !p.Verdicts()[host6].Up || !p.Verdicts()[hostA].Up {
		select {
		case <-p.Changed():
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("verdicts %v: the IPv4 and IPv6 hosts never both up", p.Verdicts())
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	const hosts = `
# HELP grapevine_probe_hosts Peer host addresses whose data path is being probed, by family.
# TYPE grapevine_probe_hosts gauge
grapevine_probe_hosts{family="ipv4"} 2
grapevine_probe_hosts{family="ipv6"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(hosts), "grapevine_probe_hosts"); err != nil {
		t.Error(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "grapevine_probe_replies_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetCounter().GetValue() < 1 {
				t.Errorf("no reply counted for %v", m.GetLabel())
			}
		}
		if len(mf.GetMetric()) != 2 {
			t.Errorf("replies labelled %v, want ipv4 and ipv6", mf.GetMetric())
		}
	}
}
