package node

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// nft opens an nftables connection into the namespace, independent of the
// code under test.
func (n *testNS) nft(t *testing.T) *nftables.Conn {
	t.Helper()
	fd, err := netns.GetFromPath(n.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fd.Close() })
	conn, err := nftables.New(nftables.WithNetNSFd(int(fd)))
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

func tableNames(t *testing.T, conn *nftables.Conn) []string {
	t.Helper()
	tables, err := conn.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tb := range tables {
		names = append(names, tb.Name)
	}
	slices.Sort(names)
	return names
}

// ourRules returns the rules of table ip grapevine's postrouting chain.
func ourRules(t *testing.T, conn *nftables.Conn) []*nftables.Rule {
	t.Helper()
	table := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: NFTTable}
	rules, err := conn.GetRules(table, &nftables.Chain{Name: nftChain, Table: table})
	if err != nil {
		t.Fatalf("read rules: %v", err)
	}
	return rules
}

// addOtherTable creates `table ip other { chain out { type filter hook
// output priority 0; counter } }`, someone else's rules.
func addOtherTable(t *testing.T, conn *nftables.Conn) {
	t.Helper()
	table := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "other"})
	chain := conn.AddChain(&nftables.Chain{
		Name: "out", Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter,
	})
	conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: []expr.Any{&expr.Counter{}}})
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
}

func TestMasqueradeTable(t *testing.T) {
	n := newTestNS(t)
	k := n.kernel(t)
	conn := n.nft(t)
	addOtherTable(t, conn)
	pool := pfx("10.244.0.0/16")

	if err := k.EnsureMasquerade(pool); err != nil {
		t.Fatal(err)
	}
	rules := ourRules(t, conn)
	if len(rules) != 1 {
		t.Fatalf("%d rules, want 1", len(rules))
	}
	assertMasqueradeRule(t, rules[0], pool)
	chain, err := conn.ListChain(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: NFTTable}, nftChain)
	if err != nil {
		t.Fatal(err)
	}
	if chain.Type != nftables.ChainTypeNAT || *chain.Hooknum != *nftables.ChainHookPostrouting || *chain.Priority != *nftables.ChainPriorityNATSource {
		t.Fatalf("chain %+v is not a nat postrouting chain at srcnat", chain)
	}

	// Again: nothing is rebuilt, so the rule keeps its handle.
	if err := k.EnsureMasquerade(pool); err != nil {
		t.Fatal(err)
	}
	if again := ourRules(t, conn); len(again) != 1 || again[0].Handle != rules[0].Handle {
		t.Fatalf("second ensure rebuilt the table: %d rules", len(again))
	}

	// A new pool replaces the rule.
	pool2 := pfx("10.96.0.0/12")
	if err := k.EnsureMasquerade(pool2); err != nil {
		t.Fatal(err)
	}
	rules = ourRules(t, conn)
	if len(rules) != 1 {
		t.Fatalf("after a pool change, %d rules", len(rules))
	}
	assertMasqueradeRule(t, rules[0], pool2)

	// Someone appends to our chain: the table is rebuilt with our rule alone.
	table := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: NFTTable}
	conn.AddRule(&nftables.Rule{Table: table, Chain: &nftables.Chain{Name: nftChain, Table: table}, Exprs: []expr.Any{&expr.Counter{}}})
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := k.EnsureMasquerade(pool2); err != nil {
		t.Fatal(err)
	}
	if rules = ourRules(t, conn); len(rules) != 1 {
		t.Fatalf("after tampering, %d rules", len(rules))
	}

	if got := tableNames(t, conn); !slices.Equal(got, []string{NFTTable, "other"}) {
		t.Fatalf("tables = %v", got)
	}
	for range 2 {
		if err := k.RemoveMasquerade(IPv4); err != nil {
			t.Fatal(err)
		}
	}
	if got := tableNames(t, conn); !slices.Equal(got, []string{"other"}) {
		t.Fatalf("after removal, tables = %v; want only the other table", got)
	}
}

func assertMasqueradeRule(t *testing.T, r *nftables.Rule, pool netip.Prefix) {
	t.Helper()
	comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	if comment != "grapevine masquerade "+pool.String() {
		t.Errorf("rule comment %q", comment)
	}
	var cmps []*expr.Cmp
	var masq bool
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Cmp:
			cmps = append(cmps, e)
		case *expr.Masq:
			masq = true
		}
	}
	want := pool.Addr().AsSlice()
	if len(cmps) != 2 || cmps[0].Op != expr.CmpOpEq || cmps[1].Op != expr.CmpOpNeq ||
		!slices.Equal(cmps[0].Data, want) || !slices.Equal(cmps[1].Data, want) || !masq {
		t.Errorf("rule is not `ip saddr %s ip daddr != %s masquerade`: %v", pool, pool, r.Exprs)
	}
}

