package ipam

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/grapevine-net/grapevine/node/nodestate"
)

func TestAllocateReportsWhetherItReserved(t *testing.T) {
	a := newAllocator(t, testConfig(t))
	block := netip.MustParsePrefix("10.244.1.0/24")
	first, reserved, err := a.Allocate(block, "ctr", "eth0")
	if err != nil || !reserved {
		t.Fatalf("first Allocate = %s, reserved %v, %v; want a new reservation", first, reserved, err)
	}
	again, reserved, err := a.Allocate(block, "ctr", "eth0")
	if err != nil || reserved || again != first {
		t.Fatalf("repeated Allocate = %s, reserved %v, %v; want %s held already", again, reserved, err, first)
	}
	// The undo of another attachment's ADD cannot free it.
	if err := a.ReleaseAddr(first, "other", "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := a.Release("other", "eth0"); err != nil {
		t.Fatal(err)
	}
	if held, _ := a.Held("ctr", "eth0"); !slices.Equal(held, []netip.Addr{first}) {
		t.Errorf("ctr holds %v after another attachment's release, want %s", held, first)
	}
	if err := a.ReleaseAddr(first, "ctr", "eth0"); err != nil {
		t.Fatal(err)
	}
	if held, _ := a.Held("ctr", "eth0"); len(held) != 0 {
		t.Errorf("ctr holds %v after its own release", held)
	}
}

// writeRaw puts a reservation file as another writer (host-local, or a
// version that wrote in place and was killed) could have left it.
func writeRaw(t *testing.T, cfg Config, addr, contents string, age time.Duration) {
	t.Helper()
	path := filepath.Join(cfg.StoreDir(), addr)
	if err := os.WriteFile(path, []byte(contents), 0o600); err != nil {
		t.Fatal(err)
	}
	when := time.Now().Add(-age)
	if err := os.Chtimes(path, when, when); err != nil {
		t.Fatal(err)
	}
}

func TestCollectStaleFreesGoneAndNamelessReservations(t *testing.T) {
	cfg := testConfig(t)
	a := newAllocator(t, cfg)
	writeRaw(t, cfg, "10.244.1.1", "live\r\neth0", time.Hour)
	writeRaw(t, cfg, "10.244.1.2", "gone\r\neth0", time.Hour)
	writeRaw(t, cfg, "10.244.1.3", "", time.Hour)             // killed mid-write
	writeRaw(t, cfg, "10.244.1.4", "legacy-live", time.Hour)  // host-local before ifnames
	writeRaw(t, cfg, "10.244.1.5", "just-added\r\neth0", 0)   // ADD in progress
	writeRaw(t, cfg, "10.244.1.6", "live\r\neth1", time.Hour) // another interface, gone
	live := func(att types.GCAttachment) bool {
		return att.ContainerID == "live" && att.IfName == "eth0" || att.ContainerID == "legacy-live"
	}
	freed, err := CollectStale(cfg, time.Now().Add(-time.Minute), live)
	if err != nil {
		t.Fatal(err)
	}
	var freedAddrs []string
	for _, r := range freed {
		freedAddrs = append(freedAddrs, r.Addr.String())
	}
	slices.Sort(freedAddrs)
	if want := []string{"10.244.1.2", "10.244.1.3", "10.244.1.6"}; !slices.Equal(freedAddrs, want) {
		t.Errorf("freed %v, want %v", freedAddrs, want)
	}
	all, err := allReservations(a)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, r := range all {
		left = append(left, r.Addr.String())
	}
	slices.Sort(left)
	if want := []string{"10.244.1.1", "10.244.1.4", "10.244.1.5"}; !slices.Equal(left, want) {
		t.Errorf("left %v, want %v", left, want)
	}
}

// TestRepeatedAllocateRenewsReservation: a repeated ADD replaces the
// attachment's host veth, so for a moment the veth is missing while its
// reservation is old; the renewed reservation is spared by CollectStale.
func TestRepeatedAllocateRenewsReservation(t *testing.T) {
	cfg := testConfig(t)
	a := newAllocator(t, cfg)
	writeRaw(t, cfg, "10.244.1.1", "ctr\r\neth0", time.Hour)
	addr, reserved, err := a.Allocate(netip.MustParsePrefix("10.244.1.0/24"), "ctr", "eth0")
	if err != nil || reserved || addr.String() != "10.244.1.1" {
		t.Fatalf("repeated Allocate = %s, reserved %v, %v; want 10.244.1.1 held already", addr, reserved, err)
	}
	noVeth := func(types.GCAttachment) bool { return false }
	freed, err := CollectStale(cfg, time.Now().Add(-time.Minute), noVeth)
	if err != nil || len(freed) != 0 {
		t.Errorf("CollectStale right after a repeated ADD freed %v, %v; want nothing", freed, err)
	}
}

