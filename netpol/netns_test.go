package netpol

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/internal/testneeds"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// needRoot skips tests that create namespaces when not run as root, and
// fails them in CI, where a skip would hide that they never ran.
func needRoot(tb testing.TB) {
	tb.Helper()
	testneeds.Root(tb, "creating network namespaces")
}

// testNet is a host namespace that routes between endpoint namespaces, each
// wired to it the way Grapevine wires a pod (a veth, /32 and /128 addresses,
// default via 169.254.1.1 and via fe80::ecee:eeff:feee:eeee with permanent
// neighbour entries), and the NFTKernel of the host namespace. Everything is removed by the test's cleanup.
type testNet struct {
	prefix    string
	host      lab.Namespace
	kernel    *NFTKernel
	endpoints map[netip.Addr]lab.Namespace
	n         int
}

func run(tb testing.TB, args ...string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := lab.Run(ctx, args[0], args[1:]...); err != nil {
		tb.Fatal(err)
	}
}

func (n *testNet) addNamespace(tb testing.TB, name string) lab.Namespace {
	tb.Helper()
	ns := lab.Namespace{Name: n.prefix + name}
	run(tb, "ip", "netns", "add", ns.Name)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := lab.Run(ctx, "ip", "netns", "del", ns.Name); err != nil {
			tb.Errorf("remove namespace %s: %v", ns.Name, err)
		}
	})
	run(tb, "ip", "-n", ns.Name, "link", "set", "lo", "up")
	return ns
}

func newTestNet(tb testing.TB) *testNet {
	tb.Helper()
	needRoot(tb)
	suffix := make([]byte, 3)
	rand.Read(suffix)
	n := &testNet{prefix: "gvnp-" + hex.EncodeToString(suffix) + "-", endpoints: make(map[netip.Addr]lab.Namespace)}
	n.host = n.addNamespace(tb, "host")
	if err := n.host.Do(func() error {
		return errors.Join(
			os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644),
			os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1"), 0o644),
			// No link-local address of the kernel's own on the host
			// veths: it would be tentative (DAD) for a while, and with
			// it the gateway address addEndpoint gives them.
			os.WriteFile("/proc/sys/net/ipv6/conf/default/addr_gen_mode", []byte("1"), 0o644))
	}); err != nil {
		tb.Fatal(err)
	}
	k, err := NewNFTKernelAt(n.host.Path())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { k.Close() })
	n.kernel = k
	return n
}

// addEndpoint adds a namespace with addrs (IPv4 and IPv6) on its eth0,
// routed by the host, that serves TCP echo on ports 80 and 5432 and UDP
// echo on port 53 of each address.
func (n *testNet) addEndpoint(tb testing.TB, name string, addrs ...string) lab.Namespace {
	tb.Helper()
	return n.addEndpointWith(tb, name, true, addrs...)
}

