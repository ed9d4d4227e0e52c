package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/kubejoin"
	"github.com/grapevine-net/grapevine/mesh/ledger"
	"github.com/grapevine-net/grapevine/mesh/meshtest"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// fakeKube is an in-memory Kubernetes API for Node objects: list, watch
// (from the history of changes) and get.
type fakeKube struct {
	mu      sync.Mutex
	nodes   []kubejoin.Node
	rv      int
	history []kubejoin.Event
	changed chan struct{}
	down    bool // the API server out of reach
	// agentLease is the --lease of the agents started against this API
	// server (zero: an hour, as for the other test hosts).
	agentLease time.Duration
	// record is the ConfigMap naming the ledger; nil until created.
	record  *kubejoin.LedgerRecord
	creates int // create requests for it
}

func newFakeKube() *fakeKube { return &fakeKube{changed: make(chan struct{}), rv: 1} }

func (f *fakeKube) eventLocked(typ kubejoin.EventType, n kubejoin.Node) {
	f.rv++
	f.history = append(f.history, kubejoin.Event{Type: typ, Node: n, ResourceVersion: strconv.Itoa(f.rv)})
	close(f.changed)
	f.changed = make(chan struct{})
}

// register creates the Node object of a host (later ones are younger) and
// returns its UID.
func (f *fakeKube) register(name string, addr netip.Addr) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := kubejoin.Node{Name: name, UID: fmt.Sprintf("%s-uid-%d", name, f.rv+1), Created: time.Unix(1_800_000_000+int64(f.rv), 0),
		Addresses: []kubejoin.NodeAddress{{Type: "InternalIP", Address: addr.String()}}}
	f.nodes = append(f.nodes, n)
	f.eventLocked(kubejoin.Added, n)
	return n.UID
}

// delete is kubectl delete node.
func (f *fakeKube) delete(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := slices.IndexFunc(f.nodes, func(n kubejoin.Node) bool { return n.Name == name })
	if i < 0 {
		return
	}
	n := f.nodes[i]
	f.nodes = slices.Delete(f.nodes, i, i+1)
	f.eventLocked(kubejoin.Deleted, n)
}

func (f *fakeKube) setDown(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
}

var errAPIDown = errors.New("dial tcp 10.96.0.1:443: connect: connection refused")

func (f *fakeKube) ListNodes(context.Context) (kubejoin.NodeList, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return kubejoin.NodeList{}, errAPIDown
	}
	return kubejoin.NodeList{Nodes: slices.Clone(f.nodes), ResourceVersion: strconv.Itoa(f.rv)}, nil
}

func (f *fakeKube) GetNode(_ context.Context, name string) (kubejoin.Node, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return kubejoin.Node{}, errAPIDown
	}
	for _, n := range f.nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return kubejoin.Node{}, fmt.Errorf("404 Not Found: %w", kubejoin.ErrNotFound)
}

func (f *fakeKube) GetLedgerRecord(context.Context) (kubejoin.LedgerRecord, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.down:
		return kubejoin.LedgerRecord{}, errAPIDown
	case f.record == nil:
		return kubejoin.LedgerRecord{}, fmt.Errorf("404 Not Found: %w", kubejoin.ErrNotFound)
	}
	return *f.record, nil
}

func (f *fakeKube) CreateLedgerRecord(_ context.Context, rec kubejoin.LedgerRecord) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creates++
	switch {
	case f.down:
		return errAPIDown
	case f.record != nil:
		return fmt.Errorf("409 Conflict: %w", kubejoin.ErrExists)
	}
	f.record = &rec
	return nil
}

func (f *fakeKube) recorded() (kubejoin.LedgerRecord, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.record == nil {
		return kubejoin.LedgerRecord{}, false
	}
	return *f.record, true
}