func TestReadReservations(t *testing.T) {
	cfg := testConfig(t)
	dir := cfg.StoreDir()
	if got, err := ReadReservations(cfg); err != nil || got != nil {
		t.Errorf("missing store: %v, %v; want none and no error", got, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("reading created the store (%v)", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"10.244.0.5":         "aaa\r\neth0",
		"10.244.0.6":         "  bbb \r\neth0", // host-local trims the ID it compares
		"10.244.0.7":         "",               // a version that wrote in place, killed
		"10.244.0.9":         "ddd",            // host-local before it recorded interfaces
		"10.244.0.10":        "eee\r\n" + strings.Repeat("x", 2*maxReservationSize),
		"lock":               "",
		"last_reserved_ip.0": "10.244.0.6",
		"last_reserved_ip.1": "fd00:10:244::6",
		tempPrefix + "12345": "fff\r\neth0",
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "10.244.0.11"), 0o700); err != nil {
		t.Fatal(err)
	}
	got, err := ReadReservations(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var desc []string
	for _, r := range got {
		if r.Written.IsZero() {
			t.Errorf("%s: no time written", r.Addr)
		}
		desc = append(desc, fmt.Sprintf("%s=%s/%d", r.Addr, r.ContainerID, len(r.IfName)))
	}
	want := []string{"10.244.0.10=eee/" + fmt.Sprint(maxReservationSize-len("eee\r\n")), "10.244.0.5=aaa/4", "10.244.0.6=bbb/4", "10.244.0.7=/0", "10.244.0.9=ddd/0"}
	if !slices.Equal(desc, want) {
		t.Errorf("reservations = %q, want %q", desc, want)
	}
}

func TestReservationStale(t *testing.T) {
	now := time.Now()
	cutoff := now.Add(-time.Minute)
	live := func(a types.GCAttachment) bool { return a.ContainerID == "live" }
	for _, tt := range []struct {
		name string
		r    Reservation
		want bool
	}{
		{"gone, old", Reservation{ContainerID: "gone", IfName: "eth0", Written: now.Add(-time.Hour)}, true},
		{"gone, written after the cutoff", Reservation{ContainerID: "gone", IfName: "eth0", Written: now}, false},
		{"gone, written at the cutoff", Reservation{ContainerID: "gone", IfName: "eth0", Written: cutoff}, false},
		{"live, old", Reservation{ContainerID: "live", IfName: "eth0", Written: now.Add(-time.Hour)}, false},
		{"nameless, old", Reservation{Written: now.Add(-time.Hour)}, true},
		{"nameless, new", Reservation{Written: now}, false},
	} {
		if got := tt.r.Stale(cutoff, live); got != tt.want {
			t.Errorf("%s: Stale = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestGCFreesNamelessReservations(t *testing.T) {
	cfg := testConfig(t)
	a := newAllocator(t, cfg)
	keep := mustAllocate(t, a, "10.244.1.0/24", "keep")
	writeRaw(t, cfg, "10.244.1.200", "", 0)
	if err := a.GC([]types.GCAttachment{{ContainerID: "keep", IfName: "eth0"}}); err != nil {
		t.Fatal(err)
	}
	all, err := allReservations(a)
	if err != nil || len(all) != 1 || all[0].Addr != keep {
		t.Errorf("after GC: %v, %v; want only %s", all, err, keep)
	}
}

func TestStatusSaysWhyNoAddressCanBeHandedOut(t *testing.T) {
	cfg := testConfig(t)
	lease, err := nodestate.LeaseFromNow(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := nodestate.Write(cfg.RunDir, nodestate.State{Node: "n1", Block: netip.MustParsePrefix("10.244.1.0/30"),
		Pool: netip.MustParsePrefix("10.244.0.0/16"), Lease: lease}); err != nil {
		t.Fatal(err)
	}
	if err := Status(cfg); err != nil {
		t.Errorf("Status with free addresses: %v", err)
	}
	a := newAllocator(t, cfg)
	mustAllocate(t, a, "10.244.1.0/30", "one")
	mustAllocate(t, a, "10.244.1.0/30", "two")
	wantCode(t, "Status with the block full", Status(cfg), types.ErrPluginNotAvailable, "10.244.1.0/30 is exhausted")

	blocked := cfg
	blocked.DataDir = t.TempDir()
	if err := os.WriteFile(blocked.StoreDir(), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "Status with the store's directory a file", Status(blocked), types.ErrPluginNotAvailable, "address store")
}

func TestBinaryGCWithoutValidAttachmentsIsRefused(t *testing.T) {
	e := newIPAMEnv(t)
	if _, err := e.run("ADD", "kept", e.conf("")); err != nil {
		t.Fatal(err)
	}
	_, err := e.run("GC", "", e.conf(""))
	wantCode(t, "GC without valid attachments", err, types.ErrInvalidNetworkConfig, "cni.dev/valid-attachments")
	a := newAllocator(t, Config{Network: "grapevine", DataDir: e.data})
	if held, _ := a.Held("kept", "eth0"); len(held) != 1 {
		t.Errorf("refused GC freed kept's address: %v", held)
	}
	if _, err := e.run("GC", "", e.conf(`, "cni.dev/valid-attachments": []`)); err != nil {
		t.Fatalf("GC with an empty list: %v", err)
	}
	if held, _ := a.Held("kept", "eth0"); len(held) != 0 {
		t.Errorf("GC with an empty list kept %v", held)
	}
}

// The IPAM kill loop: grapevine-ipam ADDs killed with SIGKILL at random
// moments never leave a reservation that names no attachment, so DEL frees
// everything a killed ADD reserved.
func TestKilledAddsLeaveOnlyWholeReservations(t *testing.T) {
	e := newIPAMEnv(t)
	e.writeNodeState("10.244.0.0/22")
	conf := e.conf("")
	plugin := func(command, containerID string) *exec.Cmd {
		cmd := exec.Command(ipamBinary)
		cmd.Env = []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=" + containerID, "CNI_NETNS=/run/netns/gvcni-unused",
			"CNI_IFNAME=eth0", "CNI_PATH=" + filepath.Dir(ipamBinary)}
		cmd.Stdin = strings.NewReader(string(conf))
		return cmd
	}
	// How long one ADD takes here: kills land all over that span.
	start := time.Now()
	if out, err := plugin("ADD", "probe").CombinedOutput(); err != nil {
		t.Fatalf("ADD: %v\n%s", err, out)
	}
	span := time.Since(start)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d, one ADD takes %s", seed, span)
	rng := rand.New(rand.NewPCG(seed, 0))

	const kills = 200
	var ids []string
	for i := range kills {
		id := fmt.Sprintf("killed-%d", i)
		ids = append(ids, id)
		cmd := plugin("ADD", id)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rng.Int64N(int64(span) + 1)))
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil && !strings.Contains(err.Error(), "finished") {
			t.Fatal(err)
		}
		_ = cmd.Wait()
	}
	a := newAllocator(t, Config{Network: "grapevine", DataDir: e.data})
	all, err := allReservations(a)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range all {
		if r.ContainerID == "" || r.IfName != "eth0" {
			t.Errorf("reservation %s names no attachment (container %q, interface %q)", r.Addr, r.ContainerID, r.IfName)
		}
	}
	for _, id := range ids {
		if _, err := e.run("DEL", id, conf); err != nil {
			t.Errorf("DEL %s: %v", id, err)
		}
	}
	if _, err := e.run("ADD", "after", conf); err != nil {
		t.Fatal(err)
	}
	all, err = allReservations(a)
	if err != nil {
		t.Fatal(err)
	}
	var holders []string
	for _, r := range all {
		holders = append(holders, r.ContainerID)
	}
	slices.Sort(holders)
	if want := []string{"after", "probe"}; !slices.Equal(holders, want) {
		t.Errorf("after DEL of every killed ADD the store holds reservations of %v, want %v", holders, want)
	}
	entries, _ := os.ReadDir(filepath.Join(e.data, "grapevine"))
	for _, entry := range entries {
		if strings.HasPrefix(entry.Name(), ".") {
			t.Errorf("temporary file %s survived the next ADD", entry.Name())
		}
	}
}

func TestBinaryWithGarbledNodeStateSaysTryAgain(t *testing.T) {
	e := newIPAMEnv(t)
	if err := os.WriteFile(filepath.Join(e.runDir, "node.json"), []byte(`{"node": "n1", "blo`), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := e.run("ADD", "ctr", e.conf(""))
	wantCode(t, "ADD with a garbled node.json", err, types.ErrTryAgainLater, "node state")
	_, err = e.run("STATUS", "", e.conf(""))
	wantCode(t, "STATUS with a garbled node.json", err, types.ErrPluginNotAvailable, "node state")
}

// allReservations lists the store under the allocator's lock.
func allReservations(a *Allocator) ([]Reservation, error) {
	var all []Reservation
	err := a.locked(func() error {
		var err error
		all, err = a.store.list()
		return err
	})
	return all, err
}
