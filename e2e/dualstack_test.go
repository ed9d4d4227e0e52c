package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/node/nodestate"
	"github.com/grapevine-net/grapevine/status"
)

// TestDualStackBlocks: with --pool6 every agent hands its pods an IPv6 block
// that follows from the IPv4 block the ledger gave it (no second ledger
// entry), distinct per host; pods get an address from each block, reach
// each other on one host over IPv6, and reach pods on other hosts over
// IPv4 and, the hosts having no IPv6 underlay, over IPv6 through VXLAN.
// The IPv6 pool has its unreachable route and the own IPv6 block its
// blackhole.
func TestDualStackBlocks(t *testing.T) {
	t.Parallel()
	const pool6 = "fd00:10:244::/48"
	l := env.Lab(t, labtest.Options{Hosts: 2, AgentArgs: []string{"--pool6", pool6}})
	ctx := timeout(t, 2*time.Minute)
	h1, h2 := l.Host(1), l.Host(2)

	blocks6 := make(map[string]netip.Prefix)
	for _, h := range l.Hosts() {
		st, err := nodestate.Read(h.RunDir())
		if err != nil {
			t.Fatalf("%s: %v", h.Name, err)
		}
		want, err := mesh.Block6(st.Pool, st.Block, netip.MustParsePrefix(pool6), mesh.DefaultBlockBits6)
		if err != nil || st.Block6 != want || st.Pool6.String() != pool6 {
			t.Fatalf("%s: node.json has block %s, block6 %s, pool6 %s; want block6 %s (%v), pool6 %s", h.Name, st.Block, st.Block6, st.Pool6, want, err, pool6)
		}
		for other, b := range blocks6 {
			if b == st.Block6 {
				t.Errorf("%s and %s both hold IPv6 block %s", h.Name, other, b)
			}
		}
		blocks6[h.Name] = st.Block6
		out, err := h.Run(ctx, "ip", "-6", "route", "show", "proto", "74")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"unreachable " + pool6, "blackhole " + st.Block6.String()} {
			if !strings.Contains(string(out), want) {
				t.Errorf("%s: ip -6 route shows %q, want %q", h.Name, out, want)
			}
		}
	}

	a := addPods(t, ctx, h1, 2)
	b := addPods(t, ctx, h2, 1)[0]
	for _, p := range append(a, b) {
		if !blocks6[p.Host.Name].Contains(p.IP6) {
			t.Fatalf("pod %s on %s got IPv6 address %v, want one from %s", p.Name, p.Host.Name, p.IP6, blocks6[p.Host.Name])
		}
	}
	if _, err := a[0].Ping(ctx, a[1].IP6); err != nil {
		t.Errorf("pod -> pod on one host over IPv6: %v", err)
	}
	if _, err := b.Ping(ctx, a[0].IP); err != nil {
		t.Errorf("pod on h2 -> pod on h1 over IPv4: %v", err)
	}
	// Without an IPv6 underlay the hosts reach each other's IPv6 blocks
	// over VXLAN on the IPv4 one.
	if _, err := b.Ping(ctx, a[0].IP6); err != nil {
		t.Errorf("pod on h2 -> pod on h1 over IPv6 (VXLAN): %v", err)
	}
	out, err := h1.Run(ctx, "ip", "-6", "route", "get", b.IP6.String())
	if err != nil || !strings.Contains(string(out), "dev gv.vxlan") {
		t.Errorf("h1: ip -6 route get %s (a pod on h2) = %q, %v; want it over gv.vxlan", b.IP6, out, err)
	}
	if err := a[1].Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a[0].Check(ctx); err != nil {
		t.Errorf("CHECK of a dual-stack pod: %v", err)
	}
}

