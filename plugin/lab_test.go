package plugin

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/grapevine-net/grapevine/internal/hostveth"
	"github.com/grapevine-net/grapevine/internal/netlinkdump"
	"github.com/grapevine-net/grapevine/internal/testneeds"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// cniBinDir holds grapevine-cni, grapevine-ipam and the reference plugins
// (portmap, ptp, host-local); TestMain fills it. Empty when not root.
var cniBinDir string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if os.Geteuid() == 0 {
		dir, cleanup, err := pluginBinaries()
		if err != nil {
			fmt.Fprintln(os.Stderr, "build CNI plugins:", err)
			return 1
		}
		defer cleanup()
		cniBinDir = dir
	}
	return m.Run()
}

// pluginBinaries returns $GRAPEVINE_CNI_PATH when set (make test), or builds
// every plugin the tests execute into a temporary directory.
func pluginBinaries() (string, func(), error) {
	if dir := os.Getenv("GRAPEVINE_CNI_PATH"); dir != "" {
		return dir, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "gvcni-bin-")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	run := func(env []string, args ...string) error {
		cmd := exec.Command("go", args...)
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := run([]string{"CGO_ENABLED=0"}, "build", "-o", dir+"/", "../cmd/grapevine-cni", "../cmd/grapevine-ipam"); err != nil {
		cleanup()
		return "", nil, err
	}
	// The reference plugins, at the version in go.mod: portmap is chained
	// after grapevine-cni, ptp and host-local are the benchmark's peers.
	for _, p := range []string{"meta/portmap", "main/ptp", "ipam/host-local"} {
		pkg := "github.com/containernetworking/plugins/plugins/" + p + "@v1.10.0"
		if err := run([]string{"CGO_ENABLED=0", "GOBIN=" + dir}, "install", pkg); err != nil {
			cleanup()
			return "", nil, err
		}
	}
	return dir, cleanup, nil
}

// requireRoot skips a test that needs root when not root, except under
// CI=true, where it must run and so fails.
func requireRoot(t testing.TB) {
	t.Helper()
	testneeds.Root(t, "creating network namespaces, veths and routes")
}

func randomSuffix(t testing.TB) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// newNetNS creates a named network namespace gvcni-<suffix> with loopback up
// and removes it when the test ends.
func newNetNS(t testing.TB, role string) ns.NetNS {
	t.Helper()
	name := "gvcni-" + role + "-" + randomSuffix(t)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete %s: %v\n%s", name, err, out)
		}
	})
	netns, err := ns.GetNS("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Close() })
	inNS(t, netns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	return netns
}

func inNS(t testing.TB, netns ns.NetNS, fn func() error) {
	t.Helper()
	if err := netns.Do(func(ns.NetNS) error { return fn() }); err != nil {
		t.Fatal(err)
	}
}

// lab is one fake node: a namespace standing in for the host (with an
// uplink address the pods can ping), a run dir with node.json, an IPAM data
// dir and a conflist on disk.
type lab struct {
	t        testing.TB
	hostNS   ns.NetNS
	hostIP   netip.Addr
	runDir   string
	dataDir  string
	cacheDir string
	cni      *libcni.CNIConfig
	network  string
}

func newLab(t testing.TB) *lab {
	t.Helper()
	requireRoot(t)
	dir := t.TempDir()
	l := &lab{
		t:        t,
		hostNS:   newNetNS(t, "host"),
		hostIP:   netip.MustParseAddr("192.0.2.1"),
		runDir:   filepath.Join(dir, "run"),
		dataDir:  filepath.Join(dir, "ipam"),
		cacheDir: filepath.Join(dir, "cache"),
		network:  "grapevine",
	}
	l.cni = newCNIConfig([]string{cniBinDir}, l.cacheDir)
	// The host's uplink with the host address and the default route
	// (TestPodWithoutHostDefaultRoute removes it).
	inNS(t, l.hostNS, func() error {
		link, err := addLoopedLink("gvcniuplink")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: l.hostIP.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Scope: netlink.SCOPE_LINK,
			Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}})
	})
	l.writeNodeState("10.244.1.0/24", 1450)
	return l
}

// newCNIConfig is a libcni client safe for concurrent use: without an
// explicit Exec, libcni creates one lazily on first use, racing with itself.
func newCNIConfig(path []string, cacheDir string) *libcni.CNIConfig {
	exec := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}
	return libcni.NewCNIConfigWithCacheDir(path, cacheDir, exec)
}

// addLoopedLink adds a veth pair name/name+"p" in the current namespace, both
// ends up, and returns the first: a stand-in for a physical link (the
// kernel here may lack the dummy driver).
func addLoopedLink(name string) (netlink.Link, error) {
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, Flags: net.FlagUp}, PeerName: name + "p"}
	if err := netlink.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("add %s: %w", name, err)
	}
	peer, err := netlink.LinkByName(name + "p")
	if err != nil {
		return nil, err
	}
	if err := netlink.LinkSetUp(peer); err != nil {
		return nil, err
	}
	return netlink.LinkByName(name)
}

