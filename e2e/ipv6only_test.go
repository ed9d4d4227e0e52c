package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// ipv6OnlyPool is the pool of the IPv6-only lab scenarios.
const ipv6OnlyPool = "fd00:10:244::/48"

// startIPv6Only makes every host of l IPv6-only (lab.Host.MakeIPv6Only),
// gives the outside host its IPv6 address, starts the agents with the IPv6
// pool and waits for the mesh. It returns the outside host's address.
func startIPv6Only(t *testing.T, ctx context.Context, l *lab.Lab) netip.Addr {
	t.Helper()
	outside6, err := l.AddOutsideIP6(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range l.Hosts() {
		if _, err := h.MakeIPv6Only(ctx); err != nil {
			t.Fatal(err)
		}
		if out, err := h.Run(ctx, "ip", "-4", "addr", "show", "dev", "em1"); err != nil || strings.TrimSpace(string(out)) != "" {
			t.Fatalf("%s still has IPv4 on em1 (%v): %s", h.Name, err, out)
		}
	}
	if err := l.StartAgents(ctx, l.Hosts()...); err != nil {
		t.Fatal(err)
	}
	if _, err := lab.WaitMesh(ctx, l.Hosts()); err != nil {
		t.Fatal(err)
	}
	return outside6
}

// TestIPv6OnlyHosts: hosts with only IPv6 on their links and an IPv6
// --pool gossip, run the ledger and route over IPv6 alone. Each holds a
// /64 of the pool (node.json has that one IPv6 block and no IPv4 one),
// routes the others' `<block> via <host IPv6> dev em1 proto 74`, has the
// pool's unreachable route and its block's blackhole. Pods get only an
// IPv6 address, ping each other across hosts, are reached from a host,
// and reach the outside host masqueraded as their host; a pod's host route
// deleted by hand comes back. When one host
// crashes (kill -9, link cut) the others withdraw its route.
func TestIPv6OnlyHosts(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 3, NoAgents: true, AgentArgs: []string{"--pool", ipv6OnlyPool}})
	ctx := timeout(t, 3*time.Minute)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	outside6 := startIPv6Only(t, ctx, l)

	pool := netip.MustParsePrefix(ipv6OnlyPool)
	blocks := map[*lab.Host]netip.Prefix{}
	for _, h := range l.Hosts() {
		st, err := nodestate.Read(h.RunDir())
		if err != nil {
			t.Fatalf("%s: %v", h.Name, err)
		}
		if st.Pool != pool || !pool.Contains(st.Block.Addr()) || st.Block.Bits() != mesh.DefaultBlockBits6 ||
			st.HostIP != h.IP || st.Block6.IsValid() || st.Pool6.IsValid() {
			t.Fatalf("%s: node.json has pool %s block %s host %s, block6 %s pool6 %s; want a /64 of %s at host %s and no second block",
				h.Name, st.Pool, st.Block, st.HostIP, st.Block6, st.Pool6, pool, h.IP)
		}
		for other, b := range blocks {
			if b == st.Block {
				t.Fatalf("%s and %s both hold %s", h.Name, other.Name, b)
			}
		}
		blocks[h] = st.Block
	}
	for _, h := range l.Hosts() {
		for _, want := range []string{"unreachable " + ipv6OnlyPool, "blackhole " + blocks[h].String()} {
			if err := waitRoute6(ctx, h, want); err != nil {
				t.Error(err)
			}
		}
		for _, peer := range l.Hosts() {
			if peer != h {
				if err := waitRoute6(ctx, h, blocks[peer].String()+" via "+peer.IP.String()+" dev em1"); err != nil {
					t.Error(err)
				}
			}
		}
	}

	a := addPods(t, ctx, h1, 1)[0]
	b := addPods(t, ctx, h2, 1)[0]
	c := addPods(t, ctx, h3, 1)[0]
	for _, p := range []*lab.Pod{a, b, c} {
		if len(p.Result.IPs) != 1 || !blocks[p.Host].Contains(p.IP) {
			t.Fatalf("pod %s on %s got %v, want one IPv6 address of %s", p.Name, p.Host.Name, p.Result.IPs, blocks[p.Host])
		}
	}
	for _, ns := range []lab.Namespace{l.Outside, b.Namespace} {
		serveEcho6(t, ns)
	}
	checkReach(t, ctx, []reach{
		{"pod on h1 -> pod on h2", a.Namespace, b.IP, a.IP},
		{"pod on h2 -> pod on h1", b.Namespace, a.IP, netip.Addr{}},
		{"pod on h3 -> pod on h1", c.Namespace, a.IP, netip.Addr{}},
		{"h1 -> pod on h2", h1.Namespace, b.IP, netip.Addr{}},
		{"pod on h1 -> outside (masqueraded)", a.Namespace, outside6, h1.IP},
	})
	if err := a.Check(ctx); err != nil {
		t.Errorf("CHECK of an IPv6-only pod: %v", err)
	}
	// doctor judges an IPv6-only host by its IPv6 settings and probes its
	// peers over IPv6: every check passes.
	waitDoctorPasses(t, h1)
	// A pod's host route deleted by hand is put back by the next pass.
	if out, err := h1.Run(ctx, "ip", "-6", "route", "del", a.IP.String()+"/128"); err != nil {
		t.Fatalf("h1: delete pod %s's route: %v: %s", a.Name, err, out)
	}
	if err := waitRoute6Line(ctx, h1, a.IP.String()+" dev "); err != nil {
		t.Error(err)
	}

	// Crash: h3's agent dies and its link goes; h1 and h2 withdraw its
	// route once gossip and the ICMPv6 probes agree.
	if err := h3.KillAgent(); err != nil {
		t.Fatal(err)
	}
	if err := h3.CutLink(ctx); err != nil {
		t.Fatal(err)
	}
	crashed := time.Now()
	for _, h := range []*lab.Host{h1, h2} {
		err := poll.Until(timeout(t, failureDetectionBound), fmt.Sprintf("%s withdrawing h3's %s", h.Name, blocks[h3]), 100*time.Millisecond, func() error {
			out, err := h.Run(ctx, "ip", "-6", "route", "show", blocks[h3].String())
			if err == nil && strings.Contains(string(out), "via") {
				err = fmt.Errorf("route %q", out)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s withdrew h3's route %v after the crash", h.Name, time.Since(crashed).Round(time.Millisecond))
	}
	if _, err := b.Ping(ctx, a.IP); err != nil {
		t.Errorf("pod on h2 -> pod on h1 after h3 crashed: %v", err)
	}
}

// TestIPv6OnlyFrozenAgent: the keep and withdraw rule holds on an
// IPv6-only cluster, whose data-path probe is ICMPv6. With h2's agent
// frozen, h1 calls it dead but keeps its route while h2's host answers,
// and h2's pod stays reachable; once h2's link is cut too, h1 withdraws
// the route.
func TestIPv6OnlyFrozenAgent(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 3, NoAgents: true, AgentArgs: []string{"--pool", ipv6OnlyPool}})
	ctx := timeout(t, 2*time.Minute)
	h1, h2 := l.Host(1), l.Host(2)
	startIPv6Only(t, ctx, l)
	a := addPods(t, ctx, h1, 1)[0]
	b := addPods(t, ctx, h2, 1)[0]
	st2, err := nodestate.Read(h2.RunDir())
	if err != nil {
		t.Fatal(err)
	}
	route := st2.Block.String() + " via " + h2.IP.String() + " dev em1"
	if err := waitRoute6(ctx, h1, route); err != nil {
		t.Fatal(err)
	}

	freezeKeepsRoute6(t, ctx, h1, h2, route, a, b.IP)

	if err := h2.CutLink(ctx); err != nil {
		t.Fatal(err)
	}
	if err := waitWithdrawn6(timeout(t, failureDetectionBound), h1, st2.Block); err != nil {
		t.Fatalf("h2's link cut: %v", err)
	}
}

