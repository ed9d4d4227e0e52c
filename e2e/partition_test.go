package e2e

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// partitionDetectBound is how long the minority may take to mark every
// member of the majority dead: one suspicion timeout per member, probed in
// turn, generous for a loaded CI machine.
const partitionDetectBound = 90 * time.Second

// minorityWatch is how long a new host in the minority must stay without a
// block: several gossip rounds and claim attempts.
const minorityWatch = 15 * time.Second

// TestPartition: split 5 hosts 2|3 at the bridge. The minority claims no
// new block: a new host joining there stays not ready. After healing, no
// block is held twice and the route mesh converges over all 6 hosts.
func TestPartition(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 5})
	ctx := timeout(t, 4*time.Minute)
	before, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	majority := l.Hosts()[:3]
	minority := l.Hosts()[3:]
	h4 := minority[0]

	if err := l.Partition(ctx, minority...); err != nil {
		t.Fatal(err)
	}
	split := time.Now()
	// Wait until the minority has noticed: h4 no longer counts the
	// majority as alive.
	_, err = h4.WaitStatus(timeout(t, partitionDetectBound), "h4 to lose the majority", func(s lab.Status) bool {
		for _, h := range majority {
			if m, ok := s.Member(h.Name); ok && (m.State == "alive" || m.State == "suspect") {
				return false
			}
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("partition: h4 saw the majority gone after %v", time.Since(split).Round(time.Millisecond))

	newcomer, err := l.AddHost(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Partition(ctx, newcomer); err != nil {
		t.Fatal(err)
	}
	newcomer.Join = h4.IP
	if err := newcomer.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	// It must get into the minority's cluster, or staying without a block
	// would prove nothing.
	_, err = newcomer.WaitStatus(timeout(t, time.Minute), "the newcomer to join the minority", func(s lab.Status) bool {
		for _, h := range minority {
			if m, ok := s.Member(h.Name); !ok || m.State != "alive" {
				return false
			}
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	var last lab.Status
	err = poll.Hold(ctx, "newcomer "+newcomer.Name+" in the minority waits for quorum", minorityWatch, 250*time.Millisecond, func() error {
		if s, err := newcomer.Status(ctx); err == nil {
			if last = s; s.Ready || s.Block.IsValid() {
				return fmt.Errorf("it got ready=%v block %s: %+v", s.Ready, s.Block, s)
			}
		}
		if code, body, err := newcomer.Get(ctx, "/readyz"); err != nil || code != http.StatusServiceUnavailable {
			return fmt.Errorf("its /readyz: %d %q (%v), want 503", code, body, err)
		}
		if code, body, err := newcomer.Get(ctx, "/healthz"); err != nil || code != http.StatusOK {
			return fmt.Errorf("its /healthz: %d %q (%v), want 200: waiting for quorum is healthy", code, body, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if last.Node == "" {
		t.Fatalf("newcomer never answered status")
	}
	t.Logf("partition: newcomer %s in the minority stayed without a block for %v (reason %q)", newcomer.Name, minorityWatch, last.Reason)
	for _, h := range majority {
		s, err := h.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !s.Ready || s.Block != before[h.Name].Block {
			t.Errorf("majority host %s during the split: ready=%v (%s), block %s (had %s)", h.Name, s.Ready, s.Reason, s.Block, before[h.Name].Block)
		}
	}
	for _, h := range minority {
		s, err := h.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if s.Block != before[h.Name].Block {
			t.Errorf("minority host %s holds %s, held %s before the split", h.Name, s.Block, before[h.Name].Block)
		}
	}

	if err := l.Heal(ctx); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	after, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	if err := uniqueBlocks(after); err != nil {
		t.Fatal(err)
	}
	if code, body, err := newcomer.Get(ctx, "/readyz"); err != nil || code != http.StatusOK {
		t.Errorf("newcomer's /readyz after healing: %d %q (%v), want 200", code, body, err)
	}
	for name, b := range before {
		if after[name].Block != b.Block {
			t.Errorf("%s holds %s after healing, %s before the split", name, after[name].Block, b.Block)
		}
	}
	err = poll.Until(ctx, "every host's kernel routes", 100*time.Millisecond, func() error {
		return expectMeshRoutes(after, l.Hosts())
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("partition: healed mesh of %d hosts converged in %v, newcomer got %s, no block held twice",
		len(l.Hosts()), time.Since(healed).Round(time.Millisecond), after[newcomer.Name].Block)
}