func (l *lab) writeNodeState(block string, mtu int) {
	l.t.Helper()
	l.writeDualStackState(block, "", mtu)
}

// writeDualStackState is writeNodeState with an IPv6 block from
// fd00:10:244::/48 (none when block6 is empty).
func (l *lab) writeDualStackState(block, block6 string, mtu int) {
	l.t.Helper()
	lease, err := nodestate.LeaseFromNow(time.Hour)
	if err != nil {
		l.t.Fatal(err)
	}
	st := nodestate.State{
		Node:   "node-a",
		Block:  netip.MustParsePrefix(block),
		Pool:   netip.MustParsePrefix("10.244.0.0/16"),
		HostIP: l.hostIP,
		MTU:    mtu,
		Lease:  lease,
	}
	if block6 != "" {
		st.Block6, st.Pool6 = netip.MustParsePrefix(block6), netip.MustParsePrefix("fd00:10:244::/48")
	}
	if err := nodestate.Write(l.runDir, st); err != nil {
		l.t.Fatal(err)
	}
}

// conflist is the network configuration the agent writes, with this lab's
// paths, at cniVersion.
func (l *lab) conflist(cniVersion string) *libcni.NetworkConfigList {
	l.t.Helper()
	return l.conflistMTU(cniVersion, 0)
}

// conflistMTU is conflist with an MTU in the plugin config.
func (l *lab) conflistMTU(cniVersion string, mtu int) *libcni.NetworkConfigList {
	l.t.Helper()
	conf := fmt.Sprintf(`{"cniVersion": %q, "name": %q, "plugins": [
	  {"type": "grapevine-cni", "runDir": %q, "mtu": %d, "ipam": {"type": "grapevine-ipam", "dataDir": %q}},
	  {"type": "portmap", "capabilities": {"portMappings": true}}]}`,
		cniVersion, l.network, l.runDir, mtu, l.dataDir)
	path := filepath.Join(l.t.TempDir(), "10-grapevine.conflist")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		l.t.Fatal(err)
	}
	list, err := libcni.ConfListFromFile(path)
	if err != nil {
		l.t.Fatal(err)
	}
	return list
}

// pod is one sandbox: its namespace and the runtime's view of it.
type pod struct {
	netns ns.NetNS
	rt    *libcni.RuntimeConf
}

func (l *lab) newPod(name string) *pod {
	l.t.Helper()
	netns := newNetNS(l.t, "pod")
	return &pod{netns: netns, rt: &libcni.RuntimeConf{
		ContainerID: "c" + randomSuffix(l.t) + randomSuffix(l.t),
		NetNS:       netns.Path(),
		IfName:      "eth0",
		Args:        [][2]string{{"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", name}, {"IgnoreUnknown", "1"}},
	}}
}

// inHost runs fn in the host namespace: plugins libcni executes inherit the
// calling thread's namespace.
func (l *lab) inHost(fn func() error) error {
	return l.hostNS.Do(func(ns.NetNS) error { return fn() })
}

// addRaw is ADD through libcni, the result at the conflist's version.
func (l *lab) addRaw(list *libcni.NetworkConfigList, p *pod) (types.Result, error) {
	var res types.Result
	err := l.inHost(func() error {
		var err error
		res, err = l.cni.AddNetworkList(context.Background(), list, p.rt)
		return err
	})
	return res, err
}

func (l *lab) add(list *libcni.NetworkConfigList, p *pod) (*current.Result, error) {
	res, err := l.addRaw(list, p)
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(res)
}

func (l *lab) mustAdd(list *libcni.NetworkConfigList, p *pod) *current.Result {
	l.t.Helper()
	res, err := l.add(list, p)
	if err != nil {
		l.t.Fatalf("ADD %s: %v", p.rt.ContainerID, err)
	}
	return res
}

func (l *lab) del(list *libcni.NetworkConfigList, p *pod) error {
	return l.inHost(func() error { return l.cni.DelNetworkList(context.Background(), list, p.rt) })
}

func (l *lab) check(list *libcni.NetworkConfigList, p *pod) error {
	return l.inHost(func() error { return l.cni.CheckNetworkList(context.Background(), list, p.rt) })
}

// gc runs the runtime's GC, which names the attachments still valid.
func (l *lab) gc(list *libcni.NetworkConfigList, valid []types.GCAttachment) error {
	return l.inHost(func() error {
		return l.cni.GCNetworkList(context.Background(), list, &libcni.GCArgs{ValidAttachments: valid})
	})
}

// gcKeeping runs GC with keep's eth0 the one valid attachment.
func (l *lab) gcKeeping(list *libcni.NetworkConfigList, keep *pod) {
	l.t.Helper()
	if err := l.gc(list, []types.GCAttachment{{ContainerID: keep.rt.ContainerID, IfName: "eth0"}}); err != nil {
		l.t.Fatalf("GC: %v", err)
	}
}