// addEndpointWith is addEndpoint; gatewayNeigh false leaves out the pod's
// permanent neighbour entry for its IPv6 gateway, so that the pod has to
// resolve it by neighbour discovery.
func (n *testNet) addEndpointWith(tb testing.TB, name string, gatewayNeigh bool, addrs ...string) lab.Namespace {
	tb.Helper()
	n.n++
	ns := n.addNamespace(tb, name)
	hostVeth := fmt.Sprintf("gvnp%d", n.n)
	podMAC := fmt.Sprintf("02:00:00:00:00:%02x", n.n)
	run(tb, "ip", "-n", n.host.Name, "link", "add", hostVeth, "address", "ee:ee:ee:ee:ee:ee", "type", "veth",
		"peer", "name", "eth0", "address", podMAC, "netns", ns.Name)
	run(tb, "ip", "-n", n.host.Name, "link", "set", hostVeth, "up")
	run(tb, "ip", "-n", ns.Name, "link", "set", "eth0", "up")
	has4, has6 := false, false
	for _, a := range addrs {
		addr := netip.MustParseAddr(a)
		bits := "/32"
		if addr.Is6() {
			bits = "/128"
			has6 = true
			run(tb, "ip", "-n", ns.Name, "-6", "addr", "add", a+bits, "dev", "eth0", "nodad")
		} else {
			has4 = true
			run(tb, "ip", "-n", ns.Name, "addr", "add", a+bits, "dev", "eth0")
		}
		run(tb, "ip", "-n", n.host.Name, "route", "add", a+bits, "dev", hostVeth)
		run(tb, "ip", "-n", n.host.Name, "neigh", "add", a, "lladdr", podMAC, "dev", hostVeth, "nud", "permanent")
		n.endpoints[addr] = ns
	}
	if has4 {
		run(tb, "ip", "-n", ns.Name, "route", "add", "169.254.1.1/32", "dev", "eth0")
		run(tb, "ip", "-n", ns.Name, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
		run(tb, "ip", "-n", ns.Name, "neigh", "add", "169.254.1.1", "lladdr", "ee:ee:ee:ee:ee:ee", "dev", "eth0", "nud", "permanent")
	}
	if has6 {
		// As the plugin wires it: the host veth holds the gateway's
		// link-local address, which the pod routes through.
		run(tb, "ip", "-n", n.host.Name, "-6", "addr", "add", gateway6+"/64", "dev", hostVeth, "nodad")
		run(tb, "ip", "-n", ns.Name, "-6", "route", "add", "default", "via", gateway6, "dev", "eth0")
		if gatewayNeigh {
			run(tb, "ip", "-n", ns.Name, "-6", "neigh", "add", gateway6, "lladdr", "ee:ee:ee:ee:ee:ee", "dev", "eth0", "nud", "permanent")
		}
	}

	var listenOn []string
	if has4 {
		listenOn = append(listenOn, "0.0.0.0")
	}
	if has6 {
		listenOn = append(listenOn, "[::]")
	}
	for _, host := range listenOn {
		for _, p := range []string{"80", "5432"} {
			ln, err := ns.Listen(host + ":" + p)
			if err != nil {
				tb.Fatal(err)
			}
			tb.Cleanup(func() { ln.Close() })
			go lab.ServeEcho(ln)
		}
	}
	// UDP per address: a socket on 0.0.0.0 would answer from the
	// namespace's first address, which the client does not expect.
	for _, a := range addrs {
		var pc net.PacketConn
		if err := ns.Do(func() (err error) {
			pc, err = net.ListenPacket("udp", netip.AddrPortFrom(netip.MustParseAddr(a), 53).String())
			return err
		}); err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 512)
			for {
				m, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(buf[:m], from)
			}
		}()
	}
	return ns
}

// deniedAfter is how long a connection attempt waits before it counts as
// denied: policy drops, so a denied attempt gets no answer at all.
const deniedAfter = 2 * time.Second

// connects reports whether a new connection (TCP) or a datagram and its
// reply (UDP) get from src to dst:port.
func (n *testNet) connects(c check) (bool, error) {
	src, dst := netip.MustParseAddr(c.src), netip.MustParseAddr(c.dst)
	ns, ok := n.endpoints[src]
	if !ok {
		return false, fmt.Errorf("no endpoint has %s", src)
	}
	target := netip.AddrPortFrom(dst, c.port).String()
	var ok2 bool
	err := ns.Do(func() error {
		switch c.proto {
		case ProtocolTCP:
			d := net.Dialer{Timeout: deniedAfter, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
			conn, err := d.Dial("tcp", target)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					return nil
				}
				return err
			}
			conn.Close()
			ok2 = true
		case ProtocolUDP:
			conn, err := net.DialUDP("udp", &net.UDPAddr{IP: src.AsSlice()}, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, c.port)))
			if err != nil {
				return err
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(deniedAfter))
			if _, err := conn.Write([]byte("ping")); err != nil {
				return err
			}
			buf := make([]byte, 16)
			if _, err := conn.Read(buf); err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					return nil
				}
				return err
			}
			ok2 = true
		default:
			return fmt.Errorf("protocol %d", c.proto)
		}
		return nil
	})
	return ok2, err
}

