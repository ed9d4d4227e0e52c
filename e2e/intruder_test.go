package e2e

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// intruderWatch is how long the intruder gets to try: many gossip rounds.
const intruderWatch = 15 * time.Second

// TestIntruder: a host whose agent has the wrong gossip key, pointed at the
// cluster, neither joins it nor causes a route on any host.
func TestIntruder(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 3})
	ctx := timeout(t, 2*time.Minute)
	members := l.Hosts()
	before, err := lab.WaitMesh(ctx, members)
	if err != nil {
		t.Fatal(err)
	}
	intruder, err := l.AddHost(ctx)
	if err != nil {
		t.Fatal(err)
	}
	intruder.KeyFile = filepath.Join(intruder.Dir, "wrong.key")
	if err := lab.WriteGossipKey(intruder.KeyFile); err != nil {
		t.Fatal(err)
	}
	if err := intruder.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}

	answered := false
	err = poll.Hold(ctx, "the intruder stays out", intruderWatch, 500*time.Millisecond, func() error {
		for _, h := range members {
			s, err := h.Status(ctx)
			if err != nil {
				return err
			}
			if m, ok := s.Member(intruder.Name); ok {
				return fmt.Errorf("%s lists the intruder as a member: %+v", h.Name, m)
			}
			r, err := readRoutes(h)
			if err != nil {
				return err
			}
			for block, via := range r.peers {
				if via == intruder.IP {
					return fmt.Errorf("%s routes %s via the intruder", h.Name, block)
				}
			}
		}
		if s, err := intruder.Status(ctx); err == nil {
			answered = true
			if len(s.Members) > 0 {
				return fmt.Errorf("the intruder sees members %+v", s.Members)
			}
		}
		r, err := readRoutes(intruder)
		if err != nil {
			return err
		}
		if len(r.peers) > 0 {
			return fmt.Errorf("the intruder routes to %v", r.peers)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !answered {
		t.Fatal("the intruder's agent never answered status: the test proved nothing")
	}
	for _, h := range members {
		if err := expectPeerRoutes(h, before[h.Name].Block, meshRoutes(before, members, h)); err != nil {
			t.Error(err)
		}
	}
	// The intruder's gossip, without this cluster's key, is counted where it
	// lands (issue 19, fault 5), not logged line by line.
	refused := 0.0
	for _, h := range members {
		_, body, err := h.Get(ctx, "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		refused += lab.Counters(body, "grapevine_mesh_rejected_gossip_total")["decrypt"]
	}
	if refused == 0 {
		t.Error("no member counted the intruder's gossip as refused")
	}
	t.Logf("intruder: for %v, no member listed %s and no host routed via %s; the mesh of %d kept its routes and refused %v of its gossip messages", intruderWatch, intruder.Name, intruder.IP, len(members), refused)
}
