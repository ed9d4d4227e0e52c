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
)

// TestRestart: restart an agent (SIGTERM, then start) while a TCP stream runs
// between pods on two hosts. The stream survives, and the restarted host's
// routes stay in the kernel the whole time.
func TestRestart(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 3})
	ctx := timeout(t, 3*time.Minute)
	h1, h2 := l.Host(1), l.Host(2)
	before, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	server := addPods(t, ctx, h1, 1)[0]
	client := addPods(t, ctx, h2, 1)[0]
	serveEcho(t, server.Namespace)
	conn, err := client.DialEcho(ctx, netip.AddrPortFrom(server.IP, echoPort))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	kept, err := readRoutes(h2)
	if err != nil {
		t.Fatal(err)
	}
	stopWatch := watchRoutesKept(t, h2, kept)
	s := startStream(conn)

	stopping := time.Now()
	if err := h2.StopAgent(ctx); err != nil {
		t.Fatal(err)
	}
	stopped := time.Since(stopping)
	if err := h2.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	after, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	if after[h2.Name].Block != before[h2.Name].Block {
		t.Errorf("h2 restarted with block %s, had %s", after[h2.Name].Block, before[h2.Name].Block)
	}
	meshBack := time.Since(restarted)
	// The stream must carry on past the restart, whatever it stalled on.
	err = waitUntil(timeout(t, time.Minute), "the stream to carry on after the restart", func() error {
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
	flushed := stopWatch()
	for _, f := range flushed {
		t.Errorf("h2 lost a route while its agent restarted: %s", f)
	}
	t.Logf("restart: agent left and exited %v after SIGTERM; mesh whole again %v after the new agent started; stream of %d round trips survived, longest stall %v; %d watched routes never left h2's kernel",
		stopped.Round(time.Millisecond), meshBack.Round(time.Millisecond), total, maxGap.Round(time.Millisecond), len(kept.peers)+len(kept.blackholes)+len(kept.pods))
}

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
