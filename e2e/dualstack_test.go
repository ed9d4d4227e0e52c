package e2e

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// TestDualStackBlocks: with --pool6 every agent hands its pods an IPv6 block
// that follows from the IPv4 block the ledger gave it (no second ledger
// entry), distinct per host; pods get an address from each block, reach
// each other on one host over IPv6, and still reach pods on other hosts
// over IPv4. The IPv6 pool has its unreachable route and the own IPv6
// block its blackhole; routes to other hosts' IPv6 blocks do not exist yet,
// so a peer's pod's IPv6 address hits the pool's unreachable route instead
// of leaving through a default route.
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
	out, err := h1.Run(ctx, "ip", "-6", "route", "get", b.IP6.String())
	if err == nil || !strings.Contains(string(out), "unreachable") && !strings.Contains(string(out), "No route to host") {
		t.Errorf("h1: ip -6 route get %s (a pod on h2) = %q, %v; want it unreachable (no peer IPv6 routes yet)", b.IP6, out, err)
	}
	if err := a[1].Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a[0].Check(ctx); err != nil {
		t.Errorf("CHECK of a dual-stack pod: %v", err)
	}
}
