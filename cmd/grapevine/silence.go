package main

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/ledger"
	"github.com/grapevine-net/grapevine/node/probe"
)

// silenceChecks asks gossip's word on the peers whose host has stopped
// answering on the data path while memberlist still counts them in: a
// direct gossip ping to the peer's agent, up to silenceAttempts times. A
// peer whose host and agent are both silent is withdrawn (keptRoutes)
// without waiting for memberlist to confirm its suspicion, which takes
// seconds longer when several hosts die at once and few are left to
// confirm. A peer found silent is asked again every silenceRecheck while
// its host stays down, and is no longer silent once its agent answers or
// its host answers again.
type silenceChecks struct {
	ping    func(ledger.NodeID) error
	changed chan struct{}
	checks  sync.WaitGroup

	mu       sync.Mutex
	inFlight map[string]bool
	silent   map[string]silence // by memberKey
}

// silence is one peer found silent: its host IP then, and when.
type silence struct {
	host netip.Addr
	at   time.Time
}

const (
	// silenceAttempts is how many direct pings must go unanswered (each
	// waits memberlist's 500 ms probe timeout): a link that loses 35 % of
	// round trips fails four in a row one time in 70, and only after its
	// data path failed eight in a row. Two were not enough on a loaded
	// 2-core machine with such a link, where a starved prober had also
	// called a healthy host down.
	silenceAttempts = 4
	silenceRecheck  = 10 * time.Second
)

func newSilenceChecks(ping func(ledger.NodeID) error) *silenceChecks {
	return &silenceChecks{ping: ping, changed: make(chan struct{}, 1), inFlight: map[string]bool{}, silent: map[string]silence{}}
}

// Changed is notified when a check finds a peer silent or not.
func (s *silenceChecks) Changed() <-chan struct{} { return s.changed }

// update forgets the peers that no longer qualify, starts the checks
// toCheck asks for, and returns the peers silent now.
func (s *silenceChecks) update(ctx context.Context, v mesh.View, paths map[netip.Addr]probe.Verdict, now time.Time) map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for key, si := range s.silent {
		if !stillSilent(v, paths, key, si) {
			delete(s.silent, key)
		}
	}
	for _, m := range toCheck(v, paths, s.silent, s.inFlight, now) {
		key := memberKey(m)
		s.inFlight[key] = true
		s.checks.Go(func() { s.check(ctx, key, m.ID, m.HostIP) })
	}
	out := make(map[string]bool, len(s.silent))
	for key := range s.silent {
		out[key] = true
	}
	return out
}

func (s *silenceChecks) check(ctx context.Context, key string, id ledger.NodeID, host netip.Addr) {
	answered := false
	for range silenceAttempts {
		if ctx.Err() != nil {
			break
		}
		if s.ping(id) == nil {
			answered = true
			break
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.inFlight, key)
	if ctx.Err() != nil {
		return
	}
	_, was := s.silent[key]
	if answered {
		delete(s.silent, key)
	} else {
		s.silent[key] = silence{host: host, at: time.Now()}
	}
	if was == answered { // found silent, or no longer
		select {
		case s.changed <- struct{}{}:
		default:
		}
	}
}

// wait waits for the checks in flight (they end within memberlist's probe
// timeout times silenceAttempts).
func (s *silenceChecks) wait() { s.checks.Wait() }

// toCheck is the peers to ping: live in gossip with a block, whose host
// stopped answering after it had answered, not being checked now, and not
// found silent within silenceRecheck. It is pure.
func toCheck(v mesh.View, paths map[netip.Addr]probe.Verdict, silent map[string]silence, inFlight map[string]bool, now time.Time) []mesh.Member {
	var out []mesh.Member
	for _, m := range v.Members {
		key := memberKey(m)
		if !routable(m) || !stoppedAnswering(paths, m.HostIP) || inFlight[key] {
			continue
		}
		if si, ok := silent[key]; ok && now.Sub(si.at) < silenceRecheck {
			continue
		}
		out = append(out, m)
	}
	return out
}

// stillSilent reports whether a peer found silent still counts as such:
// live in gossip at the same host IP, which still does not answer.
func stillSilent(v mesh.View, paths map[netip.Addr]probe.Verdict, key string, si silence) bool {
	for _, m := range v.Members {
		if memberKey(m) == key {
			return routable(m) && m.HostIP == si.host && stoppedAnswering(paths, si.host)
		}
	}
	return false
}

// stoppedAnswering reports whether the data path calls a host down that
// once answered (a host that never answered, behind a firewall dropping
// ICMP, says nothing).
func stoppedAnswering(paths map[netip.Addr]probe.Verdict, host netip.Addr) bool {
	v, ok := paths[host]
	return ok && !v.Up && !v.LastReply.IsZero()
}
