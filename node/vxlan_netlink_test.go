package node

import (
	"context"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// command runs `name -n <ns> args...` (ip or bridge) and returns
// its lines, trimmed.
func (n *testNS) command(t *testing.T, name string, args ...string) []string {
	t.Helper()
	out, err := exec.Command(name, append([]string{"-n", n.name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

func hasLine(lines []string, want string) bool {
	return slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, want) })
}

// TestNetlinkVXLAN programs a cross-subnet peer in a real namespace and
// checks the kernel's own view of it: the device with its VNI, port, local
// address, learning off and MAC; the onlink route; the permanent neighbour;
// the FDB entry. The device deleted by hand comes back; with no VXLAN peer
// left it goes, and nothing else in the namespace is touched.
func TestNetlinkVXLAN(t *testing.T) {
	n := newTestNS(t)
	n.addLink(t, "em1", "172.16.254.1/24")
	k := n.kernel(t)
	r := NewReconciler(k, nil, nil)
	d := encapDesired(EncapsulationCrossSubnet, peerB, peerFar)
	res, err := r.Reconcile(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Programmed("b") || !res.Programmed("far") {
		t.Fatalf("peers = %v", res.Peers)
	}
	check := func() {
		t.Helper()
		link := n.command(t, "ip", "-d", "link", "show", TunnelName)
		for _, want := range []string{"vxlan id 74", "local 172.16.254.1", "dev em1", "dstport 4789", "nolearning", "link/ether 0e:74:ac:10:fe:01", "UP", "mtu 1450"} {
			if !strings.Contains(strings.Join(link, " "), want) {
				t.Errorf("device lacks %q:\n%s", want, strings.Join(link, "\n"))
			}
		}
		if addrs := n.command(t, "ip", "addr", "show", "dev", TunnelName); !hasLine(addrs, "inet 10.244.0.0/32") {
			t.Errorf("no VTEP address:\n%s", strings.Join(addrs, "\n"))
		}
		routes := n.command(t, "ip", "route", "show", "proto", "74")
		for _, want := range []string{
			"10.244.2.0/23 via 172.16.254.2 dev em1",
			"10.244.6.0/23 via 10.244.6.0 dev gv.vxlan onlink",
		} {
			if !hasLine(routes, want) {
				t.Errorf("no route %q in\n%s", want, strings.Join(routes, "\n"))
			}
		}
		if neigh := n.command(t, "ip", "neigh", "show", "dev", TunnelName); !slices.Equal(neigh, []string{"10.244.6.0 lladdr 0e:74:ac:10:fd:07 PERMANENT"}) {
			t.Errorf("neighbours: %q", neigh)
		}
		if fdb := n.command(t, "bridge", "fdb", "show", "dev", TunnelName); !hasLine(fdb, "0e:74:ac:10:fd:07 dst 172.16.253.7 self permanent") || len(fdb) != 1 {
			t.Errorf("fdb: %q", fdb)
		}
	}
	check()
	writes := &countingKernel{Kernel: k}
	if _, err := NewReconciler(writes, nil, nil).Reconcile(t.Context(), d); err != nil || writes.writes.Load() != 0 {
		t.Fatalf("second pass: %d route writes, %v", writes.writes.Load(), err)
	}
	st, _ := k.Tunnel()
	if _, err := r.Reconcile(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	if again, _ := k.Tunnel(); again.Index != st.Index {
		t.Fatal("an unchanged device was recreated")
	}

	n.command(t, "ip", "link", "del", TunnelName)
	if res, err := r.Reconcile(t.Context(), d); err != nil || !res.Programmed("far") {
		t.Fatalf("after ip link del: %v %v", res.Peers, err)
	}
	check()

	n.command(t, "ip", "neigh", "del", "10.244.6.0", "dev", TunnelName)
	n.command(t, "bridge", "fdb", "del", "0e:74:ac:10:fd:07", "dev", TunnelName, "dst", "172.16.253.7")
	if _, err := r.Reconcile(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	check()

	if _, err := r.Reconcile(t.Context(), encapDesired(EncapsulationCrossSubnet, peerB)); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Tunnel(); !errors.Is(err, ErrLinkNotFound) {
		t.Fatalf("device left behind: %v", err)
	}
	if routes := n.ipRoutes(t); hasLine(routes, TunnelName) || !hasLine(routes, "10.244.2.0/23 via 172.16.254.2 dev em1 proto 74") {
		t.Fatalf("routes: %q", routes)
	}
}

// TestNetlinkVXLANLeavesOthersAlone: someone else's VXLAN device (another
// VNI on the same port, as flannel or Calico would have) keeps working next
// to ours, and a device of another kind with our name is never removed.
func TestNetlinkVXLANLeavesOthersAlone(t *testing.T) {
	n := newTestNS(t)
	n.addLink(t, "em1", "172.16.254.1/24")
	n.command(t, "ip", "link", "add", "vxlan.calico", "type", "vxlan", "id", "4096", "dstport", "4789", "local", "172.16.254.1", "dev", "em1")
	k := n.kernel(t)
	r := NewReconciler(k, nil, nil)
	d := encapDesired(EncapsulationCrossSubnet, peerFar)
	if res, err := r.Reconcile(t.Context(), d); err != nil || !res.Programmed("far") {
		t.Fatalf("next to another VXLAN device: %v %v", res.Peers, err)
	}
	if _, err := r.Reconcile(t.Context(), encapDesired(EncapsulationCrossSubnet)); err != nil {
		t.Fatal(err)
	}
	if links := n.command(t, "ip", "link", "show", "vxlan.calico"); len(links) == 0 {
		t.Fatal("the other device is gone")
	}

	n.command(t, "ip", "link", "add", TunnelName, "type", "bridge")
	res, err := r.Reconcile(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(res.PeerErrors["far"], ErrTunnelNotUsable) {
		t.Fatalf("peer error = %v", res.PeerErrors["far"])
	}
	if _, err := r.Reconcile(t.Context(), encapDesired(EncapsulationCrossSubnet)); err != nil {
		t.Fatal(err)
	}
	if link := n.command(t, "ip", "-d", "link", "show", TunnelName); !hasLine(link, "bridge") {
		t.Fatalf("the bridge named %s was changed: %q", TunnelName, link)
	}
}

// TestWatchSeesVXLANEntries: deleting a VXLAN neighbour or FDB entry by hand
// wakes the watcher, so the entry is back at once rather than at the next
// resync.
func TestWatchSeesVXLANEntries(t *testing.T) {
	n := newTestNS(t)
	n.addLink(t, "em1", "172.16.254.1/24")
	k := n.kernel(t)
	r := NewReconciler(k, nil, nil)
	d := encapDesired(EncapsulationCrossSubnet, peerFar)
	if _, err := r.Reconcile(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	for _, del := range [][]string{
		{"ip", "neigh", "del", "10.244.6.0", "dev", TunnelName},
		{"bridge", "fdb", "del", "0e:74:ac:10:fd:07", "dev", TunnelName, "dst", "172.16.253.7"},
	} {
		// A watch of its own for each deletion: it sees only what
		// happens after it started, not the last reconcile's writes.
		watchCtx, stop := context.WithCancel(t.Context())
		changes := k.WatchRoutes(watchCtx)
		n.command(t, del[0], del[1:]...)
		waitFor(t, changes, "a notification for "+strings.Join(del, " "))
		stop()
		if _, err := r.Reconcile(t.Context(), d); err != nil {
			t.Fatal(err)
		}
		neighs, fdb, err := k.TunnelEntries()
		// The kernel's own entries (ff02::16 for MLD, once IPv6 on the
		// device has sent a report) are not ours: count the PERMANENT ones.
		neighs = slices.DeleteFunc(neighs, func(n Neighbour) bool { return !n.Permanent })
		if err != nil || len(neighs) != 1 || len(fdb) != 1 {
			t.Fatalf("after %v: PERMANENT neighbours %v, fdb %v, %v", del, neighs, fdb, err)
		}
	}
}
