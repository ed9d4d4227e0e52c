package mesh_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/meshtest"
)

// TestIPv6OnlyClusterConverges runs three nodes with IPv6 host addresses
// and an IPv6 pool, and nothing IPv4: gossip and the ledger run between the
// IPv6 addresses, each node holds a /64 (the default block of a /48), and
// every node routes the others' blocks to their IPv6 host addresses.
func TestIPv6OnlyClusterConverges(t *testing.T) {
	pool := netip.MustParsePrefix("fd00:10:244::/48")
	c := newCluster(t, meshtest.Options{Pool: pool})
	addrs := map[string]netip.Addr{}
	var first *meshtest.Node
	for i, name := range []string{"a", "b", "c"} {
		addr := netip.MustParseAddr(fmt.Sprintf("fd00:172:16::%d", i+1))
		addrs[name] = addr
		spec := meshtest.Spec{Name: name, Addr: addr}
		if first != nil {
			spec.Join = seed(first)
		}
		n, err := c.Start(spec)
		if err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = n
		}
	}
	waitConverged(t, c, 20*time.Second)
	waitFor(t, "every node routes the others' /64s via their IPv6 host addresses", 20*time.Second, func() error {
		views := c.Views()
		for name, v := range views {
			if !pool.Contains(v.Block.Addr()) || v.Block.Bits() != mesh.DefaultBlockBits6 {
				return fmt.Errorf("%s holds %s, not a /64 of %s", name, v.Block, pool)
			}
			if v.HostIP != addrs[name] {
				return fmt.Errorf("%s reports host IP %s, want %s", name, v.HostIP, addrs[name])
			}
			if len(v.Members) != 2 {
				return fmt.Errorf("%s sees %d members, want 2", name, len(v.Members))
			}
			for _, m := range v.Members {
				if m.Block != views[m.Name].Block || m.HostIP != addrs[m.Name] {
					return fmt.Errorf("%s routes %s's %s via %s, want %s via %s", name, m.Name, m.Block, m.HostIP, views[m.Name].Block, addrs[m.Name])
				}
			}
		}
		return nil
	})
}
