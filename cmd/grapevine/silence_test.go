package main

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/ledger"
	"github.com/grapevine-net/grapevine/node/probe"
)

func TestToCheck(t *testing.T) {
	ip2, ip3 := netip.MustParseAddr("172.16.254.2"), netip.MustParseAddr("172.16.254.3")
	now := time.Unix(1000, 0)
	stopped := probe.Verdict{Misses: 8, LastReply: time.Unix(990, 0)}
	tests := []struct {
		name     string
		members  []mesh.Member
		paths    map[netip.Addr]probe.Verdict
		silent   map[string]silence
		inFlight map[string]bool
		want     []string
	}{
		{name: "host answering: nothing to ask", members: []mesh.Member{member("h2", "alive", "172.16.254.2", "10.244.2.0/23")},
			paths: map[netip.Addr]probe.Verdict{ip2: {Up: true, LastReply: now}}},
		{name: "host stopped answering, alive or suspect in gossip: ask", members: []mesh.Member{
			member("h2", "alive", "172.16.254.2", "10.244.2.0/23"), member("h3", "suspect", "172.16.254.3", "10.244.4.0/23")},
			paths: map[netip.Addr]probe.Verdict{ip2: stopped, ip3: stopped}, want: []string{"h2", "h3"}},
		{name: "host never answered (ICMP dropped): nothing to ask", members: []mesh.Member{member("h2", "alive", "172.16.254.2", "10.244.2.0/23")},
			paths: map[netip.Addr]probe.Verdict{ip2: {Misses: 8}}},
		{name: "probes off: nothing to ask", members: []mesh.Member{member("h2", "alive", "172.16.254.2", "10.244.2.0/23")}},
		{name: "dead or without a block: memberlist has spoken or there is no route", members: []mesh.Member{
			member("h2", "dead", "172.16.254.2", "10.244.2.0/23"), member("h3", "alive", "172.16.254.3", "")},
			paths: map[netip.Addr]probe.Verdict{ip2: stopped, ip3: stopped}},
		{name: "being asked, or found silent lately: not again", members: []mesh.Member{
			member("h2", "alive", "172.16.254.2", "10.244.2.0/23"), member("h3", "alive", "172.16.254.3", "10.244.4.0/23")},
			paths:    map[netip.Addr]probe.Verdict{ip2: stopped, ip3: stopped},
			inFlight: map[string]bool{key("h2"): true}, silent: map[string]silence{key("h3"): {host: ip3, at: now.Add(-time.Second)}}},
		{name: "found silent long ago, host still down: ask again", members: []mesh.Member{member("h3", "alive", "172.16.254.3", "10.244.4.0/23")},
			paths:  map[netip.Addr]probe.Verdict{ip3: stopped},
			silent: map[string]silence{key("h3"): {host: ip3, at: now.Add(-silenceRecheck)}}, want: []string{"h3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := mesh.View{Self: "h1", Members: tt.members}
			var got []string
			for _, m := range toCheck(v, tt.paths, tt.silent, tt.inFlight, now) {
				got = append(got, m.Name)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("toCheck = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestSilenceChecks: a peer whose host stopped answering is pinged; when
// its agent does not answer either it is silent (and Changed says so),
// when its host answers again it no longer is; an agent that answers
// keeps its peer out of the silent set.
func TestSilenceChecks(t *testing.T) {
	var mu sync.Mutex
	answers := map[ledger.NodeID]bool{testID("h3"): true}
	pings := map[ledger.NodeID]int{}
	s := newSilenceChecks(func(id ledger.NodeID) error {
		mu.Lock()
		defer mu.Unlock()
		pings[id]++
		if answers[id] {
			return nil
		}
		return errors.New("no ack")
	})
	ip2, ip3 := netip.MustParseAddr("172.16.254.2"), netip.MustParseAddr("172.16.254.3")
	stopped := probe.Verdict{Misses: 8, LastReply: time.Unix(990, 0)}
	v := mesh.View{Self: "h1", Members: []mesh.Member{
		member("h2", "alive", "172.16.254.2", "10.244.2.0/23"), member("h3", "alive", "172.16.254.3", "10.244.4.0/23")}}
	down := map[netip.Addr]probe.Verdict{ip2: stopped, ip3: stopped}
	ctx := t.Context()

	if got := s.update(ctx, v, down, time.Now()); len(got) != 0 {
		t.Fatalf("silent before any answer: %v", got)
	}
	<-s.Changed()
	s.wait()
	mu.Lock()
	if pings[testID("h2")] != silenceAttempts || pings[testID("h3")] != 1 {
		t.Errorf("pings %v: want %d to the silent agent, 1 to the answering one", pings, silenceAttempts)
	}
	mu.Unlock()
	got := s.update(ctx, v, down, time.Now())
	if !got[key("h2")] || got[key("h3")] || len(got) != 1 {
		t.Fatalf("silent = %v, want h2 only (h3's agent answers)", got)
	}
	// h2's host answers again: no longer silent, nothing asked.
	up := map[netip.Addr]probe.Verdict{ip2: {Up: true, LastReply: time.Now()}, ip3: stopped}
	s.wait()
	if got := s.update(ctx, v, up, time.Now()); len(got) != 0 {
		t.Fatalf("silent after h2's host answered again: %v", got)
	}
	s.wait()
	ctxDone, cancel := context.WithCancel(ctx)
	cancel()
	s.update(ctxDone, v, down, time.Now().Add(time.Hour)) // checks end with their context
	s.wait()
}