func (f *fakeKube) WatchNodes(ctx context.Context, resourceVersion string, handle func(kubejoin.Event)) error {
	from, _ := strconv.Atoi(resourceVersion)
	for {
		f.mu.Lock()
		if f.down {
			f.mu.Unlock()
			return errAPIDown
		}
		var batch []kubejoin.Event
		for _, ev := range f.history {
			if v, _ := strconv.Atoi(ev.ResourceVersion); v > from {
				batch = append(batch, ev)
			}
		}
		changed := f.changed
		f.mu.Unlock()
		for _, ev := range batch {
			handle(ev)
			from, _ = strconv.Atoi(ev.ResourceVersion)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

func TestKubeNodeVerify(t *testing.T) {
	kube := newFakeKube()
	uid := kube.register("self", netip.MustParseAddr("192.0.2.1"))
	k := &kubeNode{client: kube, name: "self"}
	if err := k.Verify(t.Context(), uid); err != nil {
		t.Errorf("same UID: %v", err)
	}
	if err := k.Verify(t.Context(), "self-uid-old"); err == nil || !strings.Contains(err.Error(), "registered again") {
		t.Errorf("other UID: %v, want a refusal saying the Node was registered again", err)
	}
	kube.setDown(true)
	if err := k.Verify(t.Context(), uid); err == nil || !strings.Contains(err.Error(), "cannot read") {
		t.Errorf("API server down: %v, want a refusal", err)
	}
	kube.setDown(false)
	kube.delete("self")
	if err := k.Verify(t.Context(), uid); err == nil || !strings.Contains(err.Error(), "no Node object") {
		t.Errorf("Node deleted: %v, want a refusal", err)
	}
}

// fakeReleaser answers ReleaseDeletedNode from a script and records when
// it was asked.
type fakeReleaser struct {
	mu     sync.Mutex
	answer func(node string, call int) (netip.Prefix, error)
	calls  map[string][]time.Time
}

func (f *fakeReleaser) ReleaseDeletedNode(_ context.Context, node string) (netip.Prefix, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.calls == nil {
		f.calls = map[string][]time.Time{}
	}
	f.calls[node] = append(f.calls[node], time.Now())
	return f.answer(node, len(f.calls[node]))
}

func (f *fakeReleaser) count(node string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls[node])
}

var block = netip.MustParsePrefix("10.244.8.0/23")

// testDeletedNodes runs a deletedNodes over r inside a synctest bubble and
// returns it with its log.
func testDeletedNodes(t *testing.T, r *fakeReleaser) (*deletedNodes, *testWriter, context.CancelFunc) {
	logs := &testWriter{t: t}
	ctx, cancel := context.WithCancel(t.Context())
	d := &deletedNodes{mesh: r, self: "self", log: slog.New(slog.NewTextHandler(logs, nil)), ctx: ctx, pending: map[string]context.CancelFunc{}}
	t.Cleanup(func() { cancel(); d.wait() })
	return d, logs, cancel
}

func TestDeletedNodeReleasedOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &fakeReleaser{answer: func(string, int) (netip.Prefix, error) { return block, nil }}
		d, _, _ := testDeletedNodes(t, r)
		d.deleted(kubejoin.Node{Name: "b"})
		d.deleted(kubejoin.Node{Name: "self"})
		synctest.Wait()
		time.Sleep(time.Hour)
		synctest.Wait()
		if r.count("b") != 1 || r.count("self") != 0 {
			t.Errorf("asked %d times for b and %d for self, want once and never", r.count("b"), r.count("self"))
		}
	})
}

// TestDeletedNodeRetriesWithoutLeader: no leader (or the mesh not running
// yet) is retried with a growing pause until the release goes through.
func TestDeletedNodeRetriesWithoutLeader(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &fakeReleaser{answer: func(_ string, call int) (netip.Prefix, error) {
			if call <= 6 {
				return netip.Prefix{}, fmt.Errorf("mesh: release b: %w", ledger.ErrNoLeader)
			}
			return block, nil
		}}
		d, _, _ := testDeletedNodes(t, r)
		d.deleted(kubejoin.Node{Name: "b"})
		d.deleted(kubejoin.Node{Name: "b"}) // seen by the watch and a relist: one release
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		r.mu.Lock()
		calls := r.calls["b"]
		r.mu.Unlock()
		if len(calls) != 7 {
			t.Fatalf("%d requests, want 7", len(calls))
		}
		for i := 2; i < len(calls); i++ {
			if gap, prev := calls[i].Sub(calls[i-1]), calls[i-1].Sub(calls[i-2]); gap < prev/2 {
				t.Errorf("pause %d (%s) shorter than half the one before (%s): no back-off", i, gap, prev)
			}
		}
		if last := calls[6].Sub(calls[0]); last > 2*time.Minute {
			t.Errorf("the seventh request came %s after the first, want the back-off capped", last)
		}
	})
}

