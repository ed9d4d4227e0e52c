package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/grapevine-net/grapevine/internal/hostveth"
	"github.com/grapevine-net/grapevine/ipam"
	"github.com/grapevine-net/grapevine/mesh/meshtest"
	"github.com/grapevine-net/grapevine/node"
)

// reserve writes a reservation into h's IPAM store as the plugin does.
func (h *testHost) reserve(t *testing.T, r node.Reservation) {
	t.Helper()
	h.reserveAged(t, r, 0)
}

// reserveAged writes a reservation made age ago.
func (h *testHost) reserveAged(t *testing.T, r node.Reservation, age time.Duration) {
	t.Helper()
	dir := h.agent.storeDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, r.Addr.String())
	if err := os.WriteFile(path, []byte(r.ContainerID+"\r\n"+r.IfName), 0o644); err != nil {
		t.Fatal(err)
	}
	when := time.Now().Add(-age)
	if err := os.Chtimes(path, when, when); err != nil {
		t.Fatal(err)
	}
}

// reserved lists the addresses in h's IPAM store.
func (h *testHost) reserved(t *testing.T) []netip.Addr {
	t.Helper()
	rs, err := ipam.ReadReservations(h.agent.ipamStore())
	if err != nil {
		t.Fatal(err)
	}
	var addrs []netip.Addr
	for _, r := range rs {
		addrs = append(addrs, r.Addr)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	return addrs
}

func aliasOf(r node.Reservation) string {
	return hostveth.Alias(node.NetworkName, r.ContainerID, r.IfName)
}

// readyBlock waits for h to be ready and returns its block.
func (h *testHost) readyBlock(t *testing.T) netip.Prefix {
	t.Helper()
	var block netip.Prefix
	waitFor(t, h.name+" to be ready", func() error {
		st := h.agent.settledStatus(t.Context(), statusWait)
		if !st.Ready {
			return fmt.Errorf("not ready: %s", st.Reason)
		}
		var err error
		block, err = netip.ParsePrefix(st.Block)
		return err
	})
	return block
}

// TestAgentLoopRepairsPods: a pod's /32 route and neighbour entry deleted
// by hand come back in the pass the kernel's change notification starts;
// a changed route too.
func TestAgentLoopRepairsPods(t *testing.T) {
	network := meshtest.NewNetwork()
	h := startTestHost(t, network, t.TempDir(), "h1", 1, nil)
	block := h.readyBlock(t)

	podIP := block.Addr().Next().Next()
	res := node.Reservation{Addr: podIP, ContainerID: "c0ffee", IfName: "eth0"}
	h.reserve(t, res)
	mac := node.MAC{0x02, 0x42, 0, 0, 0, 1}
	veth := h.kernel.WirePod("gv0000000000001", aliasOf(res), podIP, mac)
	route := node.Route{Dst: netip.PrefixFrom(podIP, 32), LinkIndex: veth.Index}
	hasRoute := func() error {
		if !slices.ContainsFunc(h.kernel.Table(), func(r node.FakeRoute) bool { return r.Route == route }) {
			return fmt.Errorf("no route %s", route)
		}
		return nil
	}

	h.kernel.RemoveRoute(route)
	h.kernel.RemoveNeighbour(veth.Index, podIP)
	h.kernelChanged()
	waitFor(t, "the pod's route back", hasRoute)
	waitFor(t, "the pod's neighbour entry back", func() error {
		if n, ok := h.kernel.PodNeighbour(veth.Index, podIP); !ok || !n.Permanent || n.MAC != mac {
			return fmt.Errorf("entry %+v (found %v)", n, ok)
		}
		return nil
	})

	h.kernel.PutRoute(node.Route{Dst: route.Dst, LinkIndex: veth.Index, Via: netip.MustParseAddr("10.0.0.99")}, 3)
	h.kernelChanged()
	waitFor(t, "the changed route put back", hasRoute)
}

// TestAgentLoopFreesReservationsOfGonePods: for runtimes that never send
// CNI GC, the agent frees the reservations older than staleAfter whose
// attachment has no host veth (a pod whose namespace, and veth with it, went
// without a DEL) or that name none, and counts them; it leaves running pods
// and ADDs in progress alone.
func TestAgentLoopFreesReservationsOfGonePods(t *testing.T) {
	network := meshtest.NewNetwork()
	h := startTestHost(t, network, t.TempDir(), "h1", 1, nil)
	block := h.readyBlock(t)

	addr := func(i int) netip.Addr {
		a := block.Addr()
		for range i {
			a = a.Next()
		}
		return a
	}
	old := 2 * staleAfter
	running := node.Reservation{Addr: addr(1), ContainerID: "running", IfName: "eth0"}
	gone := node.Reservation{Addr: addr(2), ContainerID: "gone", IfName: "eth0"}
	adding := node.Reservation{Addr: addr(3), ContainerID: "adding", IfName: "eth0"}
	nameless := node.Reservation{Addr: addr(4)}
	h.reserveAged(t, running, old)
	h.reserveAged(t, gone, old)
	h.reserveAged(t, adding, 0) // its ADD has not labelled a veth yet
	h.reserveAged(t, nameless, old)
	h.kernel.WirePod("gv0000000000001", aliasOf(running), running.Addr, node.MAC{0x02, 0x42, 0, 0, 0, 1})
	h.kernelChanged()

	// The files go before the pass counts them: wait for both.
	want := []netip.Addr{running.Addr, adding.Addr}
	waitFor(t, "the gone pod's and the nameless reservations freed and counted", func() error {
		if got := h.reserved(t); !slices.Equal(got, want) {
			return fmt.Errorf("reserved %v, want %v", got, want)
		}
		if got := testutil.ToFloat64(h.agent.collected); got != 2 {
			return fmt.Errorf("collected = %v, want 2", got)
		}
		return nil
	})

	// The runtime removes the running pod's namespace, and with it the
	// veth, without a DEL.
	h.kernel.DeleteLink("gv0000000000001")
	h.kernelChanged()
	want = []netip.Addr{adding.Addr}
	waitFor(t, "the reservation of the pod removed without DEL freed and counted", func() error {
		if got := h.reserved(t); !slices.Equal(got, want) {
			return fmt.Errorf("reserved %v, want %v", got, want)
		}
		if got := testutil.ToFloat64(h.agent.collected); got != 3 {
			return fmt.Errorf("collected = %v, want 3", got)
		}
		return nil
	})
}

// TestReadyzBlockExhausted: /readyz says not ready, and why, while every
// address of the block is reserved, and ready again once one is free.
func TestReadyzBlockExhausted(t *testing.T) {
	network := meshtest.NewNetwork()
	h := startTestHost(t, network, t.TempDir(), "h1", 1, nil)
	block := h.readyBlock(t)

	var last node.Reservation
	for a := block.Addr().Next(); block.Contains(a.Next()); a = a.Next() {
		last = node.Reservation{Addr: a, ContainerID: "c-" + a.String(), IfName: "eth0"}
		h.reserve(t, last)
	}
	h.kernelChanged()
	waitFor(t, "/readyz to say the block is exhausted", func() error {
		return httpStatus(h, http.StatusServiceUnavailable, "block "+block.String()+" is exhausted")
	})

	if err := os.Remove(filepath.Join(h.agent.storeDir(), last.Addr.String())); err != nil {
		t.Fatal(err)
	}
	h.kernelChanged()
	waitFor(t, "/readyz ready again", func() error { return httpStatus(h, http.StatusOK, "ready") })
}

// TestReadyzStoreNotWritable: /readyz says not ready, and why, while the
// IPAM store cannot take a reservation. Root writes through permissions, so
// the store's place is taken by a file.
func TestReadyzStoreNotWritable(t *testing.T) {
	network := meshtest.NewNetwork()
	h := startTestHost(t, network, t.TempDir(), "h1", 1, nil)
	h.readyBlock(t)

	if err := os.MkdirAll(filepath.Dir(h.agent.storeDir()), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.agent.storeDir(), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	h.kernelChanged()
	waitFor(t, "/readyz to say the store takes no writes", func() error {
		return httpStatus(h, http.StatusServiceUnavailable, "does not take writes")
	})
	if err := os.Remove(h.agent.storeDir()); err != nil {
		t.Fatal(err)
	}
	h.kernelChanged()
	waitFor(t, "/readyz ready again", func() error { return httpStatus(h, http.StatusOK, "ready") })
}

func TestExhausted(t *testing.T) {
	block := netip.MustParsePrefix("10.244.0.0/29") // 10.244.0.1-10.244.0.6
	reserve := func(addrs ...string) []node.Reservation {
		var rs []node.Reservation
		for _, a := range addrs {
			rs = append(rs, node.Reservation{Addr: netip.MustParseAddr(a), ContainerID: "c", IfName: "eth0"})
		}
		return rs
	}
	all := []string{"10.244.0.1", "10.244.0.2", "10.244.0.3", "10.244.0.4", "10.244.0.5", "10.244.0.6"}
	tests := []struct {
		name  string
		block netip.Prefix
		rs    []node.Reservation
		full  bool
	}{
		{"every address reserved", block, reserve(all...), true},
		{"one free", block, reserve(all[1:]...), false},
		{"an empty file holds its address too", block, append(reserve(all[1:]...), node.Reservation{Addr: netip.MustParseAddr(all[0])}), true},
		{"reservations of another block do not count", block, reserve(append(all[1:], "10.244.0.9", "10.244.0.0", "10.244.0.7")...), false},
		{"no block", netip.Prefix{}, reserve(all...), false},
		{"empty store", block, nil, false},
	}
	for _, tt := range tests {
		if got := exhausted(tt.block, tt.rs); (got != "") != tt.full {
			t.Errorf("%s: %q, want exhausted %v", tt.name, got, tt.full)
		}
	}
}

// httpStatus checks h's /readyz answer.
func httpStatus(h *testHost, code int, contains string) error {
	rec := httptest.NewRecorder()
	h.agent.metricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != code || !strings.Contains(rec.Body.String(), contains) {
		return fmt.Errorf("GET /readyz = %d %q, want %d containing %q", rec.Code, rec.Body.String(), code, contains)
	}
	return nil
}
