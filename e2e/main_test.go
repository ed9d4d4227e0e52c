package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
)

var env = labtest.NewEnv()

func TestMain(m *testing.M) { env.Main(m) }

// routeProto is the protocol of every route the agent owns (docs/design.md).
const routeProto = 74

// podPool is the agent's default pool, which the lab's agents use.
var podPool = netip.MustParsePrefix("10.244.0.0/16")

// echoPort is where the tests' echo servers listen.
const echoPort = 7000

// timeout returns a context for one scenario step, ended with the test.
func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// hostRoutes is the part of a host's main table grapevine is responsible for.
type hostRoutes struct {
	em1         int                         // ifindex of em1
	peers       map[netip.Prefix]netip.Addr // proto 74 unicast routes via em1: block -> next hop
	foreign     []string                    // proto 74 unicast routes not via em1, described
	blackholes  []netip.Prefix              // proto 74 blackholes
	unreachable []netip.Prefix              // proto 74 unreachable routes: the pool's
	pods        map[netip.Addr]int          // /32 scope link routes: pod -> ifindex
}

func readRoutes(h *lab.Host) (hostRoutes, error) {
	r := hostRoutes{peers: make(map[netip.Prefix]netip.Addr), pods: make(map[netip.Addr]int)}
	em1, err := h.LinkByName("em1")
	if err != nil {
		return r, err
	}
	r.em1 = em1.Attrs().Index
	routes, err := h.Routes()
	if err != nil {
		return r, err
	}
	for _, rt := range routes {
		if rt.Dst == nil {
			continue
		}
		dst, ok := prefixOf(rt.Dst)
		if !ok {
			continue
		}
		switch {
		case rt.Protocol == routeProto && rt.Type == syscall.RTN_BLACKHOLE:
			r.blackholes = append(r.blackholes, dst)
		case rt.Protocol == routeProto && rt.Type == syscall.RTN_UNREACHABLE:
			r.unreachable = append(r.unreachable, dst)
		case rt.Protocol == routeProto && rt.Gw != nil && rt.LinkIndex == r.em1:
			gw, _ := netip.AddrFromSlice(rt.Gw)
			r.peers[dst] = gw.Unmap()
		case rt.Protocol == routeProto:
			r.foreign = append(r.foreign, rt.String())
		case dst.Bits() == 32 && rt.Scope == netlink.SCOPE_LINK && rt.Gw == nil:
			r.pods[dst.Addr()] = rt.LinkIndex
		}
	}
	return r, nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), ok
}

// expectPeerRoutes checks that h routes exactly the given peers' blocks, each
// via that peer's em1 address, and holds a blackhole for its own block.
func expectPeerRoutes(h *lab.Host, own netip.Prefix, peers map[netip.Prefix]netip.Addr) error {
	r, err := readRoutes(h)
	if err != nil {
		return err
	}
	var problems []string
	for block, via := range peers {
		if got, ok := r.peers[block]; !ok {
			problems = append(problems, fmt.Sprintf("no route %s via %s dev em1 proto %d", block, via, routeProto))
		} else if got != via {
			problems = append(problems, fmt.Sprintf("%s via %s, want via %s", block, got, via))
		}
	}
	for block, via := range r.peers {
		if _, ok := peers[block]; !ok {
			problems = append(problems, fmt.Sprintf("unexpected route %s via %s", block, via))
		}
	}
	if len(r.foreign) > 0 {
		problems = append(problems, fmt.Sprintf("proto %d routes not via em1: %v", routeProto, r.foreign))
	}
	if !slices.Equal(r.unreachable, []netip.Prefix{podPool}) {
		problems = append(problems, fmt.Sprintf("unreachable routes %v, want just %s", r.unreachable, podPool))
	}
	if own.IsValid() && !slices.Contains(r.blackholes, own) {
		problems = append(problems, fmt.Sprintf("no blackhole %s (have %v)", own, r.blackholes))
	}
	if len(problems) > 0 {
		return fmt.Errorf("host %s: %s", h.Name, strings.Join(problems, "; "))
	}
	return nil
}

// meshRoutes is the peer route set every host of a converged mesh must hold:
// every other host's block via that host's address.
func meshRoutes(statuses map[string]lab.Status, hosts []*lab.Host, self *lab.Host) map[netip.Prefix]netip.Addr {
	want := make(map[netip.Prefix]netip.Addr)
	for _, h := range hosts {
		if h != self {
			want[statuses[h.Name].Block] = h.IP
		}
	}
	return want
}

// expectMeshRoutes checks that every host holds the routes of a converged
// mesh (meshRoutes) and its own blackhole, as statuses give the blocks.
func expectMeshRoutes(statuses map[string]lab.Status, hosts []*lab.Host) error {
	for _, h := range hosts {
		if err := expectPeerRoutes(h, statuses[h.Name].Block, meshRoutes(statuses, hosts, h)); err != nil {
			return err
		}
	}
	return nil
}

// addPods adds n pods to h, failing the test on error.
func addPods(t *testing.T, ctx context.Context, h *lab.Host, n int) []*lab.Pod {
	t.Helper()
	var pods []*lab.Pod
	for range n {
		p, err := h.AddPod(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	return pods
}

// serveEcho runs an echo server inside ns until the test ends.
func serveEcho(t *testing.T, ns lab.Namespace) {
	t.Helper()
	ln, err := ns.Listen(fmt.Sprintf(":%d", echoPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go lab.ServeEcho(ln)
}

// serveEcho6 is serveEcho on ns's IPv6 addresses.
func serveEcho6(t *testing.T, ns lab.Namespace) {
	t.Helper()
	ln, err := ns.Listen(fmt.Sprintf("[::]:%d", echoPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go lab.ServeEcho(ln)
}

// uniqueBlocks checks that every host holds a block and no two the same.
func uniqueBlocks(statuses map[string]lab.Status) error {
	owner := make(map[netip.Prefix]string)
	for name, s := range statuses {
		if !s.Block.IsValid() {
			return fmt.Errorf("%s holds no block", name)
		}
		if other, dup := owner[s.Block]; dup {
			return fmt.Errorf("block %s held by both %s and %s", s.Block, other, name)
		}
		owner[s.Block] = name
	}
	return nil
}