// TestIPv6OnlyCrossSubnet: an IPv6-only host on another IPv6 subnet,
// behind a router that knows nothing of the pods, is reached over VXLAN on
// the IPv6 underlay (`<block> via <its VTEP> dev gv.vxlan`, the device's
// local end the host's IPv6 address), while the two hosts sharing a
// subnet route each other directly. Pods ping each other across the
// router both ways, and their MTU leaves room for VXLAN over IPv6 (70
// bytes).
func TestIPv6OnlyCrossSubnet(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 2, Routed: true, Hosts2: 1, NoAgents: true, AgentArgs: []string{"--pool", ipv6OnlyPool}})
	ctx := timeout(t, 2*time.Minute)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	if err := l.AddRouterIP6(ctx); err != nil {
		t.Fatal(err)
	}
	startIPv6Only(t, ctx, l)
	blocks := map[*lab.Host]netip.Prefix{}
	for _, h := range l.Hosts() {
		st, err := nodestate.Read(h.RunDir())
		if err != nil {
			t.Fatal(err)
		}
		if st.MTU != 1500-70 {
			t.Errorf("%s: pod MTU %d, want %d (em1's 1500 less VXLAN over IPv6)", h.Name, st.MTU, 1500-70)
		}
		blocks[h] = st.Block
	}
	vxlan := func(h *lab.Host) string {
		return blocks[h].String() + " via " + blocks[h].Addr().String() + " dev gv.vxlan"
	}
	for h, want := range map[*lab.Host][]string{
		h1: {vxlan(h3), blocks[h2].String() + " via " + h2.IP.String() + " dev em1"},
		h3: {vxlan(h1), vxlan(h2)},
	} {
		for _, w := range want {
			if err := waitRoute6(ctx, h, w); err != nil {
				t.Error(err)
			}
		}
	}
	if out, err := h1.Run(ctx, "ip", "-d", "link", "show", "gv.vxlan"); err != nil || !strings.Contains(string(out), "local "+h1.IP.String()) {
		t.Errorf("h1's gv.vxlan (%v) does not start at its IPv6 address %s:\n%s", err, h1.IP, out)
	}
	if s, err := h1.Status(ctx); err != nil {
		t.Error(err)
	} else if m, ok := s.Member(h3.Name); !ok || m.Path != "vxlan" || m.Route != "programmed" {
		t.Errorf("h1's status of h3: %+v, want programmed over vxlan", m)
	}
	a := addPods(t, ctx, h1, 1)[0]
	c := addPods(t, ctx, h3, 1)[0]
	serveEcho6(t, c.Namespace)
	checkReach(t, ctx, []reach{
		{"pod on h1 -> pod on h3 (other subnet, VXLAN over IPv6)", a.Namespace, c.IP, a.IP},
		{"pod on h3 -> pod on h1", c.Namespace, a.IP, netip.Addr{}},
		{"h1 -> pod on h3", h1.Namespace, c.IP, netip.Addr{}},
	})
	// Full-size segments cross the tunnel: 64 KiB each way in segments
	// of the pod MTU, which would be dropped were it not 70 bytes short
	// of the underlay's.
	conn, err := a.DialEcho(ctx, netip.AddrPortFrom(c.IP, echoPort))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if err := conn.RoundTrip(strings.Repeat("x", 64<<10)); err != nil {
		t.Errorf("64 KiB pod to pod over VXLAN on IPv6: %v", err)
	}
}
