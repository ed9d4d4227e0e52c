// Package probe tells whether peer hosts answer on the data path. A Prober
// sends every host address it is told to watch one ICMP echo request per
// interval, all from one raw socket; once a request goes unanswered it asks
// that host four times as often, and calls it down after a number of
// requests in a row went unanswered, and up again on its next reply. The
// peer host's kernel answers, not the peer's agent, so a hung agent on a
// healthy host still counts as up. Per host it keeps the last minute of
// round trips and losses in a fixed-size ring (Health), exported as
// metrics labelled by host address.
//
// probe never speaks gossip and changes nothing in the kernel: it only sends
// echo requests to the addresses it is given and reads the replies. Which
// hosts to watch and what a verdict means for a route is the agent's
// business.
package probe

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults: a request a second, and after a miss one every 250 ms; down
// after eight unanswered in a row. A dead host is called down 2.75-3.75 s
// after it stopped answering, as with three misses a second apart, while
// a healthy host behind a link that loses 20 % of packets each way (35 %
// of round trips) is called down once in hours rather than every minute:
// eight lost round trips in a row are 0.35^8, three are 0.35^3.
const (
	DefaultInterval = time.Second
	DefaultMisses   = 8
)

// retryDivisor: after a miss a host is asked again every Interval/4.
const retryDivisor = 4

// Verdict is what the Prober knows about one watched host.
type Verdict struct {
	// Up: the host answered, and fewer than Misses requests in a row have
	// gone unanswered since.
	Up bool
	// LastReply is when the host last answered; zero if it never did.
	LastReply time.Time
	// Misses counts the requests in a row that went unanswered.
	Misses int
}

// Conn sends echo requests and reads echo replies. Listen returns the real
// one; tests use their own.
type Conn interface {
	// WriteEcho sends an echo request with the given identifier and
	// sequence number to dst.
	WriteEcho(dst netip.Addr, id, seq uint16) error
	// ReadEcho blocks until an echo reply arrives and returns its source,
	// identifier and sequence number. After Close it returns an error.
	ReadEcho() (from netip.Addr, id, seq uint16, err error)
	Close() error
}

