package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/node"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// CNIConfig configures the per-pod setup measurement.
type CNIConfig struct {
	// CNIPath lists the directories with grapevine-cni, grapevine-ipam,
	// ptp, host-local and portmap.
	CNIPath []string
	// Pods is how many pods each chain wires.
	Pods int
	// Portmap chains portmap after both grapevine-cni and ptp, as the
	// agent's conflist does; without it both chains are the bare plugin.
	Portmap bool
	// DualStackPods, if positive, is how many pods each of three more
	// chains wires in a run of their own: grapevine-cni IPv4-only, the same
	// with an IPv6 block in node.json (dual-stack pods), and ptp with
	// host-local handing out both families. Fewer than Pods: ptp waits
	// for duplicate address detection on every pod's IPv6 address (about
	// 1.8 s an ADD), which grapevine-cni skips.
	DualStackPods int
}

// cniBatch is how many pods of each chain exist at once: a node carries
// some pods while new ones come and go, as kubelet's default limit of 110
// pods a node allows.
const cniBatch = 50

// cniChain is one conflist under test and its samples.
type cniChain struct {
	name      string
	conf      *libcni.NetworkConfigList
	add, del  []time.Duration
	podPrefix string
}

// MeasureCNI wires Pods pods with grapevine-cni + grapevine-ipam (reading a
// node.json written here, as the agent would) and as many with ptp +
// host-local, through libcni from a host namespace as a container runtime
// does: one new pod namespace per pod, the real plugin binaries. The chains
// alternate pod by pod, in ABBA order, in batches of cniBatch: ADD the
// batch, then DEL it.
func MeasureCNI(ctx context.Context, cfg CNIConfig) (_ []Row, err error) {
	s := newScope()
	defer func() { err = errors.Join(err, s.close(context.WithoutCancel(ctx))) }()
	dir, err := os.MkdirTemp("", s.name("cni-"))
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	host, err := s.addNamespace(ctx, "host")
	if err != nil {
		return nil, err
	}
	hostIP := netip.MustParseAddr("192.0.2.1")
	// em1 stands in for the uplink: the host address lives there, and the
	// default route through it is what lets proxy ARP answer for the pods'
	// gateway. The namespace lacks the dummy driver on some kernels, so
	// it is one end of a veth pair.
	for _, args := range [][]string{
		{"link", "add", "em1", "type", "veth", "peer", "name", NamePrefix + s.id},
		{"addr", "add", hostIP.String() + "/24", "dev", "em1"},
		{"link", "set", "em1", "up"},
		{"link", "set", "lo", "up"},
		{"route", "add", "default", "via", "192.0.2.254", "dev", "em1", "onlink"},
	} {
		if _, err := lab.Run(ctx, "ip", append([]string{"-n", host}, args...)...); err != nil {
			return nil, err
		}
	}

	runDir, stateDir := filepath.Join(dir, "run"), filepath.Join(dir, "state")
	// What the agent would hand over: a /23 block, as by default, holds the
	// batch with room to spare.
	lease, err := nodestate.LeaseFromNow(time.Hour)
	if err != nil {
		return nil, err
	}
	err = nodestate.Write(runDir, nodestate.State{
		Node: "gvb-node", Block: netip.MustParsePrefix("10.244.2.0/23"),
		Pool: netip.MustParsePrefix("10.244.0.0/16"), HostIP: hostIP, MTU: 1500, Lease: lease,
	})
	if err != nil {
		return nil, err
	}
	gvConf, err := node.Handoff{RunDir: runDir, StateDir: stateDir}.Conflist()
	if err != nil {
		return nil, err
	}
	gv, err := chainConf(gvConf, cfg.Portmap)
	if err != nil {
		return nil, err
	}
	ptpConf := []byte(`{"cniVersion": "` + gv.CNIVersion + `", "name": "gvb-ptp", "plugins": [
	  {"type": "ptp", "mtu": 1500, "ipam": {"type": "host-local", "dataDir": "` + filepath.Join(dir, "host-local") + `",
	   "ranges": [[{"subnet": "10.245.2.0/23"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
	  {"type": "portmap", "capabilities": {"portMappings": true}}]}`)
	ptp, err := chainConf(ptpConf, cfg.Portmap)
	if err != nil {
		return nil, err
	}
	chains := []*cniChain{
		{name: "grapevine", conf: gv, podPrefix: "g"},
		{name: "ptp", conf: ptp, podPrefix: "p"},
	}
	cni := libcni.NewCNIConfigWithCacheDir(cfg.CNIPath, filepath.Join(dir, "cache"), nil)

	if err := runChains(ctx, s, host, cni, chains, cfg.Pods); err != nil {
		return nil, err
	}
	rows := cniRows(chains[0], chains[1], cfg.Portmap)
	if cfg.DualStackPods <= 0 {
		return rows, nil
	}

	// The dual-stack run: the same node with an IPv6 block, its IPv4-only
	// self, and ptp with both families, alternating in rotation.
	runDir6, stateDir6 := filepath.Join(dir, "run6"), filepath.Join(dir, "state6")
	block, pool, pool6 := netip.MustParsePrefix("10.244.2.0/23"), netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/48")
	block6, err := mesh.Block6(pool, block, pool6, mesh.DefaultBlockBits6)
	if err != nil {
		return nil, err
	}
	err = nodestate.Write(runDir6, nodestate.State{
		Node: "gvb-node", Block: block, Pool: pool, Block6: block6, Pool6: pool6, HostIP: hostIP, MTU: 1500, Lease: lease,
	})
	if err != nil {
		return nil, err
	}
	gvConf6, err := node.Handoff{RunDir: runDir6, StateDir: stateDir6}.Conflist()
	if err != nil {
		return nil, err
	}
	gv6, err := chainConf(gvConf6, cfg.Portmap)
	if err != nil {
		return nil, err
	}
	ptpConf6 := []byte(`{"cniVersion": "` + gv.CNIVersion + `", "name": "gvb-ptp6", "plugins": [
	  {"type": "ptp", "mtu": 1500, "ipam": {"type": "host-local", "dataDir": "` + filepath.Join(dir, "host-local6") + `",
	   "ranges": [[{"subnet": "10.246.2.0/23"}], [{"subnet": "fd00:246::/64"}]], "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
	  {"type": "portmap", "capabilities": {"portMappings": true}}]}`)
	ptp6, err := chainConf(ptpConf6, cfg.Portmap)
	if err != nil {
		return nil, err
	}
	dual := []*cniChain{
		{name: "grapevine IPv4-only", conf: gv, podPrefix: "g4-"},
		{name: "grapevine dual-stack", conf: gv6, podPrefix: "g6-"},
		{name: "ptp dual-stack", conf: ptp6, podPrefix: "p6-"},
	}
	if err := runChains(ctx, s, host, cni, dual, cfg.DualStackPods); err != nil {
		return nil, err
	}
	return append(rows, dualStackRows(dual[0], dual[1], dual[2])...), nil
}

