package e2e

import (
	"errors"
	"io/fs"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sync/errgroup"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
)

const (
	churnPods        = 200
	churnConcurrency = 16
)

// TestChurn: 200 pods added and deleted on one host, 16 at a time, as a
// container runtime under load would. Every pod gets its own address from
// the host's block, and afterwards no address, veth, route or neighbour
// entry is left behind.
func TestChurn(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 1})
	ctx := timeout(t, 4*time.Minute)
	h := l.Host(1)
	s, err := h.WaitReady(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before, err := snapshot(h)
	if err != nil {
		t.Fatal(err)
	}

	pods := make([]*lab.Pod, churnPods)
	start := time.Now()
	err = parallel(churnPods, churnConcurrency, func(i int) (err error) {
		pods[i], err = h.AddPod(ctx)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	added := time.Since(start)

	seen := make(map[netip.Addr]string)
	for _, p := range pods {
		if other, dup := seen[p.IP]; dup {
			t.Errorf("%s and %s both got %s", other, p.Name, p.IP)
		}
		seen[p.IP] = p.Name
		if !s.Block.Contains(p.IP) {
			t.Errorf("%s got %s outside the block %s", p.Name, p.IP, s.Block)
		}
	}
	peak, err := snapshot(h)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(peak.links) - len(before.links); got != churnPods {
		t.Errorf("%d host veths with %d pods", got, churnPods)
	}
	if got := len(peak.addresses) - len(before.addresses); got != churnPods {
		t.Errorf("%d addresses allocated for %d pods", got, churnPods)
	}

	start = time.Now()
	err = parallel(churnPods, churnConcurrency, func(i int) error { return pods[i].Delete(ctx) })
	if err != nil {
		t.Fatal(err)
	}
	deleted := time.Since(start)

	after, err := snapshot(h)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what          string
		before, after []string
	}{
		{"IPAM address", before.addresses, after.addresses},
		{"link", before.links, after.links},
		{"route", before.routes, after.routes},
		{"neighbour", before.neighbours, after.neighbours},
	} {
		for _, x := range c.after {
			if !slices.Contains(c.before, x) {
				t.Errorf("leaked %s: %s", c.what, x)
			}
		}
		for _, x := range c.before {
			if !slices.Contains(c.after, x) {
				t.Errorf("lost %s: %s", c.what, x)
			}
		}
	}
	t.Logf("churn: %d pods added in %v (%.0f/s) and deleted in %v (%.0f/s), %d at a time; %d addresses, %d veths at peak, none left after",
		churnPods, added.Round(time.Millisecond), churnPods/added.Seconds(), deleted.Round(time.Millisecond), churnPods/deleted.Seconds(),
		churnConcurrency, len(peak.addresses)-len(before.addresses), len(peak.links)-len(before.links))
}

// hostState is what pods leave on a host, each entry described as a string.
type hostState struct {
	addresses  []string // IPAM store entries
	links      []string
	routes     []string
	neighbours []string // entries on pod-facing links; em1's ARP cache comes and goes on its own
}

func snapshot(h *lab.Host) (hostState, error) {
	var s hostState
	store := filepath.Join(h.StateDir(), "ipam")
	err := filepath.WalkDir(store, func(path string, d fs.DirEntry, err error) error {
		if path == store && errors.Is(err, fs.ErrNotExist) {
			return fs.SkipAll // no pod yet
		}
		if err != nil {
			return err
		}
		// The store names each allocation file after its address.
		if _, perr := netip.ParseAddr(d.Name()); perr == nil && !d.IsDir() {
			s.addresses = append(s.addresses, d.Name())
		}
		return nil
	})
	if err != nil {
		return s, err
	}
	links, err := h.Links()
	if err != nil {
		return s, err
	}
	em1 := -1
	for _, l := range links {
		s.links = append(s.links, l.Attrs().Name)
		if l.Attrs().Name == "em1" {
			em1 = l.Attrs().Index
		}
	}
	routes, err := h.Routes()
	if err != nil {
		return s, err
	}
	for _, r := range routes {
		s.routes = append(s.routes, r.String())
	}
	neighs, err := h.Neighbours()
	if err != nil {
		return s, err
	}
	for _, n := range neighs {
		if n.LinkIndex != em1 && n.State&netlink.NUD_NOARP == 0 {
			s.neighbours = append(s.neighbours, n.String())
		}
	}
	return s, nil
}

// parallel runs f(0..n-1) with at most width calls at once, as a runtime
// starting pods in parallel does, and returns the first error.
func parallel(n, width int, f func(i int) error) error {
	var g errgroup.Group
	g.SetLimit(width)
	for i := range n {
		g.Go(func() error { return f(i) })
	}
	return g.Wait()
}