// TestDualStackAcrossHosts: hosts with IPv6 addresses on their shared
// network advertise them in gossip and route each other's IPv6 blocks
// `<block6> via <host IPv6> dev em1 proto 74`; dual-stack pods on two hosts
// ping each other over IPv6 (and still over IPv4), and a host reaches a
// remote pod over IPv6. A host without an IPv6 address there is reached
// over VXLAN on the IPv4 underlay for IPv6, and reaches the others so.
func TestDualStackAcrossHosts(t *testing.T) {
	t.Parallel()
	const pool6 = "fd00:10:244::/48"
	l := env.Lab(t, labtest.Options{Hosts: 3, NoAgents: true, AgentArgs: []string{"--pool6", pool6}})
	ctx := timeout(t, 2*time.Minute)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	// h1 and h2 get an IPv6 underlay; h3 stays IPv4-only.
	host6 := startWithIPv6Underlay(t, ctx, l, h1, h2)
	blocks6 := map[string]netip.Prefix{}
	for _, h := range l.Hosts() {
		st, err := nodestate.Read(h.RunDir())
		if err != nil {
			t.Fatal(err)
		}
		blocks6[h.Name] = st.Block6
	}
	a := addPods(t, ctx, h1, 1)[0]
	b := addPods(t, ctx, h2, 1)[0]
	c := addPods(t, ctx, h3, 1)[0]

	// The IPv6 routes follow gossip: wait for each, not a fixed time.
	want1 := blocks6["h2"].String() + " via " + host6[h2].String() + " dev em1"
	want2 := blocks6["h1"].String() + " via " + host6[h1].String() + " dev em1"
	for h, want := range map[*lab.Host]string{h1: want1, h2: want2} {
		if err := waitRoute6(ctx, h, want); err != nil {
			t.Fatal(err)
		}
	}
	checkReach(t, ctx, []reach{
		{"pod on h1 -> pod on h2 over IPv6", a.Namespace, b.IP6, netip.Addr{}},
		{"pod on h2 -> pod on h1 over IPv6", b.Namespace, a.IP6, netip.Addr{}},
		{"h1 -> pod on h2 over IPv6", h1.Namespace, b.IP6, netip.Addr{}},
		{"pod on h1 -> pod on h2 over IPv4", a.Namespace, b.IP, netip.Addr{}},
		{"pod on h3 -> pod on h1 over IPv4", c.Namespace, a.IP, netip.Addr{}},
	})
	// h3 has no IPv6 underlay: its IPv6 block and the others' go over
	// VXLAN on the IPv4 underlay between it and each of them (the IPv4
	// routes stay direct), and its pods are reached over IPv6.
	vxlanRoute := func(b netip.Prefix) string {
		return b.String() + " via " + b.Addr().String() + " dev gv.vxlan"
	}
	for h, want := range map[*lab.Host][]string{
		h1: {vxlanRoute(blocks6["h3"])},
		h2: {vxlanRoute(blocks6["h3"])},
		h3: {vxlanRoute(blocks6["h1"]), vxlanRoute(blocks6["h2"])},
	} {
		for _, w := range want {
			if err := waitRoute6(ctx, h, w); err != nil {
				t.Error(err)
			}
		}
	}
	checkReach(t, ctx, []reach{
		{"pod on h3 -> pod on h1 over IPv6 (VXLAN)", c.Namespace, a.IP6, netip.Addr{}},
		{"pod on h2 -> pod on h3 over IPv6 (VXLAN)", b.Namespace, c.IP6, netip.Addr{}},
		{"h1 -> pod on h3 over IPv6 (VXLAN)", h1.Namespace, c.IP6, netip.Addr{}},
	})

	// A peer's IPv6 route and a pod's IPv6 host route, deleted by hand,
	// are put back by the next pass, as the IPv4 ones are.
	if out, err := h1.Run(ctx, "ip", "-6", "route", "del", blocks6["h2"].String()); err != nil {
		t.Fatalf("h1: delete the IPv6 route to h2: %v: %s", err, out)
	}
	if err := waitRoute6(ctx, h1, want1); err != nil {
		t.Error(err)
	}
	if out, err := h1.Run(ctx, "ip", "-6", "route", "del", a.IP6.String()+"/128"); err != nil {
		t.Fatalf("h1: delete pod %s's IPv6 route: %v: %s", a.Name, err, out)
	}
	if err := waitRoute6Line(ctx, h1, a.IP6.String()+" dev "); err != nil {
		t.Error(err)
	}
	if _, err := b.Ping(ctx, a.IP6); err != nil {
		t.Errorf("pod on h2 -> pod on h1 over IPv6 after the repairs: %v", err)
	}

	// h1's status shows both blocks and each peer's IPv6 path with its
	// reason; its metrics count the IPv6 route by family.
	want := map[string]status.Member{
		"h2": {Block6: blocks6["h2"].String(), HostIP6: host6[h2].String(), Path6: "direct"},
		"h3": {Block6: blocks6["h3"].String(), Path6: "vxlan"},
	}
	st, err := waitStatus6(ctx, h1, func(st status.Report) bool {
		for _, m := range st.Members {
			if w, ok := want[m.Name]; ok && (m.Block6 != w.Block6 || m.HostIP6 != w.HostIP6 || m.Path6 != w.Path6 || m.Path6Reason == "") {
				return false
			}
		}
		return st.Block6 == blocks6["h1"].String() && len(st.Members) == 2
	})
	if err != nil {
		t.Error(err)
	}
	t.Logf("h1's IPv6 status: %+v", st)
	if text, err := h1.StatusText(ctx, "table"); err != nil || !strings.Contains(string(text), "IPV6 PATH") ||
		!strings.Contains(string(text), "block6 "+blocks6["h1"].String()) {
		t.Errorf("h1's status table lacks the IPv6 block or paths (%v):\n%s", err, text)
	}
	if code, body, err := h1.Get(ctx, "/metrics"); err != nil || code != 200 ||
		!strings.Contains(body, `grapevine_node_peers{family="ipv6",path="direct"} 1`) ||
		!strings.Contains(body, `grapevine_node_peers{family="ipv6",path="vxlan"} 1`) {
		t.Errorf("h1's metrics do not count one direct and one VXLAN IPv6 peer: %v %d", err, code)
	}
}