// TestDeletedNodeAlive: a node alive in gossip is not released; the agent
// says why, looks again while the node may still be going down, releases
// once it is dead, and gives up on one that stays alive.
func TestDeletedNodeAlive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		alive := fmt.Errorf("mesh: node b is alive: %w", ledger.ErrNodeAlive)
		r := &fakeReleaser{answer: func(node string, call int) (netip.Prefix, error) {
			if node == "b" && call > 5 { // b's host stopped; gossip declared it dead
				return block, nil
			}
			return netip.Prefix{}, alive
		}}
		d, logs, _ := testDeletedNodes(t, r)
		d.deleted(kubejoin.Node{Name: "b"})
		d.deleted(kubejoin.Node{Name: "running"})
		time.Sleep(time.Hour)
		synctest.Wait()
		if r.count("b") != 6 {
			t.Errorf("b: %d requests, want 6 (released once dead)", r.count("b"))
		}
		if n := r.count("running"); n < int(aliveGiveUp/aliveRecheck)-5 || n > int(aliveGiveUp/aliveRecheck)+5 {
			t.Errorf("running: %d requests in an hour, want about %d (every %s for %s)", n, aliveGiveUp/aliveRecheck, aliveRecheck, aliveGiveUp)
		}
		if logs.count("alive in gossip; not releasing its block") != 2 || logs.count("stayed alive in gossip") != 1 {
			t.Errorf("log does not say why once per node and that it gave up once:\n%s", strings.Join(logs.lines, "\n"))
		}
	})
}

// TestDeletedNodeRegisteredAgain: a Node registered again ends the retries.
func TestDeletedNodeRegisteredAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &fakeReleaser{answer: func(string, int) (netip.Prefix, error) {
			return netip.Prefix{}, fmt.Errorf("mesh: %w", ledger.ErrNoLeader)
		}}
		d, _, _ := testDeletedNodes(t, r)
		d.deleted(kubejoin.Node{Name: "b"})
		time.Sleep(3 * time.Second)
		d.added(kubejoin.Node{Name: "b", UID: "b2"})
		synctest.Wait()
		n := r.count("b")
		time.Sleep(time.Hour)
		synctest.Wait()
		if r.count("b") != n {
			t.Errorf("%d more requests after the Node was registered again", r.count("b")-n)
		}
	})
}

// gather sums a counter over the hosts' registries.
func gather(t *testing.T, name, label string, hosts ...*testHost) float64 {
	t.Helper()
	var sum float64
	for _, h := range hosts {
		sum += counterValue(t, h.agent.registry, name, label)
	}
	return sum
}

func counterValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// savedIncarnation reads the incarnation in a host's block.json.
func savedIncarnation(t *testing.T, h *testHost) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(h.agent.opts.StateDir, mesh.BlockFileName))
	if err != nil {
		return ""
	}
	var f struct{ Incarnation string }
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	return f.Incarnation
}

func startKubeHost(t *testing.T, network *meshtest.Network, kube *fakeKube, dir, name string, i int, join ...string) *testHost {
	t.Helper()
	return startHost(t, network, nil, nil, kube, dir, name, i, nil, join...)
}

