package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// The VXLAN device and the overhead the pod MTU pays for it (docs/design.md).
const (
	vxlanDevice   = "gv.vxlan"
	vxlanOverhead = 50
)

// peerRoute is one proto 74 route to a peer's block as the kernel holds it.
type peerRoute struct {
	via    netip.Addr
	dev    string
	onlink bool
}

func (r peerRoute) String() string {
	s := fmt.Sprintf("via %s dev %s", r.via, r.dev)
	if r.onlink {
		s += " onlink"
	}
	return s
}

// direct and encapsulated are the two routes a peer's block can have.
func direct(hostIP netip.Addr) peerRoute { return peerRoute{via: hostIP, dev: "em1"} }
func encapsulated(block netip.Prefix) peerRoute {
	return peerRoute{via: block.Addr(), dev: vxlanDevice, onlink: true}
}

// peerRoutesOf lists h's proto 74 unicast routes by destination.
func peerRoutesOf(h *lab.Host) (map[netip.Prefix]peerRoute, error) {
	routes, err := h.Routes()
	if err != nil {
		return nil, err
	}
	out := make(map[netip.Prefix]peerRoute)
	for _, rt := range routes {
		if rt.Protocol != routeProto || rt.Gw == nil || rt.Dst == nil {
			continue
		}
		dst, _ := prefixOf(rt.Dst)
		gw, _ := netip.AddrFromSlice(rt.Gw)
		link, err := h.LinkByIndex(rt.LinkIndex)
		if err != nil {
			return nil, err
		}
		out[dst] = peerRoute{via: gw.Unmap(), dev: link.Attrs().Name, onlink: rt.Flags&int(netlink.FLAG_ONLINK) != 0}
	}
	return out, nil
}

// vtepMAC is the MAC of the VXLAN device of the host at hostIP.
func vtepMAC(hostIP netip.Addr) string {
	a := hostIP.As4()
	return fmt.Sprintf("0e:74:%02x:%02x:%02x:%02x", a[0], a[1], a[2], a[3])
}

// expectPaths checks that h routes exactly the given blocks as given, and
// that every encapsulated one has its permanent neighbour (VTEP -> MAC) and
// FDB entry (MAC -> the peer's host IP, given in hostIPs); without
// encapsulated peers, h has no VXLAN device.
func expectPaths(ctx context.Context, h *lab.Host, want map[netip.Prefix]peerRoute, hostIPs map[netip.Prefix]netip.Addr) error {
	got, err := peerRoutesOf(h)
	if err != nil {
		return err
	}
	var problems []string
	for block, w := range want {
		if g, ok := got[block]; !ok {
			problems = append(problems, fmt.Sprintf("no route %s %s", block, w))
		} else if g != w {
			problems = append(problems, fmt.Sprintf("%s %s, want %s", block, g, w))
		}
	}
	for block, g := range got {
		if _, ok := want[block]; !ok {
			problems = append(problems, fmt.Sprintf("unexpected route %s %s", block, g))
		}
	}
	var vxlanPeers int
	neigh, fdb := "", ""
	for block, w := range want {
		if w.dev != vxlanDevice {
			continue
		}
		if vxlanPeers++; vxlanPeers == 1 {
			out, err := h.Run(ctx, "ip", "neigh", "show", "dev", vxlanDevice)
			if err != nil {
				return err
			}
			neigh = string(out)
			if out, err = h.Run(ctx, "bridge", "fdb", "show", "dev", vxlanDevice); err != nil {
				return err
			}
			fdb = string(out)
		}
		mac := vtepMAC(hostIPs[block])
		if n := fmt.Sprintf("%s lladdr %s PERMANENT", block.Addr(), mac); !strings.Contains(neigh, n) {
			problems = append(problems, fmt.Sprintf("no neighbour %q in %q", n, neigh))
		}
		if f := fmt.Sprintf("%s dst %s self permanent", mac, hostIPs[block]); !strings.Contains(fdb, f) {
			problems = append(problems, fmt.Sprintf("no fdb entry %q in %q", f, fdb))
		}
	}
	_, err = h.LinkByName(vxlanDevice)
	switch {
	case vxlanPeers == 0 && err == nil:
		problems = append(problems, vxlanDevice+" exists without encapsulated peers")
	case vxlanPeers > 0 && err != nil:
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		return fmt.Errorf("host %s: %s", h.Name, strings.Join(problems, "; "))
	}
	return nil
}

