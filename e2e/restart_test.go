package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// TestRestart: restart an agent (SIGTERM, then start) while a TCP stream runs
// between pods on two hosts and pods on the other two hosts ping a pod on
// the restarted one. The stream survives; the restarted host's routes stay
// in its kernel, and its peers keep the route to its block the whole time
// (its host answers their probes: "left; kept by data path"), so the pings
// from other hosts to its pod go on with at most restartLossBound lost.
func TestRestart(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 3})
	ctx := timeout(t, 3*time.Minute)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	before, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	b2 := before[h2.Name].Block
	server := addPods(t, ctx, h1, 1)[0]
	client := addPods(t, ctx, h2, 1)[0]
	far := addPods(t, ctx, h3, 1)[0]
	serveEcho(t, server.Namespace)
	conn, err := client.DialEcho(ctx, netip.AddrPortFrom(server.IP, echoPort))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, p := range []*lab.Pod{server, far} {
		if _, err := p.Ping(ctx, client.IP); err != nil {
			t.Fatalf("before the restart, %s -> h2's pod: %v", p.Host.Name, err)
		}
	}

	// The data path keeps only what it has seen answer: a host probed
	// for less than a probe interval is not up yet.
	if err := waitDataPathUp(ctx, []*lab.Host{h1, h3}, h2.Name); err != nil {
		t.Fatal(err)
	}
	kept, err := readRoutes(h2)
	if err != nil {
		t.Fatal(err)
	}
	stopWatch := watchRoutesKept(t, h2, kept)
	// The peers' route to h2's block.
	peerWatches := map[string]func() []string{}
	for _, h := range []*lab.Host{h1, h3} {
		peerWatches[h.Name] = watchRoutesKept(t, h, hostRoutes{peers: map[netip.Prefix]netip.Addr{b2: h2.IP}})
	}
	var pings []*lab.PingStream
	for _, p := range []*lab.Pod{server, far} {
		ps, err := p.StartPings(client.IP, restartPingInterval)
		if err != nil {
			t.Fatal(err)
		}
		pings = append(pings, ps)
	}
	s := startStream(conn)

	stopping := time.Now()
	if err := h2.StopAgent(ctx); err != nil {
		t.Fatal(err)
	}
	stopped := time.Since(stopping)
	// While h2's agent is down its peers see it left and keep its route.
	for _, h := range []*lab.Host{h1, h3} {
		_, err := h.WaitStatus(ctx, "h2 left, its route kept by the data path", func(s lab.Status) bool {
			m, ok := s.Member(h2.Name)
			return ok && m.State == "left" && m.Route == "programmed" && m.RouteReason == "left; kept by data path" && m.Block == b2
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Down for longer than the probes' misses take (3 s), as a restart
	// that pulls an image is: the route stays all the same.
	if err := poll.Sleep(ctx, restartDowntime); err != nil {
		t.Fatal(err)
	}
	if err := h2.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	after, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	if after[h2.Name].Block != b2 {
		t.Errorf("h2 restarted with block %s, had %s", after[h2.Name].Block, b2)
	}
	meshBack := time.Since(restarted)
	// The stream must carry on past the restart, whatever it stalled on.
	err = poll.Until(timeout(t, time.Minute), "the stream to carry on after the restart", 100*time.Millisecond, func() error {
		if n := s.countSince(restarted.Add(meshBack)); n < 10 {
			return fmt.Errorf("%d round trips since the mesh was back", n)
		}
		return nil
	})
	total, maxGap, streamErr := s.stop()
	if streamErr != nil {
		t.Errorf("stream broke: %v", streamErr)
	}
	if err != nil {
		t.Error(err)
	}
	var lost []string
	for i, ps := range pings {
		r := ps.Stop(time.Second)
		from := []string{"h1", "h3"}[i]
		lost = append(lost, fmt.Sprintf("%s: %d of %d", from, len(r.Lost), r.Sent))
		if len(r.Lost) > restartLossBound {
			t.Errorf("pings from %s's pod to h2's pod across h2's agent restart: %d of %d lost (at most %d allowed), at %v",
				from, len(r.Lost), r.Sent, restartLossBound, r.Lost)
		}
	}
	for _, f := range stopWatch() {
		t.Errorf("h2 lost a route while its agent restarted: %s", f)
	}
	for name, stop := range peerWatches {
		for _, f := range stop() {
			t.Errorf("%s withdrew h2's route while h2's agent restarted with its host up: %s", name, f)
		}
	}
	t.Logf("restart: agent left and exited %v after SIGTERM, down %v; mesh whole again %v after the new agent started; stream of %d round trips survived, longest stall %v; %d watched routes never left h2's kernel, h2's block never left h1's and h3's; pings to h2's pod every %v lost %v",
		stopped.Round(time.Millisecond), restartDowntime, meshBack.Round(time.Millisecond), total, maxGap.Round(time.Millisecond),
		len(kept.peers)+len(kept.blackholes)+len(kept.pods), restartPingInterval, lost)
}

// waitDataPathUp waits until every observer's status shows each of members
// with its host answering on the data path.
func waitDataPathUp(ctx context.Context, observers []*lab.Host, members ...string) error {
	for _, h := range observers {
		_, err := h.WaitStatus(ctx, fmt.Sprintf("data path up to %v", members), func(s lab.Status) bool {
			for _, name := range members {
				if m, ok := s.Member(name); !ok || m.DataPath != "up" {
					return false
				}
			}
			return true
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// restartPingInterval is how often pods on other hosts ping the restarted
// host's pod; restartLossBound is how many of those pings may go missing.
// The route never leaves any kernel, so none should; two leave room for a
// loaded machine.
const (
	restartPingInterval = 50 * time.Millisecond
	restartLossBound    = 2
	restartDowntime     = 5 * time.Second
)

// stream sends numbered lines over an echo connection until stopped.
type stream struct {
	conn   *lab.EchoConn
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	times  []time.Time // when each round trip completed
	maxGap time.Duration
	err    error
}

func startStream(conn *lab.EchoConn) *stream {
	ctx, cancel := context.WithCancel(context.Background())
	s := &stream{conn: conn, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		last := time.Now()
		for i := 0; ctx.Err() == nil; i++ {
			// A stall lasts until TCP retransmits after the routes are
			// back; a minute means the connection is gone.
			conn.SetDeadline(time.Now().Add(time.Minute))
			if err := conn.RoundTrip(fmt.Sprintf("line %d", i)); err != nil {
				s.mu.Lock()
				s.err = err
				s.mu.Unlock()
				return
			}
			now := time.Now()
			s.mu.Lock()
			s.times = append(s.times, now)
			s.maxGap = max(s.maxGap, now.Sub(last))
			s.mu.Unlock()
			last = now
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return s
}

func (s *stream) countSince(t time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, _ := slices.BinarySearchFunc(s.times, t, func(a, b time.Time) int { return a.Compare(b) })
	return len(s.times) - i
}

func (s *stream) stop() (roundTrips int, maxGap time.Duration, err error) {
	s.cancel()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.times), s.maxGap, s.err
}

// watchRoutesKept polls h's routes until the returned function is called,
// and reports every route of kept that was ever missing.
func watchRoutesKept(t *testing.T, h *lab.Host, kept hostRoutes) (stop func() []string) {
	done := make(chan struct{})
	var missing []string
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		seen := map[string]bool{}
		note := func(what string) {
			if !seen[what] {
				seen[what] = true
				missing = append(missing, fmt.Sprintf("%s (at %s)", what, time.Now().Format("15:04:05.000")))
			}
		}
		for {
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
			r, err := readRoutes(h)
			if err != nil {
				t.Errorf("watch routes: %v", err)
				return
			}
			for block, via := range kept.peers {
				if r.peers[block] != via {
					note(fmt.Sprintf("%s via %s", block, via))
				}
			}
			for _, b := range kept.blackholes {
				if !slices.Contains(r.blackholes, b) {
					note("blackhole " + b.String())
				}
			}
			for pod, idx := range kept.pods {
				if r.pods[pod] != idx {
					note(pod.String() + " scope link")
				}
			}
		}
	}()
	return func() []string {
		close(done)
		wg.Wait()
		return missing
	}
}
