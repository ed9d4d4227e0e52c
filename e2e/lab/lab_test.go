package lab_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
)

var env = labtest.NewEnv()

func TestMain(m *testing.M) { env.Main(m) }

// TestHarness proves the lab itself with the reference ptp and host-local
// plugins, independent of grapevine: the LAN, the outside host, pods through
// libcni from inside a host namespace, and that Close leaves nothing behind.
func TestHarness(t *testing.T) {
	rootLinks := rootLinkNames(t)
	l := env.Lab(t, labtest.Options{Hosts: 2, CNIOnly: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h1, h2 := l.Host(1), l.Host(2)

	for _, probe := range []struct {
		from lab.Namespace
		name string
		dst  netip.Addr
	}{
		{h1.Namespace, "h1 -> h2", h2.IP},
		{h2.Namespace, "h2 -> h1", h1.IP},
		{h1.Namespace, "h1 -> outside", l.OutsideIP()},
		{l.Outside, "outside -> h2", h2.IP},
	} {
		rtt, err := probe.from.Ping(ctx, probe.dst)
		if err != nil {
			t.Fatalf("%s: %v", probe.name, err)
		}
		t.Logf("%s: %v", probe.name, rtt)
	}

	conf := filepath.Join(h1.Dir, "ptp.conflist")
	writePTPConf(t, conf, filepath.Join(h1.Dir, "ptp-ipam"))
	p1, err := h1.AddPodWithConf(ctx, conf)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := h1.AddPodWithConf(ctx, conf)
	if err != nil {
		t.Fatal(err)
	}
	if p1.IP == p2.IP || !p1.IP.IsValid() {
		t.Fatalf("pods got addresses %v and %v", p1.IP, p2.IP)
	}
	if _, err := p1.Ping(ctx, h1.IP); err != nil {
		t.Fatalf("pod -> own host: %v", err)
	}
	if err := p1.Check(ctx); err != nil {
		t.Fatal(err)
	}

	ln, err := p2.Listen(":7000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go lab.ServeEcho(ln)
	c, err := p1.DialEcho(ctx, netip.AddrPortFrom(p2.IP, 7000))
	if err != nil {
		t.Fatal(err)
	}
	if c.Source.Addr() != p1.IP {
		t.Errorf("server saw the client as %v, want %v (no NAT on the same host)", c.Source, p1.IP)
	}
	if err := c.RoundTrip("hello over ptp"); err != nil {
		t.Fatal(err)
	}
	c.Close()

	for _, p := range []*lab.Pod{p1, p2} {
		if err := p.Delete(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if names, _ := lab.Namespaces(p1.Namespace.Name); len(names) != 0 {
		t.Errorf("pod namespaces left after delete: %v", names)
	}

	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if names, _ := lab.Namespaces(lab.NamePrefix + l.ID + "-"); len(names) != 0 {
		t.Errorf("namespaces left after Close: %v", names)
	}
	if _, err := os.Stat(l.Dir); !os.IsNotExist(err) {
		t.Errorf("lab directory %s left after Close (%v)", l.Dir, err)
	}
	if after := rootLinkNames(t); !slices.Equal(after, rootLinks) {
		t.Errorf("root namespace links changed: before %v, after %v", rootLinks, after)
	}
}

// TestRemoveOrphans stands for a test binary killed by a timeout: its lab's
// owner is dead, and the next run removes the lab with all its processes.
func TestRemoveOrphans(t *testing.T) {
	l := env.Lab(t, labtest.Options{Hosts: 1, CNIOnly: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// A process inside the lab, as an agent would be.
	sleeper := l.Host(1).Command(context.Background(), "sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan error, 1)
	go func() { reaped <- sleeper.Wait() }()

	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	rec := filepath.Join(lab.RegistryDir, l.ID+".json")
	data, err := os.ReadFile(rec)
	if err != nil {
		t.Fatal(err)
	}
	var r lab.Record
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	r.OwnerPID = dead.Process.Pid
	if data, err = json.Marshal(r); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rec, data, 0o644); err != nil {
		t.Fatal(err)
	}

	ids, err := lab.RemoveOrphans(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(ids, l.ID) {
		t.Fatalf("RemoveOrphans removed %v, want %s among them", ids, l.ID)
	}
	if names, _ := lab.Namespaces(lab.NamePrefix + l.ID + "-"); len(names) != 0 {
		t.Errorf("namespaces left: %v", names)
	}
	select {
	case <-reaped:
	case <-time.After(30 * time.Second):
		t.Error("process inside the orphaned lab still runs")
	}
	if _, err := os.Stat(l.Dir); !os.IsNotExist(err) {
		t.Errorf("lab directory %s left (%v)", l.Dir, err)
	}
}

func writePTPConf(t *testing.T, path, ipamDir string) {
	t.Helper()
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "labptp", "plugins": [
  {"type": "ptp", "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": %q,
            "ranges": [[{"subnet": "10.99.1.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}`, ipamDir)
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
}

func rootLinkNames(t *testing.T) []string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range ifs {
		names = append(names, i.Name)
	}
	slices.Sort(names)
	return names
}

// TestIDTaken: a second lab with a run id in use fails without touching the
// first, whose namespaces a cleanup by id would otherwise remove.
func TestIDTaken(t *testing.T) {
	l := env.Lab(t, labtest.Options{Hosts: 1, CNIOnly: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := lab.New(ctx, lab.Config{ID: l.ID, Hosts: 1, BinDir: l.BinDir, CNIPath: l.CNIPath})
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second lab with id %s: %v, want an error matching fs.ErrExist", l.ID, err)
	}
	if _, err := l.Outside.Ping(ctx, l.Host(1).IP); err != nil {
		t.Fatalf("the first lab broke: %v", err)
	}
	if _, err := os.Stat(filepath.Join(lab.RegistryDir, l.ID+".json")); err != nil {
		t.Fatalf("the first lab lost its record: %v", err)
	}
}

func TestReadProcStat(t *testing.T) {
	self, err := lab.ReadProcStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if self.StartTime == 0 {
		t.Errorf("own start time is 0: %+v", self)
	}
	// Spend CPU until the clock ticks over; the loop cannot end otherwise.
	for {
		now, err := lab.ReadProcStat(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if now.StartTime != self.StartTime {
			t.Fatalf("start time changed from %d to %d", self.StartTime, now.StartTime)
		}
		if now.CPUTicks() > self.CPUTicks() {
			break
		}
	}
	if _, err := lab.ReadProcStat(1 << 30); err == nil {
		t.Error("ReadProcStat of a pid that cannot exist succeeded")
	}
}