// The IPv6 pool's masquerade is table ip6 grapevine, written beside table
// ip grapevine and removed without touching it.
func TestMasqueradeTable6(t *testing.T) {
	n := newTestNS(t)
	k := n.kernel(t)
	conn := n.nft(t)
	pool, pool6 := pfx("10.244.0.0/16"), pfx("fd00:10:244::/48")
	for _, p := range []netip.Prefix{pool, pool6} {
		if err := k.EnsureMasquerade(p); err != nil {
			t.Fatal(err)
		}
	}
	table6 := &nftables.Table{Family: nftables.TableFamilyIPv6, Name: NFTTable}
	rules6, err := conn.GetRules(table6, &nftables.Chain{Name: nftChain, Table: table6})
	if err != nil {
		t.Fatalf("read table ip6 %s: %v", NFTTable, err)
	}
	if len(rules6) != 1 {
		t.Fatalf("%d rules in table ip6 %s, want 1", len(rules6), NFTTable)
	}
	assertMasqueradeRule(t, rules6[0], pool6)
	rules := ourRules(t, conn)
	if len(rules) != 1 {
		t.Fatalf("%d rules in table ip %s, want 1", len(rules), NFTTable)
	}
	assertMasqueradeRule(t, rules[0], pool)

	// Again: nothing is rebuilt.
	if err := k.EnsureMasquerade(pool6); err != nil {
		t.Fatal(err)
	}
	if again, _ := conn.GetRules(table6, &nftables.Chain{Name: nftChain, Table: table6}); len(again) != 1 || again[0].Handle != rules6[0].Handle {
		t.Fatalf("second ensure rebuilt table ip6 %s", NFTTable)
	}

	if err := k.RemoveMasquerade(IPv6); err != nil {
		t.Fatal(err)
	}
	if tables, _ := conn.ListTablesOfFamily(nftables.TableFamilyIPv6); len(tables) != 0 {
		t.Errorf("table ip6 %s left after its removal", NFTTable)
	}
	if again := ourRules(t, conn); len(again) != 1 || again[0].Handle != rules[0].Handle {
		t.Errorf("removing the IPv6 masquerade changed table ip %s", NFTTable)
	}
}

func TestMasqueradeRejectsBadPool(t *testing.T) {
	n := newTestNS(t)
	k := n.kernel(t)
	for _, pool := range []netip.Prefix{{}, pfx("fd00::1/48"), pfx("10.244.1.0/16"), pfx("::ffff:10.0.0.0/104")} {
		if err := k.EnsureMasquerade(pool); err == nil {
			t.Errorf("pool %v accepted", pool)
		}
	}
	if got := tableNames(t, n.nft(t)); len(got) != 0 {
		t.Fatalf("tables created for a bad pool: %v", got)
	}
}

// Two namespaces joined by a veth: "host" (172.16.254.1, with a pod address
// 10.244.0.5 from the pool) and "peer" (172.16.254.2, with 10.244.2.7 from a
// peer's block). Traffic from the pod to the peer host leaves with the host's
// address; traffic to the peer's pod keeps the pod's address.
func TestMasqueradeTraffic(t *testing.T) {
	host, peer := hostAndPeer(t)
	host.setUp(t, "lo", "10.244.0.5/32")
	peer.setUp(t, "lo", "10.244.2.7/32")

	d := desired(PeerRoute{"peer", pfx("10.244.2.0/23"), addr("172.16.254.2")})
	res, err := NewReconciler(host.kernel(t), nil, nil).Reconcile(t.Context(), d)
	if err != nil || !res.Programmed("peer") {
		t.Fatalf("reconcile: %v, %v", err, res.Peers)
	}

	tests := []struct {
		to, wantFrom string
	}{
		{"172.16.254.2", "172.16.254.1"}, // leaves the pool: masqueraded
		{"10.244.2.7", "10.244.0.5"},     // stays in the pool: untouched
	}
	for _, tt := range tests {
		if got := sourceSeen(t, host, peer, "10.244.0.5", tt.to); got != tt.wantFrom {
			t.Errorf("packet from 10.244.0.5 to %s arrived from %s, want %s", tt.to, got, tt.wantFrom)
		}
	}
}

