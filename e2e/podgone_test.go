package e2e

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// TestPodGoneWithoutDelFreed: a pod whose namespace the runtime removed
// without a CNI DEL (its veth goes with it), on a runtime that never sends
// GC, loses its address reservation to the agent once the reservation is
// over a minute old; a running pod keeps its own. The reservations are aged
// by hand rather than waited for.
func TestPodGoneWithoutDelFreed(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 1})
	ctx := timeout(t, 2*time.Minute)
	h := l.Host(1)
	if _, err := h.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	pods := addPods(t, ctx, h, 2)
	gone, running := pods[0], pods[1]
	store := filepath.Join(h.StateDir(), "ipam", "grapevine")
	reservation := func(p *lab.Pod) string { return filepath.Join(store, p.IP.String()) }
	old := time.Now().Add(-2 * time.Minute)
	for _, p := range pods {
		if err := os.Chtimes(reservation(p), old, old); err != nil {
			t.Fatal(err)
		}
	}

	if out, err := lab.Run(ctx, "ip", "netns", "delete", gone.Namespace.Name); err != nil {
		t.Fatalf("delete %s's namespace: %v\n%s", gone.Name, err, out)
	}
	err := poll.Until(ctx, "the gone pod's reservation freed", 100*time.Millisecond, func() error {
		if _, err := os.Stat(reservation(gone)); !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s is still reserved (%v)", gone.IP, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(reservation(running)); err != nil {
		t.Errorf("the running pod's reservation: %v", err)
	}
	if err := running.Check(ctx); err != nil {
		t.Errorf("the running pod after the collection: %v", err)
	}
}
