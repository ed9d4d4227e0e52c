package netpol

import (
	"context"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/google/nftables"
)

// hostConn is an nftables connection in n's host namespace, as someone
// other than the NFTKernel would have one.
func (n *testNet) hostConn(t *testing.T) *nftables.Conn {
	t.Helper()
	fd, err := os.Open(n.host.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fd.Close() })
	conn, err := nftables.New(nftables.WithNetNSFd(int(fd.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

func (n *testNet) intact(t *testing.T, rs Ruleset) bool {
	t.Helper()
	ok, err := n.kernel.Intact(rs)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// TestKernelIntact: the table is intact right after Apply, for the
// ruleset applied only, and no longer once someone deletes one of its
// chains or the whole table.
func TestKernelIntact(t *testing.T) {
	n := newTestNet(t)
	conn := n.hostConn(t)
	rs, _ := Compile(scaleInput(40, 6, 3, true))
	if len(rs.Sets) == 0 || len(rs.Chains) == 0 {
		t.Fatalf("the ruleset has %d sets and %d chains; the test needs some of each", len(rs.Sets), len(rs.Chains))
	}
	if n.intact(t, rs) {
		t.Error("intact before any Apply")
	}
	if err := n.kernel.Apply(rs); err != nil {
		t.Fatal(err)
	}
	if !n.intact(t, rs) {
		t.Error("not intact right after Apply")
	}
	if n.intact(t, Ruleset{}) {
		t.Error("intact for a ruleset other than the one applied")
	}

	// Someone deletes a base chain (flushed first: the kernel refuses to
	// delete a chain with rules).
	egress := &nftables.Chain{Name: egressChain, Table: table()}
	conn.FlushChain(egress)
	conn.DelChain(egress)
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	if n.intact(t, rs) {
		t.Error("intact without its egress chain")
	}

	// Written again, then someone deletes the whole table.
	if err := n.kernel.Apply(rs); err != nil {
		t.Fatal(err)
	}
	if !n.intact(t, rs) {
		t.Error("not intact after writing it again")
	}
	conn.DelTable(table())
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	if n.intact(t, rs) {
		t.Error("intact after the table was deleted")
	}
}

// TestKernelWatch: Watch signals once it listens, at our own Apply, and
// when someone else deletes one of the table's chains or the table.
func TestKernelWatch(t *testing.T) {
	n := newTestNet(t)
	conn := n.hostConn(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watch := n.kernel.Watch(ctx)
	signalled := func(what string) {
		t.Helper()
		select {
		case <-watch:
		case <-time.After(time.Minute): // only bounds a failure
			t.Fatalf("no signal for %s", what)
		}
	}
	signalled("the start of watching")

	rs, _ := Compile(scaleInput(40, 6, 3, true))
	if err := n.kernel.Apply(rs); err != nil {
		t.Fatal(err)
	}
	signalled("our own Apply")

	ingress := &nftables.Chain{Name: ingressChain, Table: table()}
	conn.FlushChain(ingress)
	conn.DelChain(ingress)
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	signalled("the deletion of a chain")

	conn.DelTable(table())
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	signalled("the deletion of the table")
}

// TestTouchesOurTable: only our table's own events, its chains' and its
// rules' count; another table's, a table of ours in another family, and
// set elements do not.
func TestTouchesOurTable(t *testing.T) {
	ours := table()
	sameNameIPv4 := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName}
	other := &nftables.Table{Family: nftables.TableFamilyINet, Name: "kube-proxy"}
	tests := []struct {
		name string
		data any
		want bool
	}{
		{"our table", ours, true},
		{"our chain", &nftables.Chain{Name: egressChain, Table: ours}, true},
		{"our rule", &nftables.Rule{Table: ours, Chain: &nftables.Chain{Name: "in-g0"}}, true},
		{"another table", other, false},
		{"another table's chain", &nftables.Chain{Name: egressChain, Table: other}, false},
		{"another table's rule", &nftables.Rule{Table: other}, false},
		{"an ip table of the same name", sameNameIPv4, false},
		{"set elements", []nftables.SetElement{{Key: []byte{10, 0, 0, 1}}}, false},
		{"a chain without its table", &nftables.Chain{Name: egressChain}, false},
		{"nothing decoded", nil, false},
	}
	for _, tt := range tests {
		if got := touchesOurTable(&nftables.MonitorEvent{Data: tt.data}); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestTableObjects: the names Intact expects are those Apply writes, for
// a ruleset whose sets have addresses of one family or both.
func TestTableObjects(t *testing.T) {
	rs := Ruleset{
		Sets: []AddrSet{
			{Name: "s0", Ranges: []AddrRange{{First: netip.MustParseAddr("10.0.0.1"), Last: netip.MustParseAddr("10.0.0.9")}}},
			{Name: "s1", Ranges: []AddrRange{
				{First: netip.MustParseAddr("10.0.1.0"), Last: netip.MustParseAddr("10.0.1.255")},
				{First: netip.MustParseAddr("fd00::1"), Last: netip.MustParseAddr("fd00::1")},
			}},
		},
		Chains: []Chain{{Name: "in-g0"}, {Name: "in-p0"}},
	}
	chains, sets := tableObjects(rs)
	wantChains := []string{"in-g0", "in-p0", "egress", "ingress"}
	wantSets := []string{"s0", "s1", "s1-v6", "unknown-pods", "egress-pods", "ingress-pods", "unknown-pods-v6", "egress-pods-v6", "ingress-pods-v6"}
	if !sameNames(chains, wantChains) || !sameNames(sets, wantSets) {
		t.Errorf("tableObjects: chains %v, sets %v; want %v, %v", chains, sets, wantChains, wantSets)
	}
	if sameNames([]string{"a", "a", "b"}, []string{"a", "b", "b"}) {
		t.Error("sameNames counts names only once")
	}
}