// Config tunes a Prober; zero fields take the defaults.
type Config struct {
	Interval time.Duration
	Misses   int
	Logger   *slog.Logger
	// Registerer, if set, gets the prober's counters.
	Registerer prometheus.Registerer
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// Prober watches a set of host addresses. Its methods are safe for
// concurrent use.
type Prober struct {
	cfg     Config
	conn    Conn
	id      uint16
	log     *slog.Logger
	metrics metrics
	changed chan struct{}
	// rescheduled wakes Run when Watch adds a host that is due at once.
	rescheduled chan struct{}

	mu      sync.Mutex
	targets tracker
}

// New returns a Prober that speaks through conn. It sends nothing until Run.
func New(cfg Config, conn Conn) (*Prober, error) {
	if cfg.Interval < 0 || cfg.Misses < 0 {
		return nil, fmt.Errorf("probe: interval %v and misses %d must not be negative", cfg.Interval, cfg.Misses)
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Misses == 0 {
		cfg.Misses = DefaultMisses
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	var id [2]byte
	rand.Read(id[:])
	p := &Prober{
		cfg:         cfg,
		conn:        conn,
		id:          binary.BigEndian.Uint16(id[:]),
		log:         cfg.Logger,
		metrics:     newMetrics(),
		changed:     make(chan struct{}, 1),
		rescheduled: make(chan struct{}, 1),
		targets:     tracker{misses: cfg.Misses, interval: cfg.Interval, retry: cfg.Interval / retryDivisor, hosts: make(map[netip.Addr]*target)},
	}
	if cfg.Registerer != nil {
		p.metrics.register(cfg.Registerer)
		cfg.Registerer.MustRegister(healthCollector{p})
	}
	return p, nil
}

// Watch replaces the set of watched hosts. A host that stays keeps its
// verdict; a new one is down until it first answers.
func (p *Prober) Watch(hosts []netip.Addr) {
	p.mu.Lock()
	p.targets.watch(hosts)
	var n4, n6 int
	for h := range p.targets.hosts {
		if h.Is4() {
			n4++
		} else {
			n6++
		}
	}
	p.mu.Unlock()
	p.metrics.targets.v4.Set(float64(n4))
	p.metrics.targets.v6.Set(float64(n6))
	select {
	case p.rescheduled <- struct{}{}:
	default:
	}
}

// Verdicts returns the verdict of every watched host.
func (p *Prober) Verdicts() map[netip.Addr]Verdict {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.targets.verdicts()
}

// Changed is notified (coalesced) whenever a host goes up or down.
func (p *Prober) Changed() <-chan struct{} { return p.changed }

// Run probes until ctx ends, then closes the connection.
func (p *Prober) Run(ctx context.Context) error {
	readDone := make(chan error, 1)
	go func() { readDone <- p.readReplies() }()
	timer := time.NewTimer(p.cfg.Interval)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			p.conn.Close()
			<-readDone
			return nil
		case err := <-readDone:
			p.conn.Close()
			return fmt.Errorf("probe: read replies: %w", err)
		case <-p.rescheduled:
		case <-timer.C:
			p.tick()
		}
		p.mu.Lock()
		wait := p.targets.untilDue(p.cfg.Now())
		p.mu.Unlock()
		timer.Reset(wait)
	}
}

// tick counts the unanswered requests of the hosts that are due and sends
// them the next. After the process was stopped for a while (SIGSTOP, a
// long pause) the timer fires once, not for every missed request, so a
// pause costs at most one miss and cannot turn healthy hosts down by
// itself.
func (p *Prober) tick() {
	p.mu.Lock()
	probes, flipped := p.targets.tick(p.cfg.Now())
	p.mu.Unlock()
	p.notify(flipped)
	for _, pr := range probes {
		p.metrics.requests.of(pr.host).Inc()
		if err := p.conn.WriteEcho(pr.host, p.id, pr.seq); err != nil {
			// No route, link down: the request counts as unanswered.
			p.metrics.sendErrors.of(pr.host).Inc()
			p.log.Debug("echo request not sent", "host", pr.host, "err", err)
		}
	}
}

func (p *Prober) readReplies() error {
	for {
		from, id, seq, err := p.conn.ReadEcho()
		if err != nil {
			return err
		}
		if id != p.id {
			continue // someone else's ping
		}
		p.mu.Lock()
		known, flipped := p.targets.reply(from, seq, p.cfg.Now())
		p.mu.Unlock()
		if known {
			p.metrics.replies.of(from).Inc()
		}
		p.notify(flipped)
	}
}

func (p *Prober) notify(flipped []flip) {
	for _, f := range flipped {
		if f.up {
			p.log.Info("host answers on the data path again", "host", f.host)
		} else {
			p.log.Warn("host stopped answering on the data path", "host", f.host, "unanswered", p.cfg.Misses)
		}
	}
	if len(flipped) == 0 {
		return
	}
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// tracker is the Prober's state without any I/O: which request each host
// has outstanding, how many went unanswered in a row, and the verdicts that
// follow.
type tracker struct {
	misses int // unanswered requests in a row that make a host down
	// interval is between requests to a host that answers, retry between
	// requests to one whose last request went unanswered (zero: every
	// tick).
	interval, retry time.Duration
	hosts           map[netip.Addr]*target
}

type target struct {
	seq         uint16    // of the last request sent
	sent        int       // requests sent, to tell a reply to an old one
	next        time.Time // when the next request is due
	outstanding bool      // the last request is unanswered
	misses      int
	lastReply   time.Time
	// sentAt is when the last request was sent; history holds the
	// requests resolved since (see Health).
	sentAt  time.Time
	history history
}

func (t *target) up(misses int) bool { return !t.lastReply.IsZero() && t.misses < misses }

type probe struct {
	host netip.Addr
	seq  uint16
}

type flip struct {
	host netip.Addr
	up   bool
}

func (tr *tracker) watch(hosts []netip.Addr) {
	keep := make(map[netip.Addr]bool, len(hosts))
	for _, h := range hosts {
		keep[h] = true
		if _, ok := tr.hosts[h]; !ok && h.IsValid() {
			tr.hosts[h] = &target{}
		}
	}
	for h := range tr.hosts {
		if !keep[h] {
			delete(tr.hosts, h)
		}
	}
}

// tick sends the next request to every host that is due: one whose last
// request is still unanswered counts a miss, and is asked again sooner. It
// returns the requests, sorted by host, and the hosts that went down.
func (tr *tracker) tick(now time.Time) ([]probe, []flip) {
	var flipped []flip
	probes := make([]probe, 0, len(tr.hosts))
	for h, t := range tr.hosts {
		if !tr.due(t, now) {
			continue
		}
		if t.outstanding {
			t.history.add(sample{sent: t.sentAt, lost: true})
			wasUp := t.up(tr.misses)
			t.misses++
			if wasUp && !t.up(tr.misses) {
				flipped = append(flipped, flip{h, false})
			}
		}
		t.seq++
		t.sent++
		t.outstanding = true
		t.sentAt = now
		t.next = now.Add(tr.interval)
		if t.misses > 0 {
			t.next = now.Add(tr.retry)
		}
		probes = append(probes, probe{h, t.seq})
	}
	slices.SortFunc(probes, func(a, b probe) int { return a.host.Compare(b.host) })
	slices.SortFunc(flipped, func(a, b flip) int { return a.host.Compare(b.host) })
	return probes, flipped
}

// due reports whether t's next request goes out in a tick at now. A host
// at the normal pace goes up to half an interval early, so hosts added at
// different moments fall into one phase: an idle agent then wakes once a
// round for all its peers, not once per peer. A host being retried keeps
// its own pace, so loss never brings its down verdict forward.
func (tr *tracker) due(t *target, now time.Time) bool {
	if t.misses == 0 {
		return !now.Before(t.next.Add(-tr.interval / 2))
	}
	return !now.Before(t.next)
}

// reply records an echo reply. A reply to one of the last misses+1
// requests counts (a slow answer is still an answer); older ones, and
// replies from hosts not watched, do not. It reports whether the reply
// counted and the host that came up, if any.
func (tr *tracker) reply(from netip.Addr, seq uint16, now time.Time) (bool, []flip) {
	t, ok := tr.hosts[from]
	if !ok {
		return false, nil
	}
	age := int(t.seq - seq) // uint16 arithmetic wraps
	if t.sent == 0 || age > tr.misses || age >= t.sent {
		return false, nil
	}
	wasUp, wasMissing := t.up(tr.misses), t.misses > 0
	if age == 0 && t.outstanding {
		t.history.add(sample{sent: t.sentAt, rtt: now.Sub(t.sentAt)})
	}
	t.misses = 0
	t.outstanding = t.outstanding && age != 0
	t.lastReply = now
	if wasMissing && age == 0 {
		t.next = now.Add(tr.interval) // back to the normal pace
	}
	if !wasUp {
		return true, []flip{{from, true}}
	}
	return true, nil
}

// untilDue is how long until the next request is due (at most interval,
// so a host added meanwhile waits no longer).
func (tr *tracker) untilDue(now time.Time) time.Duration {
	wait := tr.interval
	for _, t := range tr.hosts {
		wait = min(wait, t.next.Sub(now))
	}
	return max(wait, 0)
}

func (tr *tracker) verdicts() map[netip.Addr]Verdict {
	out := make(map[netip.Addr]Verdict, len(tr.hosts))
	for h, t := range tr.hosts {
		out[h] = Verdict{Up: t.up(tr.misses), LastReply: t.lastReply, Misses: t.misses}
	}
	return out
}

// ErrClosed is returned by a Conn's ReadEcho after Close.
var ErrClosed = errors.New("probe: connection closed")

// metrics are the prober's counters, labelled by the address family of
// the host (family="ipv4", "ipv6": peers' IPv6 host addresses, probed over
// ICMPv6). Each family's child is resolved once, not per request.
type metrics struct {
	requests, replies, sendErrors family[prometheus.Counter]
	targets                       family[prometheus.Gauge]
	vecs                          []prometheus.Collector
}

// family holds a metric's child for each address family.
type family[M any] struct{ v4, v6 M }

// of is the child for host's family.
func (f family[M]) of(host netip.Addr) M {
	if host.Is4() {
		return f.v4
	}
	return f.v6
}

func newMetrics() metrics {
	counter := func(name, help string) (family[prometheus.Counter], prometheus.Collector) {
		v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"family"})
		return family[prometheus.Counter]{v.WithLabelValues("ipv4"), v.WithLabelValues("ipv6")}, v
	}
	var m metrics
	var requests, replies, sendErrors prometheus.Collector
	m.requests, requests = counter("grapevine_probe_requests_total", "ICMP and ICMPv6 echo requests sent to peer hosts to check the data path, by family (ipv4, ipv6).")
	m.replies, replies = counter("grapevine_probe_replies_total", "ICMP and ICMPv6 echo replies received from watched peer hosts, by family.")
	m.sendErrors, sendErrors = counter("grapevine_probe_send_errors_total", "Echo requests the kernel refused to send (no route, link down), by family; each counts as unanswered.")
	targets := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "grapevine_probe_hosts",
		Help: "Peer host addresses whose data path is being probed, by family.",
	}, []string{"family"})
	m.targets = family[prometheus.Gauge]{targets.WithLabelValues("ipv4"), targets.WithLabelValues("ipv6")}
	m.vecs = []prometheus.Collector{requests, replies, sendErrors, targets}
	return m
}

func (m metrics) register(reg prometheus.Registerer) {
	reg.MustRegister(m.vecs...)
}
