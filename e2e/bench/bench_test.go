package bench_test

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/e2e/bench"
	"github.com/grapevine-net/grapevine/node"
	"github.com/grapevine-net/grapevine/node/nodestate"
	"github.com/grapevine-net/grapevine/plugin"
)

// Benchmarks of the pure work on the hot paths that the packages' own
// benchmarks (mesh's codec, node's diff and netlink, plugin's ADD/DEL) do
// not cover: turning 2,000 peers into routes on every reconcile, and what
// every CNI call does before it touches the kernel.

func BenchmarkDesiredRoutes2000(b *testing.B) {
	d := node.Desired{
		Iface:    "em1",
		OwnBlock: netip.MustParsePrefix("10.255.254.0/23"),
		Pool:     netip.MustParsePrefix("10.0.0.0/8"),
		Peers:    bench.PeerRoutes(2000),
	}
	link := node.Link{Name: "em1", Index: 2, Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("172.16.0.1/16")}}
	for b.Loop() {
		routes, errs := node.DesiredRoutes(d, link, node.Link{})
		if len(routes) != 2001 || len(errs) != 0 {
			b.Fatalf("%d routes, %d peer errors", len(routes), len(errs))
		}
	}
}

// BenchmarkCNIConfig is what grapevine-cni does with its input on every
// call: parse the network configuration (with the in-process IPAM's) and
// read node.json.
func BenchmarkCNIConfig(b *testing.B) {
	dir := b.TempDir()
	runDir, stateDir := filepath.Join(dir, "run"), filepath.Join(dir, "state")
	lease, err := nodestate.LeaseFromNow(time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	err = nodestate.Write(runDir, nodestate.State{Node: "n1", Block: netip.MustParsePrefix("10.244.2.0/23"),
		Pool: netip.MustParsePrefix("10.244.0.0/16"), HostIP: netip.MustParseAddr("192.0.2.1"), MTU: 1500, Lease: lease})
	if err != nil {
		b.Fatal(err)
	}
	// The first plugin of the agent's conflist as libcni hands it over.
	conf := []byte(`{"cniVersion": "1.1.0", "name": "grapevine", "type": "grapevine-cni", "runDir": "` + runDir +
		`", "mtu": 0, "ipam": {"type": "grapevine-ipam", "dataDir": "` + stateDir + `/ipam"}}`)
	for b.Loop() {
		if _, err := plugin.ParseConfig(conf); err != nil {
			b.Fatal(err)
		}
		if _, err := nodestate.Read(runDir); err != nil {
			b.Fatal(err)
		}
	}
}