// runChains wires pods pods with each chain from the host namespace host,
// in batches of cniBatch, the chains taking turns in rotation pod by pod.
func runChains(ctx context.Context, s *scope, host string, cni *libcni.CNIConfig, chains []*cniChain, pods int) error {
	type pod struct {
		chain *cniChain
		ns    string
		rt    *libcni.RuntimeConf
	}
	for start := 0; start < pods; start += cniBatch {
		n := min(cniBatch, pods-start)
		// The pod namespaces are made before and removed after the timed
		// calls: the kernel tears a namespace down asynchronously, under
		// locks the plugins need, and would land on whichever call came next.
		var batch []pod
		for i := start; i < start+n; i++ {
			for _, c := range rotate(chains, i) {
				role := c.podPrefix + strconv.Itoa(i)
				name, err := s.addNamespace(ctx, role)
				if err != nil {
					return err
				}
				batch = append(batch, pod{chain: c, ns: name, rt: runtimeConf(s.name(role), name)})
			}
		}
		for _, p := range batch {
			var d time.Duration
			err := lab.Namespace{Name: host}.Do(func() error {
				t0 := time.Now()
				_, err := cni.AddNetworkList(ctx, p.chain.conf, p.rt)
				d = time.Since(t0)
				return err
			})
			if err != nil {
				return fmt.Errorf("%s: CNI ADD: %w", p.chain.name, err)
			}
			p.chain.add = append(p.chain.add, d)
		}
		for _, p := range batch {
			var d time.Duration
			err := lab.Namespace{Name: host}.Do(func() error {
				t0 := time.Now()
				err := cni.DelNetworkList(ctx, p.chain.conf, p.rt)
				d = time.Since(t0)
				return err
			})
			if err != nil {
				return fmt.Errorf("%s: CNI DEL: %w", p.chain.name, err)
			}
			p.chain.del = append(p.chain.del, d)
		}
		for _, p := range batch {
			if err := s.deleteNamespace(ctx, p.ns); err != nil {
				return err
			}
		}
		// Let the kernel finish tearing those namespaces down before the
		// next batch is timed.
		if err := poll.Sleep(ctx, 2*time.Second); err != nil {
			return err
		}
	}
	return nil
}

// rotate orders the chains for pod i: with two, AB, BA, AB, ... (ABBA);
// with more, each starts in turn, so none always runs first (after the
// others have warmed the caches).
func rotate(c []*cniChain, i int) []*cniChain {
	if len(c) == 2 {
		return abba(c, i)
	}
	k := i % len(c)
	return append(append([]*cniChain(nil), c[k:]...), c[:k]...)
}