// crossSubnetPaths is what every host of a converged routed lab must hold:
// peers on its own LAN direct, the others encapsulated.
func crossSubnetPaths(statuses map[string]lab.Status, hosts []*lab.Host, self *lab.Host) (map[netip.Prefix]peerRoute, map[netip.Prefix]netip.Addr) {
	want := make(map[netip.Prefix]peerRoute)
	hostIPs := make(map[netip.Prefix]netip.Addr)
	for _, h := range hosts {
		if h == self {
			continue
		}
		block := statuses[h.Name].Block
		hostIPs[block] = h.IP
		if h.LAN == self.LAN {
			want[block] = direct(h.IP)
		} else {
			want[block] = encapsulated(block)
		}
	}
	return want, hostIPs
}

func expectCrossSubnetPaths(ctx context.Context, statuses map[string]lab.Status, hosts []*lab.Host) error {
	for _, h := range hosts {
		want, hostIPs := crossSubnetPaths(statuses, hosts, h)
		if err := expectPaths(ctx, h, want, hostIPs); err != nil {
			return err
		}
	}
	return nil
}

// expectStatusPaths checks every member's path in h's status.
func expectStatusPaths(s lab.Status, want map[string]string) error {
	for name, path := range want {
		m, ok := s.Member(name)
		if !ok || m.Path != path || m.PathReason == "" || m.Route != "programmed" {
			return fmt.Errorf("%s's status of %s: %+v, want path %s programmed with a reason", s.Node, name, m, path)
		}
	}
	return nil
}

// nodeMTU reads the pod MTU the agent wrote to node.json.
func nodeMTU(h *lab.Host) (int, error) {
	data, err := os.ReadFile(filepath.Join(h.RunDir(), "node.json"))
	if err != nil {
		return 0, err
	}
	var st struct {
		MTU int `json:"mtu"`
	}
	return st.MTU, json.Unmarshal(data, &st)
}