// TestKubernetesNodeDeletion runs agents with --join-kubernetes against an
// in-memory API server: deleting the Node of a stopped host frees its block
// once its lease has ended, never sooner; deleting a running host's Node frees nothing; an agent
// that is no Kubernetes node (joined with --join) is never released; the
// Node's UID is saved with the block, and a host whose Node was deleted
// and registered again gets no restart rule.
func TestKubernetesNodeDeletion(t *testing.T) {
	dir := t.TempDir()
	network := meshtest.NewNetwork()
	kube := newFakeKube()
	// Long enough to outlast the fake cluster's start, short enough that
	// a deleted Node's block is freed within the test.
	kube.agentLease = 5 * time.Second
	for i, name := range []string{"h1", "h2", "h3"} {
		kube.register(name, meshtest.HostAddr(i+1))
	}
	h1 := startKubeHost(t, network, kube, dir, "h1", 1)
	h2 := startKubeHost(t, network, kube, dir, "h2", 2, h1.addr.String())
	h3 := startKubeHost(t, network, kube, dir, "h3", 3, h1.addr.String())
	h4 := startTestHost(t, network, dir, "h4", 4, nil, h1.addr.String()) // --join, no Node object
	waitFor(t, "all hosts to route each other", func() error { return routesTo(h1, h2, h3, h4) })
	waitFor(t, "each Kubernetes host to save its Node's UID with its block", func() error {
		for _, h := range []*testHost{h1, h2, h3} {
			if got, want := savedIncarnation(t, h), kube.uidOf(h.name); got != want {
				return fmt.Errorf("%s saved %q, its Node's UID is %q", h.name, got, want)
			}
		}
		if got := savedIncarnation(t, h4); got != "" {
			return fmt.Errorf("h4, without Kubernetes, saved incarnation %q", got)
		}
		return nil
	})
	blocks := map[string]netip.Prefix{}
	for _, h := range []*testHost{h1, h2, h3, h4} {
		st, err := nodestate.Read(h.agent.opts.RunDir)
		if err != nil {
			t.Fatal(err)
		}
		blocks[h.name] = st.Block
	}

	// The operator deletes the Node of running h2; its kubelet registers it
	// again. Nothing is released, and h2 confirms its block under the new UID.
	kube.delete("h2")
	time.Sleep(2 * time.Second)
	uid2 := kube.register("h2", h2.addr)
	waitFor(t, "h2 to save its block under its new Node UID", func() error {
		if got := savedIncarnation(t, h2); got != uid2 {
			return fmt.Errorf("h2 saved %q, want %q", got, uid2)
		}
		return routesTo(h1, h2, h3, h4)
	})
	if n := gather(t, "grapevine_mesh_releases_total", "record_deleted", h1, h2, h3, h4); n != 0 {
		t.Fatalf("%v releases after deleting a running host's Node", n)
	}

	// h4 (no Node object) and h3 stop, and h3's Node is deleted: its block
	// is freed once h3's lease has ended, never sooner.
	h4.stop(t)
	// Three voters: wait until the ledger has replaced h4 if it was one,
	// so that stopping h3 leaves a majority.
	waitFor(t, "the ledger to vote without h4", func() error {
		info := h1.agent.mesh.View().Ledger
		if info.Leader == "" || len(info.Voters) != 3 || slices.Contains(info.Voters, "h4") {
			return fmt.Errorf("leader %q, voters %v", info.Leader, info.Voters)
		}
		return nil
	})
	h3.stop(t)
	h3Lease, err := nodestate.Read(h3.agent.opts.RunDir)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "h1 to see h3 and h4 gone", func() error {
		for _, m := range h1.agent.mesh.View().Members {
			if (m.Name == "h3" || m.Name == "h4") && m.State.Live() {
				return fmt.Errorf("%s is %s", m.Name, m.State)
			}
		}
		return nil
	})
	deleted := time.Now()
	kube.delete("h3")
	// Freed by the agents' release or by the leader's reclaim, whichever
	// comes first: both wait for h3's lease to end.
	waitFor(t, "h3's block to be freed", func() error {
		for _, m := range h1.agent.mesh.View().Members {
			if m.Name == "h3" && m.Held.IsValid() {
				return fmt.Errorf("h1's replica still assigns h3 %s", m.Held)
			}
		}
		return nil
	})
	if time.Now().Before(h3Lease.Lease.EndsAt) {
		t.Fatalf("h3's block freed before h3's lease ended at %s", h3Lease.Lease.EndsAt.Format(time.StampMilli))
	}
	t.Logf("h3's block %s freed %s after its Node object was deleted (%d by its deletion)", blocks["h3"],
		time.Since(deleted).Round(time.Millisecond), int(gather(t, "grapevine_mesh_releases_total", "record_deleted", h1, h2)))

	// h3's host returns with its state directory, cut off from the ledger,
	// its Node registered again by its kubelet under a new UID: no restart
	// rule, so it does not hand out addresses from the block it had.
	kube.register("h3", h3.addr)
	network.Partition([]netip.Addr{h3.addr}, []netip.Addr{h1.addr, h2.addr})
	h3 = startKubeHost(t, network, kube, dir, "h3", 3, h1.addr.String())
	// (Whether the rest of the restart rule holds depends on whether the
	// ledger's snapshot on disk has h3's block; the mesh's tests cover the
	// Node's part alone.)
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if v := h3.agent.mesh.View(); v.Ready {
			t.Fatalf("isolated h3 is ready with %s", v.Block)
		}
	}
	waitFor(t, "h3 to apply the restart rule", func() error {
		if h3.agent.mesh.View().Restart == mesh.RestartUndecided {
			return errors.New("undecided")
		}
		return nil
	})
	v := h3.agent.mesh.View()
	if v.Restart != mesh.RestartRefused {
		t.Fatalf("isolated h3 after its Node was registered again: restart rule %s", v.Restart)
	}
	if strings.HasPrefix(v.RestartReason, "this host's incarnation") && !strings.Contains(v.RestartReason, "registered again") {
		t.Errorf("the restart rule was refused for another reason than the Node registered again: %s", v.RestartReason)
	}
	// The hand-off h3's previous run left names the released block.
	waitFor(t, "isolated h3 to withdraw the previous run's node.json", func() error {
		if _, err := os.Stat(nodestate.Path(h3.agent.opts.RunDir)); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("still there: %v", err)
		}
		return nil
	})
	network.Heal()
	waitFor(t, "h3 to be routed again after the ledger answered", func() error { return routesTo(h1, h2, h3) })
}