// expect checks every connection at once against want and against the
// model (Ruleset.Allows) of rs, the ruleset in force.
func (n *testNet) expect(t *testing.T, rs Ruleset, checks []check) {
	t.Helper()
	var wg sync.WaitGroup
	got := make([]bool, len(checks))
	errs := make([]error, len(checks))
	for i, c := range checks {
		wg.Go(func() { got[i], errs[i] = n.connects(c) })
	}
	wg.Wait()
	for i, c := range checks {
		if errs[i] != nil {
			t.Errorf("%s -> %s:%d: %v", c.src, c.dst, c.port, errs[i])
			continue
		}
		if got[i] != c.allowed {
			t.Errorf("%s -> %s proto %d port %d: kernel allowed %v, want %v", c.src, c.dst, c.proto, c.port, got[i], c.allowed)
		}
		if model := rs.Allows(c.packet()); model != c.allowed {
			t.Errorf("%s -> %s proto %d port %d: model allows %v, want %v", c.src, c.dst, c.proto, c.port, model, c.allowed)
		}
	}
}

func udp(src, dst string, port uint16, allowed bool) check {
	return check{src, dst, ProtocolUDP, port, allowed}
}

const dnsServer = "192.168.7.53"

// netnsCluster is the Input matching newPolicyNet's endpoints: web and db
// (namespace default) are this node's pods, client (namespace prod) a pod of
// another node, and outside addresses are no pods at all.
func netnsCluster() Input {
	return Input{
		NodeName: localNode,
		Namespaces: []*corev1.Namespace{
			namespace("default", nil),
			namespace("prod", map[string]string{"env": "prod"}),
		},
		Pods: []*corev1.Pod{
			pod("default", "web", web, localNode, map[string]string{"app": "web"}, "http:80/TCP"),
			pod("default", "db", db, localNode, map[string]string{"app": "db"}),
			pod("prod", "client", prodClient, "n2", map[string]string{"app": "client"}),
		},
	}
}

func newPolicyNet(t *testing.T) *testNet {
	n := newTestNet(t)
	n.addEndpoint(t, "web", web)
	n.addEndpoint(t, "db", db)
	n.addEndpoint(t, "client", prodClient)
	n.addEndpoint(t, "outside", outside, outside2, dnsServer)
	return n
}

func (n *testNet) apply(t *testing.T, policies ...*networkingv1.NetworkPolicy) Ruleset {
	t.Helper()
	in := netnsCluster()
	in.Policies = policies
	rs, problems := Compile(in)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	if err := n.kernel.Apply(rs); err != nil {
		t.Fatal(err)
	}
	return rs
}

func TestKernelEnforces(t *testing.T) {
	n := newPolicyNet(t)
	deny := policy("default", "deny", all, nil, nil, nil)
	tests := []struct {
		name     string
		policies []*networkingv1.NetworkPolicy
		checks   []check
	}{
		{
			name: "no policy",
			checks: []check{
				tcp(prodClient, web, 80, true), tcp(outside, db, 5432, true), udp(web, dnsServer, 53, true), tcp(web, prodClient, 80, true),
			},
		},
		{
			name:     "default deny",
			policies: []*networkingv1.NetworkPolicy{deny},
			checks: []check{
				tcp(prodClient, web, 80, false), tcp(outside, db, 5432, false), tcp(db, web, 80, false),
				tcp(web, prodClient, 80, true), // egress stays open, and its replies come back
			},
		},
		{
			name: "allow from namespace",
			policies: []*networkingv1.NetworkPolicy{deny, policy("default", "from-prod", sel("app", "web"), nil,
				[]networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{fromNamespaces(sel("env", "prod"))}}}, nil)},
			checks: []check{
				tcp(prodClient, web, 80, true), tcp(prodClient, web, 5432, true),
				tcp(prodClient, db, 5432, false), tcp(outside2, web, 80, false), tcp(db, web, 80, false),
			},
		},
		{
			name: "ipBlock with except, and a named port",
			policies: []*networkingv1.NetworkPolicy{deny, policy("default", "block", all, nil,
				[]networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{fromBlock("192.168.0.0/16", "192.168.5.0/24")},
					Ports: []networkingv1.NetworkPolicyPort{port("", "http")},
				}}, nil)},
			checks: []check{
				tcp(outside2, web, 80, true), tcp(outside2, web, 5432, false), tcp(outside, web, 80, false),
				tcp(prodClient, web, 80, false), tcp(outside2, db, 80, false), // db has no port named http
			},
		},
		{
			name: "ipBlock reaching the top of the address space",
			policies: []*networkingv1.NetworkPolicy{policy("default", "world", all, nil,
				[]networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{fromBlock("0.0.0.0/0", "192.168.5.0/24", "10.0.0.0/8")}}}, nil)},
			checks: []check{tcp(outside2, web, 80, true), tcp(outside, web, 80, false), tcp(prodClient, db, 5432, false)},
		},
		{
			name: "egress to DNS only",
			policies: []*networkingv1.NetworkPolicy{policy("default", "dns-only", all, egressOnly, nil,
				[]networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{
					port(corev1.ProtocolUDP, 53), port(corev1.ProtocolTCP, 53),
				}}})},
			checks: []check{
				udp(web, dnsServer, 53, true), tcp(web, dnsServer, 80, false), tcp(web, prodClient, 80, false),
				udp(db, prodClient, 53, true), tcp(db, web, 80, false),
				tcp(prodClient, web, 80, true), // ingress is not isolated
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := n.apply(t, tt.policies...)
			n.expect(t, rs, tt.checks)
		})
	}
}