// startWithIPv6Underlay gives each of hosts an IPv6 address on the lab
// LAN, then starts every host's agent (with the ExtraArgs set so far) and
// waits for the mesh. It returns the hosts' IPv6 addresses.
func startWithIPv6Underlay(t *testing.T, ctx context.Context, l *lab.Lab, hosts ...*lab.Host) map[*lab.Host]netip.Addr {
	t.Helper()
	host6 := make(map[*lab.Host]netip.Addr, len(hosts))
	for _, h := range hosts {
		a, err := h.AddIP6(ctx)
		if err != nil {
			t.Fatal(err)
		}
		host6[h] = a
	}
	if err := l.StartAgents(ctx, l.Hosts()...); err != nil {
		t.Fatal(err)
	}
	if _, err := lab.WaitMesh(ctx, l.Hosts()); err != nil {
		t.Fatal(err)
	}
	return host6
}

// waitStatus6 waits until h's status satisfies cond.
func waitStatus6(ctx context.Context, h *lab.Host, cond func(status.Report) bool) (status.Report, error) {
	var st status.Report
	err := poll.Until(ctx, h.Name+"'s IPv6 status as wanted", 100*time.Millisecond, func() error {
		st = status.Report{}
		out, err := h.StatusText(ctx, "json")
		if err == nil {
			err = json.Unmarshal(out, &st)
		}
		if err == nil && !cond(st) {
			err = fmt.Errorf("status %s", out)
		}
		return err
	})
	return st, err
}

// TestDualStackEgress: a pod's IPv6 traffic to the outside host leaves
// masqueraded as its host's IPv6 address, like its IPv4 traffic; IPv6
// traffic between pods on two hosts keeps the pods' addresses; with
// --masquerade=false the outside host sees the pod's own address.
func TestDualStackEgress(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 2, NoAgents: true, AgentArgs: []string{"--pool6", "fd00:10:244::/48"}})
	ctx := timeout(t, 2*time.Minute)
	h1, h2 := l.Host(1), l.Host(2)
	outside6, err := l.AddOutsideIP6(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h2.ExtraArgs = append(h2.ExtraArgs, "--masquerade=false")
	host6 := startWithIPv6Underlay(t, ctx, l, l.Hosts()...)
	a := addPods(t, ctx, h1, 1)[0]
	b := addPods(t, ctx, h2, 1)[0]
	for _, ns := range []lab.Namespace{l.Outside, b.Namespace} {
		serveEcho(t, ns)
		serveEcho6(t, ns)
	}
	st2, err := nodestate.Read(h2.RunDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := waitRoute6(ctx, h1, st2.Block6.String()+" via "+host6[h2].String()); err != nil {
		t.Fatal(err)
	}
	// The outside host answers h2's unmasqueraded pod through h2, as a
	// router of the pods' network would.
	if out, err := l.Outside.Run(ctx, "ip", "-6", "route", "add", st2.Block6.String(), "via", host6[h2].String()); err != nil {
		t.Fatalf("outside host's route to h2's pods: %v: %s", err, out)
	}

	checkReach(t, ctx, []reach{
		{"pod on h1 -> outside over IPv6 (masqueraded)", a.Namespace, outside6, host6[h1]},
		{"pod on h1 -> outside over IPv4 (masqueraded)", a.Namespace, l.OutsideIP(), h1.IP},
		{"pod on h1 -> pod on h2 over IPv6 (untranslated)", a.Namespace, b.IP6, a.IP6},
		{"pod on h2 -> outside over IPv6, masquerade off", b.Namespace, outside6, b.IP6},
	})

}

// waitRoute6Line waits until h's IPv6 main table has a route (of any
// protocol) starting with want.
func waitRoute6Line(ctx context.Context, h *lab.Host, want string) error {
	return poll.Until(ctx, fmt.Sprintf("%s: an IPv6 route %q", h.Name, want), 100*time.Millisecond, func() error {
		out, err := h.Run(ctx, "ip", "-6", "route", "show")
		if err == nil && !strings.Contains(string(out), want) {
			err = fmt.Errorf("routes %q", out)
		}
		return err
	})
}

// waitRoute6 waits until h's IPv6 table has a proto 74 route starting with
// want.
func waitRoute6(ctx context.Context, h *lab.Host, want string) error {
	return poll.Until(ctx, fmt.Sprintf("%s: an IPv6 route %q", h.Name, want), 100*time.Millisecond, func() error {
		out, err := h.Run(ctx, "ip", "-6", "route", "show", "proto", "74")
		if err == nil && !strings.Contains(string(out), want) {
			err = fmt.Errorf("routes %q", out)
		}
		return err
	})
}

// freezeKeepsRoute6 freezes h2's agent and checks the keep rule from h1:
// h1 calls h2 dead but keeps route6, `<block> via <h2's IPv6> dev em1`,
// because h2's host answers ICMPv6, and from still reaches to on h2.
func freezeKeepsRoute6(t *testing.T, ctx context.Context, h1, h2 *lab.Host, route6 string, from *lab.Pod, to netip.Addr) {
	t.Helper()
	if err := h2.FreezeAgent(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h2.ThawAgent() })
	if _, err := h1.WaitStatus(timeout(t, failureDetectionBound), "h2 dead, kept by its data path", func(s lab.Status) bool {
		m, ok := s.Member(h2.Name)
		return ok && m.State == "dead" && m.Route == "programmed" && slices.Equal(m.KeptBy, []string{"data path"})
	}); err != nil {
		t.Fatal(err)
	}
	if err := waitRoute6(ctx, h1, route6); err != nil {
		t.Errorf("h2 dead but answering ICMPv6: %v", err)
	}
	if _, err := from.Ping(ctx, to); err != nil {
		t.Errorf("pod on h1 -> pod on h2 (agent frozen) over IPv6: %v", err)
	}
}