// hostVeths lists the gv* links in the host namespace.
func (l *lab) hostVeths() []string {
	l.t.Helper()
	var names []string
	inNS(l.t, l.hostNS, func() error {
		links, err := netlink.LinkList()
		for _, link := range links {
			// The lab's own links share the prefix: they are gvcni*.
			name := link.Attrs().Name
			if strings.HasPrefix(name, HostVethPrefix) && !strings.HasPrefix(name, "gvcni") {
				names = append(names, name)
			}
		}
		return err
	})
	return names
}

// reservations lists the addresses reserved in the IPAM store.
func (l *lab) reservations() []string {
	l.t.Helper()
	entries, err := os.ReadDir(filepath.Join(l.dataDir, l.network))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		l.t.Fatal(err)
	}
	var addrs []string
	for _, e := range entries {
		if net.ParseIP(e.Name()) != nil {
			addrs = append(addrs, e.Name())
		}
	}
	return addrs
}

// assertNothingLeft fails unless the host namespace has no pod veth and the
// store holds no reservation.
func (l *lab) assertNothingLeft() {
	l.t.Helper()
	if v := l.hostVeths(); len(v) != 0 {
		l.t.Errorf("host veths left behind: %v", v)
	}
	if r := l.reservations(); len(r) != 0 {
		l.t.Errorf("reservations left behind: %v", r)
	}
}

// forwardIPv6 turns on IPv6 forwarding in the lab's host namespace, as
// the agent does on its host.
func (l *lab) forwardIPv6() {
	l.t.Helper()
	inNS(l.t, l.hostNS, func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1"), 0o644)
	})
}

// assertNoHostRoute6: the host routes pod6 nowhere (after its DEL or GC).
func (l *lab) assertNoHostRoute6(pod6 netip.Addr) {
	l.t.Helper()
	inNS(l.t, l.hostNS, func() error {
		routes, err := netlink.RouteListFiltered(unix.AF_INET6, &netlink.Route{Dst: hostPrefix(pod6)}, netlink.RT_FILTER_DST)
		if len(routes) != 0 {
			l.t.Errorf("host routes to %s left behind: %v", pod6, routes)
		}
		return err
	})
}

// assertNoEth0: a failed ADD took the pod's eth0 with it.
func (l *lab) assertNoEth0(p *pod) {
	l.t.Helper()
	inNS(l.t, p.netns, func() error {
		if _, err := netlink.LinkByName("eth0"); err == nil {
			l.t.Error("pod eth0 survived the failed ADD")
		}
		return nil
	})
}

func readSysctl(t testing.TB, netns ns.NetNS, key string) string {
	t.Helper()
	var v []byte
	inNS(t, netns, func() error {
		var err error
		v, err = os.ReadFile("/proc/sys/" + key)
		return err
	})
	return strings.TrimSpace(string(v))
}

// ping sends one ICMP echo (ICMPv6 for an IPv6 dst) from inside netns to
// dst and waits for the reply.
func ping(t testing.TB, netns ns.NetNS, dst netip.Addr) error {
	t.Helper()
	network, request, reply := "ip4:icmp", byte(8), byte(0)
	if !dst.Is4() {
		// The kernel fills in an ICMPv6 checksum itself.
		network, request, reply = "ip6:ipv6-icmp", 128, 129
	}
	var conn *net.IPConn
	inNS(t, netns, func() error {
		var err error
		conn, err = net.ListenIP(network, nil)
		return err
	})
	defer conn.Close()
	id := os.Getpid() & 0xffff
	echo := []byte{request, 0, 0, 0, byte(id >> 8), byte(id), 0, 1, 'g', 'v'}
	if dst.Is4() {
		sum := icmpChecksum(echo)
		echo[2], echo[3] = byte(sum>>8), byte(sum)
	}
	if _, err := conn.WriteToIP(echo, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return fmt.Errorf("send echo to %s: %w", dst, err)
	}
	buf := make([]byte, 1500)
	// The deadline only bounds a failure; a working path answers at once.
	if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return err
	}
	for {
		n, from, err := conn.ReadFromIP(buf)
		if err != nil {
			return fmt.Errorf("no echo reply from %s: %w", dst, err)
		}
		if n >= 8 && buf[0] == reply && from.IP.Equal(dst.AsSlice()) && int(buf[4])<<8|int(buf[5]) == id {
			return nil
		}
	}
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// hostVethAttachments returns whether an attachment of network has a host
// veth (one carrying its alias) in the current namespace, as the links
// stand now (see hostveth.Attachments): the predicate ipam.CollectStale
// needs to free the addresses of attachments whose pods are gone.
func hostVethAttachments(network string) (func(types.GCAttachment) bool, error) {
	links, err := netlinkdump.Retry(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var aliases []string
	for _, link := range links {
		if isHostVeth(link) {
			aliases = append(aliases, link.Attrs().Alias)
		}
	}
	return hostveth.Attachments(network, aliases), nil
}