// TestKernelPolicyWhileTrafficFlows: a connection allowed when it started
// keeps working after a policy that denies it arrives; a new one is denied.
func TestKernelPolicyWhileTrafficFlows(t *testing.T) {
	n := newPolicyNet(t)
	n.apply(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := n.endpoints[netip.MustParseAddr(prodClient)].DialEcho(ctx, netip.MustParseAddrPort(web+":80"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.RoundTrip("before"); err != nil {
		t.Fatal(err)
	}
	rs := n.apply(t, policy("default", "deny", all, nil, nil, nil))
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if err := conn.RoundTrip("after"); err != nil {
		t.Errorf("the established connection broke when the policy came: %v", err)
	}
	n.expect(t, rs, []check{tcp(prodClient, web, 80, false)})
}

// TestKernelOwnsOnlyItsTable: Apply replaces its table's content and Remove
// deletes it; other tables stay as they were.
func TestKernelOwnsOnlyItsTable(t *testing.T) {
	n := newTestNet(t)
	fd, err := os.Open(n.host.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(fd.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	other := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "grapevine"})
	chain := conn.AddChain(&nftables.Chain{Name: "out", Table: other, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter})
	conn.AddRule(&nftables.Rule{Table: other, Chain: chain, Exprs: []expr.Any{&expr.Counter{}}})
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	tables := func() map[string]int {
		got := map[string]int{}
		ts, err := conn.ListTables()
		if err != nil {
			t.Fatal(err)
		}
		for _, tb := range ts {
			chains, err := conn.ListChainsOfTableFamily(tb.Family)
			if err != nil {
				t.Fatal(err)
			}
			key := strconv.Itoa(int(tb.Family)) + " " + tb.Name
			for _, c := range chains {
				if c.Table.Name == tb.Name {
					got[key]++
				}
			}
		}
		return got
	}

	in := scaleInput(40, 6, 3, false)
	rs, _ := Compile(in)
	for range 2 { // the second replaces the first
		if err := n.kernel.Apply(rs); err != nil {
			t.Fatal(err)
		}
	}
	got := tables()
	inet := strconv.Itoa(int(nftables.TableFamilyINet)) + " " + TableName
	ip := strconv.Itoa(int(nftables.TableFamilyIPv4)) + " grapevine"
	if got[inet] != len(rs.Chains)+2 || got[ip] != 1 || len(got) != 2 {
		t.Errorf("tables and their chain counts after Apply: %v, want %s with %d and %s with 1", got, inet, len(rs.Chains)+2, ip)
	}
	sets, err := conn.GetSets(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName})
	if err != nil {
		t.Fatal(err)
	}
	// The policies' sets, one per family each has addresses of, and the
	// two verdict maps and unknown-pods, each once per family.
	want := 6
	for _, s := range rs.Sets {
		for _, v6 := range []bool{false, true} {
			if len(ofFamily(s.Ranges, v6)) > 0 {
				want++
			}
		}
	}
	if len(sets) != want {
		t.Errorf("%d sets and maps, want %d", len(sets), want)
	}

	if err := n.kernel.Apply(Ruleset{}); err != nil {
		t.Fatal(err)
	}
	if got := tables(); got[inet] != 2 {
		t.Errorf("after applying an empty ruleset: %v, want only the 2 base chains in %s", got, inet)
	}
	for range 2 { // removing a missing table is no error
		if err := n.kernel.Remove(); err != nil {
			t.Fatal(err)
		}
	}
	if got := tables(); len(got) != 1 || got[ip] != 1 {
		t.Errorf("after Remove: %v, want only %s", got, ip)
	}
}

// BenchmarkCompileApply1000Pods200Policies compiles and applies, in one
// transaction, 1,000 pods of this node under 200 policies (issue goal:
// under 200 ms).
func BenchmarkCompileApply1000Pods200Policies(b *testing.B) {
	n := newTestNet(b)
	in := scaleInput(1000, 200, 10, true)
	var rs Ruleset
	for b.Loop() {
		var problems []error
		if rs, problems = Compile(in); len(problems) > 0 {
			b.Fatal(problems)
		}
		if err := n.kernel.Apply(rs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/op")
	// The transaction's size, to compare runs by.
	rules, elements := 0, len(rs.Ingress)+len(rs.Egress)
	for _, c := range rs.Chains {
		rules += len(c.Rules)
	}
	for _, s := range rs.Sets {
		elements += len(s.Ranges)
	}
	b.ReportMetric(float64(rules), "rules")
	b.ReportMetric(float64(elements), "elements")
}

// BenchmarkCompileApply1000Pods200PoliciesDualStack is
// BenchmarkCompileApply1000Pods200Policies with an IPv6 address on every
// pod: twice the map elements and set ranges, and each rule once per family.
func BenchmarkCompileApply1000Pods200PoliciesDualStack(b *testing.B) {
	n := newTestNet(b)
	in := withIPv6(scaleInput(1000, 200, 10, true))
	for b.Loop() {
		rs, problems := Compile(in)
		if len(problems) > 0 {
			b.Fatal(problems)
		}
		if err := n.kernel.Apply(rs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/op")
}

// TestKernelDeniesUnknownLocalAddressesAndCountsDrops: an address of the
// node's block that no known pod holds gets no new connection either way,
// and Drops counts those packets apart from the ones policies drop.
func TestKernelDeniesUnknownLocalAddressesAndCountsDrops(t *testing.T) {
	n := newPolicyNet(t)
	const stranger = "10.0.0.99"
	n.addEndpoint(t, "stranger", stranger)
	in := netnsCluster()
	in.Blocks = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}
	in.Policies = []*networkingv1.NetworkPolicy{policy("default", "deny-db", sel("app", "db"), nil, nil, nil)}
	rs, problems := Compile(in)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	if err := n.kernel.Apply(rs); err != nil {
		t.Fatal(err)
	}
	n.expect(t, rs, []check{
		tcp(stranger, outside, 80, false), tcp(outside, stranger, 80, false), tcp(web, stranger, 80, false),
		tcp(web, outside, 80, true), tcp(prodClient, web, 80, true), tcp(prodClient, db, 80, false),
	})
	drops, err := n.kernel.Drops()
	if err != nil {
		t.Fatal(err)
	}
	if drops.UnknownPackets == 0 || drops.PolicyPackets == 0 {
		t.Errorf("drops %+v: want both unknown-address and policy drops counted", drops)
	}
}

// netnsDualStackCluster is netnsCluster with the IPv6 addresses
// newDualStackNet gives its endpoints, a local IPv6-only pod only6 (which
// resolves its gateway by neighbour discovery), and both of this node's
// blocks.
func netnsDualStackCluster() Input {
	return addIPv6(netnsCluster(), map[string]string{web: web6, db: db6, prodClient: prodClient6})
}

// newDualStackNet is newPolicyNet with IPv6 addresses on web, db, client
// and outside, the IPv6-only pod only6 without a permanent neighbour entry
// for its gateway, and stranger6, an address of block6 no pod holds.
func newDualStackNet(t *testing.T) *testNet {
	n := newTestNet(t)
	n.addEndpoint(t, "web", web, web6)
	n.addEndpoint(t, "db", db, db6)
	n.addEndpoint(t, "client", prodClient, prodClient6)
	n.addEndpoint(t, "outside", outside, outside2, dnsServer, outside6, outside6b)
	n.addEndpointWith(t, "only6", false, only6)
	n.addEndpoint(t, "stranger6", unknown6)
	return n
}

// TestKernelEnforcesIPv6: the kernel enforces policies on the IPv6
// addresses of dual-stack and IPv6-only pods as on their IPv4 ones, as the
// model says, with the node's IPv6 block's unknown addresses denied and
// neighbour discovery working under a default deny.
func TestKernelEnforcesIPv6(t *testing.T) {
	n := newDualStackNet(t)
	deny := policy("default", "deny", all, nil, nil, nil)
	tests := []struct {
		name     string
		policies []*networkingv1.NetworkPolicy
		checks   []check
	}{
		{
			name: "no policy: only the unknown address is denied",
			checks: []check{
				tcp(prodClient6, web6, 80, true), tcp(outside6, only6, 80, true), udp(db6, outside6, 53, true),
				tcp(unknown6, outside6, 80, false), tcp(outside6, unknown6, 80, false), tcp(web6, unknown6, 80, false),
			},
		},
		{
			name:     "default deny",
			policies: []*networkingv1.NetworkPolicy{deny},
			checks: []check{
				tcp(prodClient6, web6, 80, false), tcp(outside6, db6, 5432, false), tcp(db6, web6, 80, false),
				tcp(outside6, only6, 80, false), tcp(prodClient, web, 80, false),
				tcp(web6, prodClient6, 80, true), tcp(only6, outside6, 80, true), // egress stays open
			},
		},
		{
			name: "allow from namespace",
			policies: []*networkingv1.NetworkPolicy{deny, policy("default", "from-prod", sel("app", "web"), nil,
				[]networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{fromNamespaces(sel("env", "prod"))}}}, nil)},
			checks: []check{
				tcp(prodClient6, web6, 80, true), tcp(prodClient6, only6, 5432, true), tcp(prodClient, web, 80, true),
				tcp(prodClient6, db6, 5432, false), tcp(outside6b, web6, 80, false),
			},
		},
		{
			name: "IPv6 ipBlock with except, and a named port",
			policies: []*networkingv1.NetworkPolicy{deny, policy("default", "block6", all, nil,
				[]networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{fromBlock("2001:db8::/32", "2001:db8::/48")},
					Ports: []networkingv1.NetworkPolicyPort{port("", "http")},
				}}, nil)},
			checks: []check{
				tcp(outside6b, web6, 80, true), tcp(outside6b, only6, 80, true), tcp(outside6b, web6, 5432, false),
				tcp(outside6, web6, 80, false), tcp(outside6b, db6, 80, false), tcp(outside2, web, 80, false),
			},
		},
		{
			name: "egress to DNS only",
			policies: []*networkingv1.NetworkPolicy{policy("default", "dns-only", all, egressOnly, nil,
				[]networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolUDP, 53)}}})},
			checks: []check{
				udp(web6, outside6, 53, true), tcp(web6, outside6, 80, false), tcp(only6, prodClient6, 80, false),
				udp(web, dnsServer, 53, true), tcp(prodClient6, web6, 80, true),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := netnsDualStackCluster()
			in.Policies = tt.policies
			rs, problems := Compile(in)
			if len(problems) > 0 {
				t.Fatal(problems)
			}
			if err := n.kernel.Apply(rs); err != nil {
				t.Fatal(err)
			}
			n.expect(t, rs, tt.checks)
		})
	}
	// only6 reached its gateway with neighbour discovery through all of
	// the above, default deny included.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := lab.Run(ctx, "ip", "-n", n.prefix+"only6", "-6", "neigh", "show", gateway6, "dev", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "lladdr ee:ee:ee:ee:ee:ee") || strings.Contains(string(out), "PERMANENT") {
		t.Errorf("only6's neighbour entry for its gateway %q, want one resolved by neighbour discovery", out)
	}
}