// TestCrossSubnet: h1 and h2 share a LAN, h3 sits behind a router that knows
// nothing of the pods. h3 joins, and every peer routes its block over VXLAN
// (timed), while h1 and h2 keep their direct routes. Pods on one LAN talk
// with no UDP on the wire; pods across the router talk through VXLAN, which
// the router sees as UDP to port 4789 between host addresses and never as
// pod addresses, without NAT, and carry a 1400-byte and a 64 KB message at
// the pod MTU written to node.json (1450 on a 1500 link). With
// --encapsulation=never h1 reports h3 unreachable and holds no VXLAN state.
func TestCrossSubnet(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 2, Routed: true, Hosts2: 1, NoAgents: true})
	ctx := timeout(t, 4*time.Minute)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	if err := l.StartAgents(ctx, h1, h2); err != nil {
		t.Fatal(err)
	}
	if _, err := lab.WaitMesh(ctx, []*lab.Host{h1, h2}); err != nil {
		t.Fatal(err)
	}
	if err := h3.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	// Until every peer routes h3's block and h3 routes theirs, read from
	// the kernels, not from status.
	var routed time.Duration
	err := poll.Until(ctx, "h3's block routed over VXLAN by every peer, and theirs by h3", 100*time.Millisecond, func() error {
		s3, err := h3.Status(ctx)
		if err != nil || !s3.Block.IsValid() {
			return fmt.Errorf("h3 holds no block yet (%v)", err)
		}
		for _, h := range []*lab.Host{h1, h2} {
			routes, err := peerRoutesOf(h)
			if err != nil {
				return err
			}
			if routes[s3.Block] != encapsulated(s3.Block) {
				return fmt.Errorf("%s: %s %v", h.Name, s3.Block, routes[s3.Block])
			}
		}
		routes, err := peerRoutesOf(h3)
		if err != nil {
			return err
		}
		if len(routes) != 2 {
			return fmt.Errorf("h3 routes %v", routes)
		}
		routed = time.Since(started)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cross-subnet host start -> every peer routes its block over VXLAN and it routes theirs: %v", routed.Round(time.Millisecond))

	statuses, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	if err := expectCrossSubnetPaths(ctx, statuses, l.Hosts()); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]map[string]string{
		"h1": {"h2": "direct", "h3": "vxlan"},
		"h2": {"h1": "direct", "h3": "vxlan"},
		"h3": {"h1": "vxlan", "h2": "vxlan"},
	} {
		if err := expectStatusPaths(statuses[name], want); err != nil {
			t.Error(err)
		}
	}
	if text, err := h1.StatusText(ctx, "table"); err != nil || !strings.Contains(string(text), "vxlan") {
		t.Errorf("status table: %v\n%s", err, text)
	} else {
		t.Logf("h1's status:\n%s", text)
	}
	if code, body, err := h1.Get(ctx, "/metrics"); err != nil || code != 200 ||
		!strings.Contains(body, `grapevine_node_peers{family="ipv4",path="direct"} 1`) || !strings.Contains(body, `grapevine_node_peers{family="ipv4",path="vxlan"} 1`) {
		t.Errorf("h1's metrics do not count one peer per path: %v %d", err, code)
	}

	for _, h := range l.Hosts() {
		mtu, err := nodeMTU(h)
		if err != nil {
			t.Fatal(err)
		}
		if mtu != 1500-vxlanOverhead {
			t.Errorf("%s: node.json mtu %d, want %d", h.Name, mtu, 1500-vxlanOverhead)
		}
	}
	dev, err := h1.LinkByName(vxlanDevice)
	if err != nil {
		t.Fatal(err)
	}
	if mtu := dev.Attrs().MTU; mtu != 1500-vxlanOverhead {
		t.Errorf("%s mtu %d", vxlanDevice, mtu)
	}

	onH1, onRouterLAN1, onRouterLAN2 := capture(t, h1.Namespace, "em1"), capture(t, l.Router, "em1"), capture(t, l.Router, "em2")
	p1, p2, p3 := addPods(t, ctx, h1, 1)[0], addPods(t, ctx, h2, 1)[0], addPods(t, ctx, h3, 1)[0]
	eth0, err := p1.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if eth0.Attrs().MTU != 1500-vxlanOverhead {
		t.Errorf("pod eth0 mtu %d, want %d", eth0.Attrs().MTU, 1500-vxlanOverhead)
	}
	serveEcho(t, p2.Namespace)
	serveEcho(t, p3.Namespace)

	// Same LAN: plain IP between the pods, no VXLAN between the hosts.
	near, err := p1.DialEcho(ctx, netip.AddrPortFrom(p2.IP, echoPort))
	if err != nil {
		t.Fatal(err)
	}
	defer near.Close()
	if near.Source.Addr() != p1.IP {
		t.Errorf("p2 saw p1 as %s: translated", near.Source)
	}
	if err := near.RoundTrip("same subnet"); err != nil {
		t.Fatal(err)
	}
	// The capture reads on its own goroutine: wait until it has seen them.
	err = poll.Until(timeout(t, 30*time.Second), "h1's em1 to see p1 <-> p2", 100*time.Millisecond, func() error {
		if c := onH1.Between(p1.IP, p2.IP); c.Plain == 0 {
			return fmt.Errorf("p1 <-> p2 on h1's em1: %+v", c)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	if c := onH1.Between(p1.IP, p2.IP); c.Inner != 0 {
		t.Errorf("p1 <-> p2 on h1's em1: %+v, want plain packets only", c)
	}
	if c := onH1.Between(h1.IP, h2.IP); c.VXLAN != 0 {
		t.Errorf("UDP to port %d between h1 and h2 on the same LAN: %+v", lab.VXLANPort, c)
	}

	// Across the router: VXLAN, the pods' own addresses inside.
	far, err := p1.DialEcho(ctx, netip.AddrPortFrom(p3.IP, echoPort))
	if err != nil {
		t.Fatal(err)
	}
	defer far.Close()
	if far.Source.Addr() != p1.IP {
		t.Errorf("p3 saw p1 as %s: pod-to-pod traffic over VXLAN was translated", far.Source)
	}
	for _, size := range []int{1400, 64 << 10} {
		msg := strings.Repeat("x", size)
		sent := time.Now()
		far.SetDeadline(time.Now().Add(30 * time.Second))
		if err := far.RoundTrip(msg); err != nil {
			t.Fatalf("%d-byte round trip across the encapsulated path: %v", size, err)
		}
		t.Logf("%d bytes there and back across VXLAN in %v", size, time.Since(sent).Round(time.Microsecond))
	}
	if _, err := p3.Ping(ctx, p1.IP); err != nil {
		t.Fatal(err)
	}
	// Plain packets between the hosts are gossip; pod traffic is VXLAN.
	err = poll.Until(timeout(t, 30*time.Second), "the router to see VXLAN between h1 and h3 carrying p1 <-> p3", 100*time.Millisecond, func() error {
		if c := onRouterLAN1.Between(h1.IP, h3.IP); c.VXLAN == 0 {
			return fmt.Errorf("router's em1, h1 <-> h3: %+v, no VXLAN", c)
		}
		if c := onRouterLAN2.Between(p1.IP, p3.IP); c.Inner == 0 {
			return fmt.Errorf("router's em2: no VXLAN packets carrying p1 <-> p3: %+v", c)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	for name, c := range map[string]*lab.Capture{"em1": onRouterLAN1, "em2": onRouterLAN2} {
		if tot := c.Total(podPool); tot.Plain != 0 {
			t.Errorf("router's %s saw %d packets with pod addresses in the clear", name, tot.Plain)
		}
		t.Logf("router's %s: %+v (VXLAN packets, pod packets inside them, pod packets in the clear)", name, c.Total(podPool))
	}

	// The host itself reaches a pod behind the router: it sends from its
	// VTEP address, so the answer comes back through the tunnel.
	if _, err := h1.Ping(ctx, p3.IP); err != nil {
		t.Fatalf("h1 -> p3: %v", err)
	}

	// The device deleted by hand comes back with its routes and entries.
	if _, err := h1.Run(ctx, "ip", "link", "del", vxlanDevice); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	err = poll.Until(timeout(t, time.Minute), "h1's VXLAN path back after ip link del", 100*time.Millisecond, func() error {
		return expectCrossSubnetPaths(ctx, statuses, []*lab.Host{h1, h2, h3})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s deleted by hand: back with its route and entries within %v", vxlanDevice, time.Since(deleted).Round(time.Millisecond))
	far.SetDeadline(time.Now().Add(30 * time.Second))
	if err := far.RoundTrip("after the device came back"); err != nil {
		t.Fatal(err)
	}

	// --encapsulation=never: h3 is not reachable, and status says why.
	if err := h1.StopAgent(ctx); err != nil {
		t.Fatal(err)
	}
	h1.ExtraArgs = []string{"--encapsulation=never"}
	if err := h1.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	s1, err := h1.WaitStatus(ctx, "h3 reported not routable", func(s lab.Status) bool {
		m3, ok3 := s.Member("h3")
		m2, ok2 := s.Member("h2")
		return s.Encapsulation == "never" && ok2 && m2.Route == "programmed" && ok3 &&
			strings.HasPrefix(m3.Route, "error: next hop is not on a network directly connected")
	})
	if err != nil {
		t.Fatal(err)
	}
	m3, _ := s1.Member("h3")
	t.Logf("with --encapsulation=never h1 reports h3 %v after its restart: %s (%s)",
		time.Since(restarted).Round(time.Millisecond), m3.Route, m3.PathReason)
	err = poll.Until(ctx, "h1 without VXLAN state", 100*time.Millisecond, func() error {
		return expectPaths(ctx, h1, map[netip.Prefix]peerRoute{statuses["h2"].Block: direct(h2.IP)}, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	if mtu, err := nodeMTU(h1); err != nil || mtu != 1500 {
		t.Errorf("with --encapsulation=never node.json mtu = %d (%v), want 1500", mtu, err)
	}
}

func capture(t *testing.T, ns lab.Namespace, ifname string) *lab.Capture {
	t.Helper()
	c, err := ns.Capture(ifname)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if err := c.Err(); err != nil {
			t.Errorf("capture on %s in %s: %v", ifname, ns.Name, err)
		}
	})
	return c
}

// TestCrossSubnetMove: h2 moves from h1's LAN to h3's (restart with a new
// address). Every host switches its path to h2: h1 from direct to VXLAN
// towards the new address, h3 from VXLAN to direct, and h2's pods created
// before the move answer from both.
func TestCrossSubnetMove(t *testing.T) {
	t.Parallel()
	l := env.Lab(t, labtest.Options{Hosts: 2, Routed: true, Hosts2: 1})
	ctx := timeout(t, 4*time.Minute)
	h1, h2, h3 := l.Host(1), l.Host(2), l.Host(3)
	before, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	if err := expectCrossSubnetPaths(ctx, before, l.Hosts()); err != nil {
		t.Fatal(err)
	}
	p1, p2, p3 := addPods(t, ctx, h1, 1)[0], addPods(t, ctx, h2, 1)[0], addPods(t, ctx, h3, 1)[0]
	serveEcho(t, p2.Namespace)
	for _, client := range []*lab.Pod{p1, p3} {
		if _, err := client.Ping(ctx, p2.IP); err != nil {
			t.Fatalf("before the move, %s -> p2: %v", client.Host.Name, err)
		}
	}

	if err := h2.StopAgent(ctx); err != nil {
		t.Fatal(err)
	}
	oldIP := h2.IP
	if err := h2.Move(ctx, lab.LAN2); err != nil {
		t.Fatal(err)
	}
	if err := h2.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	after, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	if after["h2"].Block != before["h2"].Block {
		t.Errorf("h2 moved with block %s, had %s", after["h2"].Block, before["h2"].Block)
	}
	err = poll.Until(ctx, "every host's paths after the move", 100*time.Millisecond, func() error {
		return expectCrossSubnetPaths(ctx, after, l.Hosts())
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("h2 moved from %s to %s: every host switched paths within %v of its restart", oldIP, h2.IP, time.Since(restarted).Round(time.Millisecond))
	for name, want := range map[string]map[string]string{
		"h1": {"h2": "vxlan", "h3": "vxlan"},
		"h2": {"h1": "vxlan", "h3": "direct"},
		"h3": {"h1": "vxlan", "h2": "direct"},
	} {
		s, err := l.Host(int(name[1] - '0')).Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := expectStatusPaths(s, want); err != nil {
			t.Error(err)
		}
	}
	for _, client := range []*lab.Pod{p1, p3} {
		c, err := client.DialEcho(ctx, netip.AddrPortFrom(p2.IP, echoPort))
		if err != nil {
			t.Fatalf("after the move, %s -> p2: %v", client.Host.Name, err)
		}
		err = c.RoundTrip("moved")
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
}