func (f *fakeKube) uidOf(name string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.nodes {
		if n.Name == name {
			return n.UID
		}
	}
	return ""
}

func (f *fakeKube) createCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.creates
}

// TestKubeLedgerRecordFounders: the mesh's record in the API keeps the
// founders it was created with; a record without founders (written before
// they were recorded) reads as one whose founder founded alone; a founder
// that does not parse is an error, never "no record".
func TestKubeLedgerRecordFounders(t *testing.T) {
	f := newFakeKube()
	rec := kubeLedgerRecord{client: f}
	if got, ok, err := rec.Read(t.Context()); err != nil || ok {
		t.Fatalf("Read before any = %+v, %v, %v; want none", got, ok, err)
	}
	want := mesh.RecordedLedger{ClusterID: ledger.NewClusterID(), Founder: "h1", Founders: []ledger.Founder{
		{ID: ledger.NodeID{1}, Addr: netip.MustParseAddrPort("192.168.10.11:7963")},
		{ID: ledger.NodeID{2}, Addr: netip.MustParseAddrPort("192.168.10.12:7963")},
	}}
	got, created, err := rec.Create(t.Context(), want)
	if err != nil || !created || got.ClusterID != want.ClusterID || !slices.Equal(got.Founders, want.Founders) {
		t.Fatalf("Create = %+v, %v, %v; want %+v created", got, created, err, want)
	}
	got, ok, err := rec.Read(t.Context())
	if err != nil || !ok || got.ClusterID != want.ClusterID || got.Founder != "h1" || !slices.Equal(got.Founders, want.Founders) {
		t.Fatalf("Read = %+v, %v, %v; want %+v", got, ok, err, want)
	}

	f.mu.Lock()
	f.record = &kubejoin.LedgerRecord{ClusterID: want.ClusterID.String(), Founder: "h1"}
	f.mu.Unlock()
	if got, ok, err := rec.Read(t.Context()); err != nil || !ok || len(got.Founders) != 0 {
		t.Errorf("Read of a record without founders = %+v, %v, %v; want it with none", got, ok, err)
	}
	f.mu.Lock()
	f.record.Founders = []kubejoin.RecordFounder{{ID: "h2", Addr: "192.168.10.12:7963"}}
	f.mu.Unlock()
	if _, ok, err := rec.Read(t.Context()); err == nil || ok {
		t.Errorf("Read of a record with a bad founder ID = %v, %v; want an error", ok, err)
	}
	f.mu.Lock()
	f.down = true
	f.mu.Unlock()
	if _, ok, err := rec.Read(t.Context()); !errors.Is(err, errAPIDown) || ok {
		t.Errorf("Read with the API down = %v, %v; want its error", ok, err)
	}
}