// hostAndPeer is two namespaces joined by a veth em1: "host" at
// 172.16.254.1/24 and "peer" at 172.16.254.2/24.
func hostAndPeer(t *testing.T) (host, peer *testNS) {
	t.Helper()
	host, peer = newTestNS(t), newTestNS(t)
	peerFd, err := netns.GetFromPath(peer.path)
	if err != nil {
		t.Fatal(err)
	}
	defer peerFd.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "em1"}, PeerName: "em1", PeerNamespace: netlink.NsFd(int(peerFd))}
	if err := host.handle.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	host.setUp(t, "em1", "172.16.254.1/24")
	peer.setUp(t, "em1", "172.16.254.2/24")
	return host, peer
}

// sourceSeen sends a UDP datagram from the address from in host's namespace
// to the address to in peer's, and returns the source the peer saw.
func sourceSeen(t *testing.T, host, peer *testNS, from, to string) string {
	t.Helper()
	var listener *net.UDPConn
	if err := ns.WithNetNSPath(peer.path, func(ns.NetNS) (err error) {
		listener, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(to)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	var sender *net.UDPConn
	if err := ns.WithNetNSPath(host.path, func(ns.NetNS) (err error) {
		sender, err = net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(from)}, listener.LocalAddr().(*net.UDPAddr))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	if _, err := sender.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	listener.SetReadDeadline(time.Now().Add(10 * time.Second)) // a deadline, not a speed goal
	buf := make([]byte, 16)
	_, seen, err := listener.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("from %s to %s: %v", from, to, err)
	}
	return seen.Addr().Unmap().String()
}

// The IPv6 twin of TestMasqueradeTraffic: "host" (fd00:172:16:254::1, with
// the pod address fd00:10:244::5 from pool6) and "peer"
// (fd00:172:16:254::2, with fd00:10:244:1::7 from the peer's IPv6 block).
// Traffic from the pod to the peer host leaves with the host's IPv6
// address; traffic to the peer's pod keeps the pod's.
func TestMasqueradeTraffic6(t *testing.T) {
	host, peer := hostAndPeer(t)
	// No duplicate address detection: a tentative address could be
	// neither bound nor used as the masquerade's source.
	host.addAddrNoDAD(t, "em1", "fd00:172:16:254::1/64")
	peer.addAddrNoDAD(t, "em1", "fd00:172:16:254::2/64")
	host.setUp(t, "lo", "fd00:10:244::5/128")
	peer.setUp(t, "lo", "fd00:10:244:1::7/128")
	// The peer answers its pod's traffic to our pod through us.
	peerEm1, err := peer.handle.LinkByName("em1")
	if err != nil {
		t.Fatal(err)
	}
	peer.addForeignRoute(t, gatewayRoute("fd00:10:244::/64", "fd00:172:16:254::1", peerEm1, 0))

	d := desired(PeerRoute{"peer", pfx("10.244.2.0/23"), addr("172.16.254.2")})
	d.Pool6, d.OwnBlock6 = pfx("fd00:10:244::/48"), pfx("fd00:10:244::/64")
	d.Peers6 = []PeerRoute{{"peer", pfx("fd00:10:244:1::/64"), addr("fd00:172:16:254::2")}}
	if _, err := NewReconciler(host.kernel(t), nil, nil).Reconcile(t.Context(), d); err != nil {
		t.Fatalf("reconcile: %v", err)
	}

	tests := []struct {
		to, wantFrom string
	}{
		{"fd00:172:16:254::2", "fd00:172:16:254::1"}, // leaves the pool: masqueraded
		{"fd00:10:244:1::7", "fd00:10:244::5"},       // stays in the pool: untouched
	}
	for _, tt := range tests {
		if got := sourceSeen(t, host, peer, "fd00:10:244::5", tt.to); got != tt.wantFrom {
			t.Errorf("packet from fd00:10:244::5 to %s arrived from %s, want %s", tt.to, got, tt.wantFrom)
		}
	}
}

// TestWatchSeesMasqueradeChanges: a masquerade rule removed from its table
// (the table kept) is reported as promptly as the table's deletion, so the
// next pass puts it back.
func TestWatchSeesMasqueradeChanges(t *testing.T) {
	n := newTestNS(t)
	k := n.kernel(t)
	conn := n.nft(t)
	addOtherTable(t, conn)
	pool := pfx("10.244.0.0/16")
	table := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: NFTTable}
	damage := map[string]func(){
		"rule deleted": func() {
			if err := conn.DelRule(ourRules(t, conn)[0]); err != nil {
				t.Fatal(err)
			}
		},
		"chain flushed": func() { conn.FlushChain(&nftables.Chain{Name: nftChain, Table: table}) },
		"table deleted": func() { conn.DelTable(table) },
	}
	for _, name := range []string{"rule deleted", "chain flushed", "table deleted"} {
		t.Run(name, func(t *testing.T) {
			if err := k.EnsureMasquerade(pool); err != nil {
				t.Fatal(err)
			}
			// A watch of its own, opened after the rebuild's events.
			ctx, stop := context.WithCancel(t.Context())
			defer stop()
			changes := k.WatchRoutes(ctx)
			damage[name]()
			if err := conn.Flush(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, changes, "a notification for the masquerade change")
			if err := k.EnsureMasquerade(pool); err != nil {
				t.Fatal(err)
			}
			if rules := ourRules(t, conn); len(rules) != 1 {
				t.Fatalf("after the repair, %d rules", len(rules))
			}
		})
	}
}

