package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// ledgerWatch is how long a host that must stay without a block is watched.
const ledgerWatch = 10 * time.Second

// voters waits until every host's agent reports the same n ledger voters
// and a leader. Every host, not one: a promotion the leader has appended
// but not yet sent would leave a partition's majority side with the old
// configuration, one of whose voters is across the cut, and no leader.
func voters(t *testing.T, ctx context.Context, hosts []*lab.Host, n int) []string {
	t.Helper()
	var want []string
	err := poll.Until(ctx, fmt.Sprintf("%d ledger voters known to every host", n), 100*time.Millisecond, func() error {
		want = nil
		for _, h := range hosts {
			s, err := h.Status(ctx)
			if err != nil {
				return err
			}
			got := slices.Sorted(slices.Values(s.Ledger.Voters))
			switch {
			case len(got) != n || s.Ledger.Leader == "":
				return fmt.Errorf("%s: leader %q, voters %v", h.Name, s.Ledger.Leader, got)
			case want != nil && !slices.Equal(got, want):
				return fmt.Errorf("%s knows voters %v, %s knows %v", h.Name, got, hosts[0].Name, want)
			}
			want = got
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return want
}

// stayBlockless checks for ledgerWatch that h's agent holds no block and is
// not ready.
func stayBlockless(t *testing.T, ctx context.Context, h *lab.Host) lab.Status {
	t.Helper()
	// The window starts once the agent answers: a loaded machine may take
	// longer than the window to start it.
	var last lab.Status
	err := poll.Until(ctx, h.Name+" answering status", 250*time.Millisecond, func() error {
		s, err := h.Status(ctx)
		last = s
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	err = poll.Hold(ctx, h.Name+" holds no block", ledgerWatch, 250*time.Millisecond, func() error {
		s, err := h.Status(ctx)
		if err != nil {
			return nil // a status call that fails shows nothing either way
		}
		if last = s; s.Ready || s.Block.IsValid() {
			return fmt.Errorf("%s got ready=%v block %s: %+v", h.Name, s.Ready, s.Block, s)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return last
}

// TestPartitionNewcomersBothSides: split 5 hosts 2|3 so that the ledger's
// quorum is on the side of three, then start two new hosts on each side.
// The newcomers with the quorum get blocks; those without stay without;
// after healing no block is held twice, nobody's block moved, and every
// kernel routes the converged mesh.
func TestPartitionNewcomersBothSides(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 5})
	ctx := timeout(t, 6*time.Minute)
	before, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	vs := voters(t, ctx, l.Hosts(), 3)
	// The minority: one voter and one non-voter.
	var minority, majority []*lab.Host
	for _, h := range l.Hosts() {
		isVoter := slices.Contains(vs, h.Name)
		switch {
		case isVoter && !slices.ContainsFunc(minority, func(m *lab.Host) bool { return slices.Contains(vs, m.Name) }):
			minority = append(minority, h)
		case !isVoter && !slices.ContainsFunc(minority, func(m *lab.Host) bool { return !slices.Contains(vs, m.Name) }):
			minority = append(minority, h)
		default:
			majority = append(majority, h)
		}
	}
	t.Logf("voters %v; minority %s,%s", vs, minority[0].Name, minority[1].Name)
	if err := l.Partition(ctx, minority...); err != nil {
		t.Fatal(err)
	}
	var minorityNew, majorityNew []*lab.Host
	for i := range 4 {
		h, err := l.AddHost(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if i < 2 {
			if err := l.Partition(ctx, h); err != nil {
				t.Fatal(err)
			}
			h.Join = minority[0].IP
			minorityNew = append(minorityNew, h)
		} else {
			h.Join = majority[0].IP
			majorityNew = append(majorityNew, h)
		}
		if err := h.StartAgent(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range majorityNew {
		if _, err := h.WaitStatus(timeout(t, 2*time.Minute), "a block on the quorum's side", func(s lab.Status) bool { return s.Ready }); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range minorityNew {
		s := stayBlockless(t, ctx, h)
		t.Logf("%s on the side without the quorum: %q", h.Name, s.Reason)
	}

	if err := l.Heal(ctx); err != nil {
		t.Fatal(err)
	}
	after := wholeAgain(t, ctx, l.Hosts(), before)
	if err := poll.Until(ctx, "every host's kernel routes", 100*time.Millisecond, func() error { return expectMeshRoutes(after, l.Hosts()) }); err != nil {
		t.Fatal(err)
	}
}

// TestIsolatedBoot: a new host whose --join seed does not answer (its link
// to the LAN is cut) founds nothing and takes nothing: it waits, not ready,
// naming the seed. Once the link is back it joins and gets a free block.
func TestIsolatedBoot(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 3})
	ctx := timeout(t, 3*time.Minute)
	before, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	lonely, err := l.AddHost(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := lonely.CutLink(ctx); err != nil {
		t.Fatal(err)
	}
	if err := lonely.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	seed := l.Host(1).IP.String()
	if _, err := lonely.WaitStatus(ctx, "the reason to name the seed", func(s lab.Status) bool {
		return !s.Ready && strings.Contains(s.Reason, "no answer from seeds "+seed)
	}); err != nil {
		t.Fatal(err)
	}
	s := stayBlockless(t, ctx, lonely)
	if s.Ledger.ClusterID != "" {
		t.Fatalf("the isolated host founded ledger %s", s.Ledger.ClusterID)
	}
	if err := lonely.RestoreLink(ctx); err != nil {
		t.Fatal(err)
	}
	wholeAgain(t, ctx, l.Hosts(), before)
}

// TestDuplicateName: a second agent started under a live node's name (its
// own state, so another node ID) is refused by the ledger: it holds no
// block, routes nothing, the live node keeps its block and its routes on
// every host, and every host shows the name conflict with both addresses.
func TestDuplicateName(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 3})
	ctx := timeout(t, 3*time.Minute)
	hosts := l.Hosts()
	before, err := lab.WaitMesh(ctx, hosts)
	if err != nil {
		t.Fatal(err)
	}
	h2 := l.Host(2)
	dup, err := l.AddHost(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dup.ExtraArgs = []string{"--node-name", h2.Name}
	if err := dup.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	s := stayBlockless(t, ctx, dup)
	for _, m := range s.Members {
		if m.Block.IsValid() {
			t.Errorf("the duplicate routes %s to %s", m.Block, m.Name)
		}
	}
	t.Logf("duplicate of %s: %q", h2.Name, s.Reason)
	now, err := lab.WaitMesh(ctx, hosts)
	if err != nil {
		t.Fatal(err)
	}
	for name, st := range before {
		if now[name].Block != st.Block {
			t.Errorf("%s holds %s, held %s before the duplicate", name, now[name].Block, st.Block)
		}
	}
	for _, h := range []*lab.Host{l.Host(1), l.Host(3)} {
		m, _ := now[h.Name].MemberAt(h2)
		if m.Block != before[h2.Name].Block {
			t.Errorf("%s routes %s's %s, want %s", h.Name, h2.Name, m.Block, before[h2.Name].Block)
		}
		// Gossip keeps the two apart (it knows hosts by node ID) and every
		// host says so, naming both addresses, the ledger's holder first.
		c := now[h.Name].NameConflicts
		if len(c) != 1 || c[0].Name != h2.Name || len(c[0].Nodes) != 2 ||
			c[0].Nodes[0].HostIP != h2.IP || !c[0].Nodes[0].Holder || c[0].Nodes[1].HostIP != dup.IP || c[0].Nodes[1].Holder {
			t.Errorf("%s shows name conflicts %+v, want %s held at %s and advertised at %s", h.Name, c, h2.Name, h2.IP, dup.IP)
		}
	}
	if err := expectMeshRoutes(now, hosts); err != nil {
		t.Fatal(err)
	}
	log := dup.LogTail(200)
	if !strings.Contains(log, "identity") && !strings.Contains(log, "node name") {
		t.Errorf("the duplicate's log does not say why it is refused:\n%s", dup.LogTail(30))
	}
}

// wholeAgain waits until every host is ready with a full mesh, fails the
// test if a block is held twice or a host in before holds another block
// than it did, and returns the hosts' statuses.
func wholeAgain(t *testing.T, ctx context.Context, hosts []*lab.Host, before map[string]lab.Status) map[string]lab.Status {
	t.Helper()
	after, err := lab.WaitMesh(ctx, hosts)
	if err != nil {
		t.Fatal(err)
	}
	if err := uniqueBlocks(after); err != nil {
		t.Fatal(err)
	}
	for name, s := range before {
		if after[name].Block != s.Block {
			t.Errorf("%s holds %s, held %s before", name, after[name].Block, s.Block)
		}
	}
	return after
}