// abba orders the two chains for pod i: AB, BA, AB, ... so neither always
// runs first (after the other has warmed the caches).
func abba(c []*cniChain, i int) []*cniChain {
	if i%2 == 0 {
		return []*cniChain{c[0], c[1]}
	}
	return []*cniChain{c[1], c[0]}
}

// chainConf parses a conflist, keeping only its first plugin unless
// withPortmap.
func chainConf(conf []byte, withPortmap bool) (*libcni.NetworkConfigList, error) {
	var list map[string]any
	if err := json.Unmarshal(conf, &list); err != nil {
		return nil, fmt.Errorf("conflist: %w", err)
	}
	plugins, _ := list["plugins"].([]any)
	if len(plugins) != 2 {
		return nil, fmt.Errorf("conflist: want the plugin and portmap, got %d plugins", len(plugins))
	}
	if !withPortmap {
		list["plugins"] = plugins[:1]
	}
	data, err := json.Marshal(list)
	if err != nil {
		return nil, err
	}
	return libcni.ConfListFromBytes(data)
}

// runtimeConf is what kubelet passes for a pod.
func runtimeConf(id, netns string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: id,
		NetNS:       lab.Namespace{Name: netns}.Path(),
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", "bench"},
			{"K8S_POD_NAME", id},
			{"K8S_POD_INFRA_CONTAINER_ID", id},
		},
	}
}

// dualStackRows are the dual-stack run's ADD figures: grapevine-cni's
// dual-stack ADD beside ptp+host-local dual-stack, and beside its own
// IPv4-only ADD of the same run (issue 21's goal: at most 20 % slower).
func dualStackRows(v4, dual, ptp *cniChain) []Row {
	note := fmt.Sprintf("a run of its own: grapevine-cni IPv4-only, grapevine-cni dual-stack (node.json with block6) and ptp+host-local dual-stack through libcni, bare plugins; %d pods each, in rotation", len(dual.add))
	return []Row{
		{ID: "1g", Measure: "CNI ADD p50, dual-stack", Unit: "ms", Value: millis(percentile(dual.add, 50)), Samples: len(dual.add),
			Peer: &Peer{Name: "ptp dual-stack", Value: millis(percentile(ptp.add, 50))}, Note: note},
		{ID: "1h", Measure: "CNI ADD p50, dual-stack vs IPv4-only", Unit: "ms", Value: millis(percentile(dual.add, 50)), Samples: len(dual.add),
			Peer: &Peer{Name: "grapevine IPv4-only", Value: millis(percentile(v4.add, 50))}, Target: Target{Kind: AtMostPeer, Limit: 1.2}},
	}
}

func cniRows(gv, ptp *cniChain, portmap bool) []Row {
	total := func(c *cniChain) []time.Duration {
		t := make([]time.Duration, len(c.add))
		for i := range t {
			t[i] = c.add[i] + c.del[i]
		}
		return t
	}
	chain := "bare plugins, no portmap"
	if portmap {
		chain = "portmap chained after both"
	}
	note := fmt.Sprintf("grapevine-cni+grapevine-ipam vs ptp+host-local through libcni, %s; %d pods each, alternating ABBA in batches of %d", chain, len(gv.add), cniBatch)
	peer := func(d time.Duration) *Peer { return &Peer{Name: "ptp", Value: millis(d)} }
	gt, pt := total(gv), total(ptp)
	return []Row{
		{ID: "1a", Measure: "CNI ADD+DEL p50", Unit: "ms", Value: millis(percentile(gt, 50)), Samples: len(gt),
			Peer: peer(percentile(pt, 50)), Target: Target{Kind: AtMostPeer, Limit: 0.75}, Note: note},
		{ID: "1b", Measure: "CNI ADD+DEL p99", Unit: "ms", Value: millis(percentile(gt, 99)), Samples: len(gt),
			Peer: peer(percentile(pt, 99)), Target: Target{Kind: AtMostPeer, Limit: 1.0}},
		{ID: "1c", Measure: "CNI ADD p50", Unit: "ms", Value: millis(percentile(gv.add, 50)), Samples: len(gv.add),
			Peer: peer(percentile(ptp.add, 50))},
		{ID: "1d", Measure: "CNI ADD p99", Unit: "ms", Value: millis(percentile(gv.add, 99)), Samples: len(gv.add),
			Peer: peer(percentile(ptp.add, 99))},
		{ID: "1e", Measure: "CNI DEL p50", Unit: "ms", Value: millis(percentile(gv.del, 50)), Samples: len(gv.del),
			Peer: peer(percentile(ptp.del, 50))},
		{ID: "1f", Measure: "CNI DEL p99", Unit: "ms", Value: millis(percentile(gv.del, 99)), Samples: len(gv.del),
			Peer: peer(percentile(ptp.del, 99))},
	}
}