func TestIsMasqueradeChange(t *testing.T) {
	ours := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: NFTTable}
	tests := []struct {
		name string
		ev   nftables.MonitorEvent
		want bool
	}{
		{"our table", nftables.MonitorEvent{Data: ours}, true},
		{"our chain", nftables.MonitorEvent{Data: &nftables.Chain{Table: ours}}, true},
		{"our rule", nftables.MonitorEvent{Data: &nftables.Rule{Table: ours}}, true},
		{"our ip6 table's rule", nftables.MonitorEvent{Data: &nftables.Rule{Table: &nftables.Table{Family: nftables.TableFamilyIPv6, Name: NFTTable}}}, true},
		{"inet table of our name", nftables.MonitorEvent{Data: &nftables.Table{Family: nftables.TableFamilyINet, Name: NFTTable}}, false},
		{"another table's rule", nftables.MonitorEvent{Data: &nftables.Rule{Table: &nftables.Table{Family: nftables.TableFamilyIPv4, Name: "other"}}}, false},
		{"a set", nftables.MonitorEvent{Data: &nftables.Set{Table: ours}}, false},
		{"unparsed", nftables.MonitorEvent{}, false},
		{"unparsed rule", nftables.MonitorEvent{Data: (*nftables.Rule)(nil)}, false},
		{"unparsed chain", nftables.MonitorEvent{Data: (*nftables.Chain)(nil)}, false},
		{"unparsed table", nftables.MonitorEvent{Data: (*nftables.Table)(nil)}, false},
	}
	for _, tt := range tests {
		if got := isMasqueradeChange(&tt.ev); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestIsForwardChange(t *testing.T) {
	filter := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: "filter"}
	forward := &nftables.Chain{Table: filter, Name: "FORWARD"}
	tests := []struct {
		name string
		ev   nftables.MonitorEvent
		want bool
	}{
		{"FORWARD's policy", nftables.MonitorEvent{Data: forward}, true},
		{"a rule in FORWARD", nftables.MonitorEvent{Data: &nftables.Rule{Table: filter, Chain: forward}}, true},
		{"the filter table", nftables.MonitorEvent{Data: filter}, true},
		{"INPUT's policy", nftables.MonitorEvent{Data: &nftables.Chain{Table: filter, Name: "INPUT"}}, false},
		{"a rule in DOCKER", nftables.MonitorEvent{Data: &nftables.Rule{Table: filter, Chain: &nftables.Chain{Table: filter, Name: "DOCKER"}}}, false},
		{"ip6 filter's FORWARD", nftables.MonitorEvent{Data: &nftables.Chain{Table: &nftables.Table{Family: nftables.TableFamilyIPv6, Name: "filter"}, Name: "FORWARD"}}, false},
		{"our masquerade", nftables.MonitorEvent{Data: &nftables.Table{Family: nftables.TableFamilyIPv4, Name: NFTTable}}, false},
		{"a rule without its chain", nftables.MonitorEvent{Data: &nftables.Rule{Table: filter}}, false},
		{"unparsed", nftables.MonitorEvent{}, false},
		{"unparsed chain", nftables.MonitorEvent{Data: (*nftables.Chain)(nil)}, false},
		{"unparsed rule", nftables.MonitorEvent{Data: (*nftables.Rule)(nil)}, false},
	}
	for _, tt := range tests {
		if got := isForwardChange(&tt.ev); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}
