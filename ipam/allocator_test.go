package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func newAllocator(t *testing.T, cfg Config) *Allocator {
	t.Helper()
	a, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func testConfig(t *testing.T) Config {
	return Config{Network: "grapevine", RunDir: t.TempDir(), DataDir: t.TempDir()}
}

func mustAllocate(t *testing.T, a *Allocator, block, id string) netip.Addr {
	t.Helper()
	addr, _, err := a.Allocate(netip.MustParsePrefix(block), id, "eth0")
	if err != nil {
		t.Fatalf("allocate for %s in %s: %v", id, block, err)
	}
	return addr
}

func TestUsableRange(t *testing.T) {
	for _, tc := range []struct {
		block, first, last string
	}{
		{"10.244.1.0/24", "10.244.1.1", "10.244.1.254"},
		{"10.244.2.0/23", "10.244.2.1", "10.244.3.254"},
		{"172.20.250.0/26", "172.20.250.1", "172.20.250.62"},
		{"10.0.0.4/30", "10.0.0.5", "10.0.0.6"},
		// IPv6 has no broadcast: only the subnet-router anycast address
		// (the first) is skipped.
		{"fd00:10:244:1::/64", "fd00:10:244:1::1", "fd00:10:244:1:ffff:ffff:ffff:ffff"},
		{"fd00:10:244::100/120", "fd00:10:244::101", "fd00:10:244::1ff"},
	} {
		first, last, err := UsableRange(netip.MustParsePrefix(tc.block))
		if err != nil || first.String() != tc.first || last.String() != tc.last {
			t.Errorf("UsableRange(%s) = %s, %s, %v; want %s, %s", tc.block, first, last, err, tc.first, tc.last)
		}
	}
	for _, bad := range []string{"10.0.0.0/31", "10.0.0.1/32", "fd00::/121", "fd00::1/128", "::ffff:10.0.0.0/120"} {
		var cniErr *types.Error
		if _, _, err := UsableRange(netip.MustParsePrefix(bad)); !errors.As(err, &cniErr) || cniErr.Code != types.ErrInvalidNetworkConfig {
			t.Errorf("UsableRange(%s) = %v, want CNI error 7", bad, err)
		}
	}
}

// A dual-stack attachment holds one address per block; each family keeps
// its own round-robin, so IPv6 allocations never restart IPv4's at the
// block's first address (and the other way round); Release frees both.
func TestAllocateBothFamilies(t *testing.T) {
	a := newAllocator(t, testConfig(t))
	v4, v6 := "10.244.1.0/24", "fd00:10:244:1::/64"
	if got := mustAllocate(t, a, v4, "a"); got.String() != "10.244.1.1" {
		t.Errorf("a's IPv4 address %s, want 10.244.1.1", got)
	}
	if got := mustAllocate(t, a, v6, "a"); got.String() != "fd00:10:244:1::1" {
		t.Errorf("a's IPv6 address %s, want fd00:10:244:1::1", got)
	}
	if got := mustAllocate(t, a, v6, "a"); got.String() != "fd00:10:244:1::1" {
		t.Errorf("repeated IPv6 allocation for a gave %s, want the one it holds", got)
	}
	if err := a.Release("a", "eth0"); err != nil {
		t.Fatal(err)
	}
	if held, err := a.Held("a", "eth0"); err != nil || len(held) != 0 {
		t.Errorf("after Release a holds %v (%v)", held, err)
	}
	if got := mustAllocate(t, a, v4, "b"); got.String() != "10.244.1.2" {
		t.Errorf("b's IPv4 address %s, want 10.244.1.2 (IPv4's round-robin went on)", got)
	}
	if got := mustAllocate(t, a, v6, "b"); got.String() != "fd00:10:244:1::2" {
		t.Errorf("b's IPv6 address %s, want fd00:10:244:1::2 (IPv6's round-robin went on)", got)
	}
	held, err := a.Held("b", "eth0")
	if err != nil || len(held) != 2 {
		t.Errorf("b holds %v (%v), want one address per family", held, err)
	}
	if err := Exhausted(netip.MustParsePrefix(v6), held); err != nil {
		t.Errorf("Exhausted(%s) = %v", v6, err)
	}
	if err := Exhausted(netip.MustParsePrefix(v4), held); err != nil {
		t.Errorf("Exhausted(%s) = %v", v4, err)
	}
}

func TestAllocateSkipsNetworkAndLastAddressAndReusesLate(t *testing.T) {
	a := newAllocator(t, testConfig(t))
	block := "10.244.1.0/30"
	if got := mustAllocate(t, a, block, "a"); got.String() != "10.244.1.1" {
		t.Errorf("first address %s, want 10.244.1.1", got)
	}
	if got := mustAllocate(t, a, block, "b"); got.String() != "10.244.1.2" {
		t.Errorf("second address %s, want 10.244.1.2", got)
	}
	_, _, err := a.Allocate(netip.MustParsePrefix(block), "c", "eth0")
	var cniErr *types.Error
	if !errors.As(err, &cniErr) || cniErr.Code != ErrCodeExhausted {
		t.Fatalf("third allocation in a /30 = %v, want CNI error %d", err, ErrCodeExhausted)
	}
	if err := a.Release("a", "eth0"); err != nil {
		t.Fatal(err)
	}
	if got := mustAllocate(t, a, block, "c"); got.String() != "10.244.1.1" {
		t.Errorf("after freeing .1, got %s", got)
	}
}

func TestAllocateRoundRobinsBeforeReusing(t *testing.T) {
	a := newAllocator(t, testConfig(t))
	first := mustAllocate(t, a, "10.244.1.0/24", "a")
	if err := a.Release("a", "eth0"); err != nil {
		t.Fatal(err)
	}
	// A freed address is not handed out again at once: a late packet for
	// the old pod must not reach a new one.
	if next := mustAllocate(t, a, "10.244.1.0/24", "b"); next == first {
		t.Errorf("freed %s was reused at once", first)
	}
}

func TestSameAttachmentGetsSameAddress(t *testing.T) {
	cfg := testConfig(t)
	a := newAllocator(t, cfg)
	first := mustAllocate(t, a, "10.244.1.0/24", "ctr")
	again := mustAllocate(t, newAllocator(t, cfg), "10.244.1.0/24", "ctr")
	if again != first {
		t.Errorf("retried allocation got %s, first %s", again, first)
	}
	held, err := a.Held("ctr", "eth0")
	if err != nil || !slices.Equal(held, []netip.Addr{first}) {
		t.Errorf("Held = %v, %v; want [%s]", held, err, first)
	}
	other, _, err := a.Allocate(netip.MustParsePrefix("10.244.1.0/24"), "ctr", "net1")
	if err != nil || other == first {
		t.Errorf("second interface of the same container got %s, %v; want a different address", other, err)
	}
}

// Kubelet starts many pods at once; each ADD is its own process with its
// own lock file descriptor, as here.
func TestConcurrentAllocationsAreDistinctAndKept(t *testing.T) {
	cfg := testConfig(t)
	const pods = 64
	addrs := make([]netip.Addr, pods)
	errs := make([]error, pods)
	var wg sync.WaitGroup
	for i := range pods {
		wg.Go(func() {
			a, err := Open(cfg)
			if err != nil {
				errs[i] = err
				return
			}
			defer a.Close()
			addrs[i], _, errs[i] = a.Allocate(netip.MustParsePrefix("10.244.1.0/24"), fmt.Sprintf("ctr-%d", i), "eth0")
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	seen := make(map[netip.Addr]int)
	for i, addr := range addrs {
		if j, dup := seen[addr]; dup {
			t.Errorf("%s handed to both ctr-%d and ctr-%d", addr, j, i)
		}
		seen[addr] = i
	}
	a := newAllocator(t, cfg)
	for i, addr := range addrs {
		held, err := a.Held(fmt.Sprintf("ctr-%d", i), "eth0")
		if err != nil || !slices.Equal(held, []netip.Addr{addr}) {
			t.Errorf("ctr-%d holds %v (%v), was given %s", i, held, err, addr)
		}
	}
}

func TestBlockChange(t *testing.T) {
	a := newAllocator(t, testConfig(t))
	old := mustAllocate(t, a, "10.244.1.0/24", "old-pod")
	// The node lost its block and claimed another: a retried ADD of an old
	// attachment and new pods get addresses from the new block.
	if got := mustAllocate(t, a, "10.244.9.0/24", "new-pod"); !netip.MustParsePrefix("10.244.9.0/24").Contains(got) {
		t.Errorf("new pod got %s, want one from 10.244.9.0/24", got)
	}
	if got := mustAllocate(t, a, "10.244.9.0/24", "old-pod"); !netip.MustParsePrefix("10.244.9.0/24").Contains(got) {
		t.Errorf("retried ADD after the change got %s, want one from 10.244.9.0/24", got)
	}
	if err := a.Release("old-pod", "eth0"); err != nil {
		t.Fatal(err)
	}
	if held, _ := a.Held("old-pod", "eth0"); len(held) != 0 {
		t.Errorf("DEL left %v reserved (old block address was %s)", held, old)
	}
}

func TestReleaseOfUnknownAttachmentSucceeds(t *testing.T) {
	if err := newAllocator(t, testConfig(t)).Release("never-seen", "eth0"); err != nil {
		t.Errorf("Release of nothing: %v", err)
	}
}

func TestGCFreesUnlistedAttachments(t *testing.T) {
	cfg := testConfig(t)
	a := newAllocator(t, cfg)
	keep := mustAllocate(t, a, "10.244.1.0/24", "keep")
	mustAllocate(t, a, "10.244.1.0/24", "leak")
	if err := a.GC([]types.GCAttachment{{ContainerID: "keep", IfName: "eth0"}}); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(cfg.StoreDir())
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, e := range entries {
		files = append(files, e.Name())
	}
	if !slices.Contains(files, keep.String()) || len(files) != 3 { // keep, lock, last_reserved_ip.0
		t.Errorf("store after GC holds %v, want %s plus the lock and marker", files, keep)
	}
	if _, err := os.Stat(filepath.Join(cfg.StoreDir(), "lock")); err != nil {
		t.Errorf("GC removed the lock file: %v", err)
	}
}