// waitWithdrawn6 waits until h routes block nowhere.
func waitWithdrawn6(ctx context.Context, h *lab.Host, block netip.Prefix) error {
	return poll.Until(ctx, h.Name+" withdrawing its route to "+block.String(), 100*time.Millisecond, func() error {
		out, err := h.Run(ctx, "ip", "-6", "route", "show", block.String())
		if err == nil && strings.Contains(string(out), "via") {
			err = fmt.Errorf("route %q", out)
		}
		return err
	})
}

// TestDualStackFrozenAgent: the keep and withdraw rule holds for the direct
// IPv6 route on its own data path. With h2's agent frozen, h1 calls it dead
// but keeps both its routes while h2's host answers ICMP and ICMPv6, and
// its pod stays reachable over IPv6; once h2's IPv6 address is gone (the
// agent still frozen) h1 withdraws the IPv6 route and keeps the IPv4 one.
func TestDualStackFrozenAgent(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 3, NoAgents: true, AgentArgs: []string{"--pool6", "fd00:10:244::/48"}})
	ctx := timeout(t, 2*time.Minute)
	h1, h2 := l.Host(1), l.Host(2)
	host6 := startWithIPv6Underlay(t, ctx, l, l.Hosts()...)
	a := addPods(t, ctx, h1, 1)[0]
	b := addPods(t, ctx, h2, 1)[0]
	st2, err := nodestate.Read(h2.RunDir())
	if err != nil {
		t.Fatal(err)
	}
	route6 := st2.Block6.String() + " via " + host6[h2].String() + " dev em1"
	if err := waitRoute6(ctx, h1, route6); err != nil {
		t.Fatal(err)
	}

	freezeKeepsRoute6(t, ctx, h1, h2, route6, a, b.IP6)

	if out, err := h2.Run(ctx, "ip", "-6", "addr", "del", netip.PrefixFrom(host6[h2], 64).String(), "dev", "em1"); err != nil {
		t.Fatalf("h2: remove its IPv6 address: %v: %s", err, out)
	}
	if err := waitWithdrawn6(ctx, h1, st2.Block6); err != nil {
		t.Fatalf("h2's IPv6 address gone: %v", err)
	}
	if _, err := a.Ping(ctx, b.IP); err != nil {
		t.Errorf("pod on h1 -> pod on h2 over IPv4 after the IPv6 route went: %v", err)
	}
	if s, err := h1.Status(ctx); err != nil {
		t.Error(err)
	} else if m, ok := s.Member(h2.Name); !ok || m.Route != "programmed" {
		t.Errorf("h1 withdrew h2's IPv4 route with its IPv6 one: %+v", m)
	}
}

// TestDualStackCrossSubnet: a host on another subnet, behind the router,
// is reached over VXLAN for IPv6 as for IPv4, while the two hosts sharing
// an IPv6 network route each other's IPv6 blocks directly.
func TestDualStackCrossSubnet(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 2, Routed: true, Hosts2: 1, NoAgents: true, AgentArgs: []string{"--pool6", "fd00:10:244::/48"}})
	ctx := timeout(t, 2*time.Minute)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	host6 := startWithIPv6Underlay(t, ctx, l, h1, h2)
	blocks6 := map[*lab.Host]netip.Prefix{}
	for _, h := range l.Hosts() {
		st, err := nodestate.Read(h.RunDir())
		if err != nil {
			t.Fatal(err)
		}
		blocks6[h] = st.Block6
	}
	vxlan := func(h *lab.Host) string {
		return blocks6[h].String() + " via " + blocks6[h].Addr().String() + " dev gv.vxlan"
	}
	for h, want := range map[*lab.Host][]string{
		h1: {vxlan(h3), blocks6[h2].String() + " via " + host6[h2].String() + " dev em1"},
		h3: {vxlan(h1), vxlan(h2)},
	} {
		for _, w := range want {
			if err := waitRoute6(ctx, h, w); err != nil {
				t.Error(err)
			}
		}
	}
	a := addPods(t, ctx, h1, 1)[0]
	c := addPods(t, ctx, h3, 1)[0]
	checkReach(t, ctx, []reach{
		{"pod on h1 -> pod on h3 (other subnet) over IPv6", a.Namespace, c.IP6, netip.Addr{}},
		{"pod on h3 -> pod on h1 over IPv6", c.Namespace, a.IP6, netip.Addr{}},
		{"pod on h3 -> pod on h1 over IPv4", c.Namespace, a.IP, netip.Addr{}},
	})
}

// firstPacketPods is how many pods in a row must each get their first
// packet through (issue 21's tests: no DAD wait, nothing learnt late).
const firstPacketPods = 200

// TestDualStackFirstPacket: 200 dual-stack pods started one after another
// on h1, each sending exactly one echo request over IPv6 and one over IPv4
// to a pod on h2 as soon as its ADD returns, and then deleted. Every one
// of those first packets must be answered: the pod's /128 is not held back
// by duplicate address detection, its gateway is a PERMANENT neighbour,
// and h1 reaches it by route and PERMANENT entry before ADD returns.
func TestDualStackFirstPacket(t *testing.T) {
	t.Parallel()
	const pool6 = "fd00:10:244::/48"
	l := env.Lab(t, labtest.Options{Hosts: 2, NoAgents: true, AgentArgs: []string{"--pool6", pool6}})
	ctx := timeout(t, 4*time.Minute)
	h1, h2 := l.Host(1), l.Host(2)
	startWithIPv6Underlay(t, ctx, l, l.Hosts()...)
	target := addPods(t, ctx, h2, 1)[0]
	// The route to h2's blocks comes from gossip: a first pod waits for it
	// once, so that the pods below test their own wiring, not the mesh.
	probe := addPods(t, ctx, h1, 1)[0]
	checkReach(t, ctx, []reach{
		{"pod on h1 -> pod on h2 over IPv6", probe.Namespace, target.IP6, netip.Addr{}},
		{"pod on h1 -> pod on h2 over IPv4", probe.Namespace, target.IP, netip.Addr{}},
	})
	if err := probe.Delete(ctx); err != nil {
		t.Fatal(err)
	}

	// One request each, and long enough a wait for its answer that a
	// loaded machine's scheduling cannot pass for a lost packet.
	var slowest time.Duration
	for i := range firstPacketPods {
		p, err := h1.AddPod(ctx)
		if err != nil {
			t.Fatalf("pod %d: %v", i, err)
		}
		for _, dst := range []netip.Addr{target.IP6, target.IP} {
			rtt, err := p.Namespace.PingOnce(dst, 10*time.Second)
			if err != nil {
				t.Fatalf("pod %d (%s, %s): its first packet: %v", i, p.IP, p.IP6, err)
			}
			if rtt > time.Second {
				t.Logf("pod %d: the answer to its first packet to %s took %v", i, dst, rtt)
			}
			slowest = max(slowest, rtt)
		}
		if err := p.Delete(ctx); err != nil {
			t.Fatalf("pod %d: %v", i, err)
		}
	}
	t.Logf("%d pods in a row: every first packet answered over IPv6 and IPv4, the slowest in %v", firstPacketPods, slowest)
}
