package enforce

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"
	cniversion "github.com/containernetworking/cni/pkg/version"
	"github.com/google/nftables"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/internal/testneeds"
	"github.com/grapevine-net/grapevine/netpol"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// buildCNIPlugins returns $GRAPEVINE_CNI_PATH when set (make test), or builds
// grapevine-cni and grapevine-ipam into a temporary directory.
func buildCNIPlugins(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("GRAPEVINE_CNI_PATH"); dir != "" {
		return dir
	}
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "../../cmd/grapevine-cni", "../../cmd/grapevine-ipam")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the CNI plugins: %v\n%s", err, out)
	}
	return dir
}

// netnsFor adds a network namespace with loopback up, removed when the test
// ends.
func netnsFor(t *testing.T, name string) lab.Namespace {
	t.Helper()
	n := lab.Namespace{Name: name}
	netnsRun(t, "ip", "netns", "add", n.Name)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := lab.Run(ctx, "ip", "netns", "del", n.Name); err != nil {
			t.Errorf("remove namespace %s: %v", n.Name, err)
		}
	})
	netnsRun(t, "ip", "-n", n.Name, "link", "set", "lo", "up")
	return n
}

func netnsRun(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := lab.Run(ctx, args[0], args[1:]...); err != nil {
		t.Fatal(err)
	}
}

// udpPeer is a UDP socket in a namespace that answers every datagram and
// counts them by source address.
type udpPeer struct {
	conn net.PacketConn
	mu   sync.Mutex
	from map[netip.Addr]int
}

func listenUDP(t *testing.T, n lab.Namespace, addr string) *udpPeer {
	t.Helper()
	p := &udpPeer{from: make(map[netip.Addr]int)}
	if err := n.Do(func() (err error) {
		p.conn, err = net.ListenPacket("udp", addr) // 0.0.0.0: IPv4 and IPv6
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.conn.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			m, from, err := p.conn.ReadFrom(buf)
			if err != nil {
				return
			}
			if a, ok := netip.AddrFromSlice(from.(*net.UDPAddr).IP); ok {
				p.mu.Lock()
				p.from[a.Unmap()]++
				p.mu.Unlock()
			}
			p.conn.WriteTo(buf[:m], from)
		}
	}()
	return p
}

func (p *udpPeer) count(from netip.Addr) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.from[from]
}

func (p *udpPeer) total() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, c := range p.from {
		n += c
	}
	return n
}

// sendEvery sends a datagram from n to each of dsts every interval until
// ctx ends, and returns how many sends the kernel took (a pod without its
// interface yet has no route, and its sends fail).
func sendEvery(ctx context.Context, t *testing.T, n lab.Namespace, dsts []netip.AddrPort, interval time.Duration) *atomic.Int64 {
	t.Helper()
	var conn net.PacketConn
	if err := n.Do(func() (err error) {
		conn, err = net.ListenPacket("udp", "0.0.0.0:0") // sends to IPv4 and IPv6
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var sent atomic.Int64
	var sending sync.WaitGroup
	t.Cleanup(func() { conn.Close(); sending.Wait() })
	sending.Go(func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			for _, d := range dsts {
				if _, err := conn.WriteTo([]byte("flood"), net.UDPAddrFromAddrPort(d)); err == nil {
					sent.Add(1)
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
	return &sent
}

// askOnce sends one datagram from n to dst and waits for its answer: the
// first packet of a flow, with no retry.
func askOnce(n lab.Namespace, dst netip.AddrPort) error {
	var conn net.PacketConn
	if err := n.Do(func() (err error) {
		conn, err = net.ListenPacket("udp", "0.0.0.0:0") // sends to IPv4 and IPv6
		return err
	}); err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.WriteTo([]byte("first"), net.UDPAddrFromAddrPort(dst)); err != nil {
		return fmt.Errorf("send to %s: %w", dst, err)
	}
	// The deadline only bounds a failure; an allowed path answers at once.
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 64)
	if _, _, err := conn.ReadFrom(buf); err != nil {
		return fmt.Errorf("no answer from %s to the first packet: %w", dst, err)
	}
	return nil
}

// TestNoPacketBeforeThePodsPolicy drives the real grapevine-cni (ADD
// through libcni) on a host namespace whose table the real enforcer keeps,
// fed by a fake API in which the pods exist, without addresses, before
// ADD, as the kubelet has them. The node is dual-stack, and both families
// are held to the same: while an outside host floods every address of the
// node's blocks and a pod selected by a default-deny policy sends from
// before its interface exists, not one packet passes either way; a
// pod no policy selects answers the first packet sent to it and gets an
// answer to its own first packet, and receives the flood.
func TestNoPacketBeforeThePodsPolicy(t *testing.T) {
	testneeds.Root(t, "creating network namespaces, veths and an nftables table in them")
	binDir := buildCNIPlugins(t)
	suffix := make([]byte, 3)
	rand.Read(suffix)
	prefix := "gvfp-" + hex.EncodeToString(suffix) + "-"
	host := netnsFor(t, prefix+"host")
	outside := netnsFor(t, prefix+"out")
	if err := host.Do(func() error {
		return errors.Join(
			os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644),
			os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1"), 0o644))
	}); err != nil {
		t.Fatal(err)
	}
	netnsRun(t, "ip", "-n", host.Name, "link", "add", "gvfpout", "type", "veth", "peer", "name", "eth0", "netns", outside.Name)
	netnsRun(t, "ip", "-n", host.Name, "addr", "add", "192.168.9.1/24", "dev", "gvfpout")
	netnsRun(t, "ip", "-n", host.Name, "link", "set", "gvfpout", "up")
	netnsRun(t, "ip", "-n", outside.Name, "addr", "add", "192.168.9.2/24", "dev", "eth0")
	netnsRun(t, "ip", "-n", outside.Name, "link", "set", "eth0", "up")
	netnsRun(t, "ip", "-n", outside.Name, "route", "add", "default", "via", "192.168.9.1")
	netnsRun(t, "ip", "-n", host.Name, "-6", "addr", "add", "fd00:99::1/64", "dev", "gvfpout", "nodad")
	netnsRun(t, "ip", "-n", outside.Name, "-6", "addr", "add", "fd00:99::2/64", "dev", "eth0", "nodad")
	netnsRun(t, "ip", "-n", outside.Name, "-6", "route", "add", "default", "via", "fd00:99::1")
	outsideAddr := netip.MustParseAddr("192.168.9.2")
	outsideAddr6 := netip.MustParseAddr("fd00:99::2")

	// The node: node.json names the admission socket, as the agent
	// writes it with --policy-socket.
	dir := t.TempDir()
	runDir := filepath.Join(dir, "run")
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		t.Fatal(err)
	}
	block := netip.MustParsePrefix("10.244.1.0/28")
	block6 := netip.MustParsePrefix("fd00:10:244:1::/120")
	lease, err := nodestate.LeaseFromNow(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(runDir, SocketName)
	if err := nodestate.Write(runDir, nodestate.State{
		Node: "node-a", Block: block, Pool: netip.MustParsePrefix("10.244.0.0/16"),
		Block6: block6, Pool6: netip.MustParsePrefix("fd00:10:244::/48"),
		HostIP: netip.MustParseAddr("192.168.9.1"), MTU: 1500, Lease: lease, PolicySocket: socket,
	}); err != nil {
		t.Fatal(err)
	}

	// The enforcer, on the host namespace's nftables, with the blocks of
	// node.json.
	fake := newFakePolicyAPI()
	kernel, err := netpol.NewNFTKernelAt(host.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kernel.Close() })
	e, err := New(Config{API: fake.api(), NodeName: "node-a", Socket: socket, Kernel: kernel,
		Blocks: NodeStateBlocks(runDir), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := runEnforcer(t, e)
	fake.namespaces.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}})
	fake.policies.Add(&networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "deny-all"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "denied"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
		},
	})
	for _, app := range []string{"denied", "allowed"} {
		fake.pods.Add(&corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: app, Labels: map[string]string{"app": app}},
			Spec:       corev1.PodSpec{NodeName: "node-a"},
			Status:     corev1.PodStatus{Phase: corev1.PodPending},
		})
	}
	waitFor(t, "the enforcer's first ruleset", func() error {
		if st := e.Status(time.Now()); st.LastSync.IsZero() || st.Policies != 1 {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})

	// The pods' sandboxes, listening before they have an interface.
	deniedNS := netnsFor(t, prefix+"denied")
	allowedNS := netnsFor(t, prefix+"allowed")
	deniedIn := listenUDP(t, deniedNS, "0.0.0.0:7")
	allowedIn := listenUDP(t, allowedNS, "0.0.0.0:7")
	outsideIn := listenUDP(t, outside, "0.0.0.0:7")

	floodCtx, stopFlood := context.WithCancel(ctx)
	defer stopFlood()
	var everyPod []netip.AddrPort
	for a := block.Addr().Next(); block.Contains(a); a = a.Next() {
		everyPod = append(everyPod, netip.AddrPortFrom(a, 7))
	}
	sendEvery(floodCtx, t, outside, everyPod, time.Millisecond)
	// block6 has 255 addresses: flooded less often, each still many
	// times during an ADD.
	var everyPod6 []netip.AddrPort
	for a := block6.Addr().Next(); block6.Contains(a); a = a.Next() {
		everyPod6 = append(everyPod6, netip.AddrPortFrom(a, 7))
	}
	sendEvery(floodCtx, t, outside, everyPod6, 10*time.Millisecond)
	deniedSent := sendEvery(floodCtx, t, deniedNS, []netip.AddrPort{netip.AddrPortFrom(outsideAddr, 7), netip.AddrPortFrom(outsideAddr6, 7)}, time.Millisecond)

	cni := libcni.NewCNIConfigWithCacheDir([]string{binDir}, filepath.Join(dir, "cni-cache"),
		&invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: cniversion.PluginDecoder{}})
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "grapevine", "plugins": [
	  {"type": "grapevine-cni", "runDir": %q, "ipam": {"type": "grapevine-ipam", "dataDir": %q}}]}`, runDir, filepath.Join(dir, "ipam"))
	list, err := libcni.ConfListFromBytes([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	add := func(name string, n lab.Namespace) (addr, addr6 netip.Addr) {
		t.Helper()
		rt := &libcni.RuntimeConf{
			ContainerID: "c-" + name + "-" + hex.EncodeToString(suffix), NetNS: n.Path(), IfName: "eth0",
			Args: [][2]string{{"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", name}, {"IgnoreUnknown", "1"}},
		}
		if err := host.Do(func() error {
			res, err := cni.AddNetworkList(ctx, list, rt)
			if err != nil {
				return err
			}
			r, err := current.NewResultFromResult(res)
			if err != nil {
				return err
			}
			for _, ip := range r.IPs {
				a, ok := netip.AddrFromSlice(ip.Address.IP)
				switch a = a.Unmap(); {
				case ok && block.Contains(a):
					addr = a
				case ok && block6.Contains(a):
					addr6 = a
				}
			}
			return nil
		}); err != nil {
			t.Fatalf("ADD %s: %v", name, err)
		}
		if !addr.IsValid() || !addr6.IsValid() {
			t.Fatalf("ADD %s: no address of %s and of %s in the result", name, block, block6)
		}
		return addr, addr6
	}
	began := time.Now()
	denied, denied6 := add("denied", deniedNS)
	deniedAdd := time.Since(began)
	began = time.Now()
	allowed, allowed6 := add("allowed", allowedNS)
	allowedAdd := time.Since(began)

	// Answered at once, with no retry: the allowed pod's first packets.
	if err := askOnce(allowedNS, netip.AddrPortFrom(outsideAddr, 7)); err != nil {
		t.Errorf("allowed pod, egress: %v", err)
	}
	if err := askOnce(outside, netip.AddrPortFrom(allowed, 7)); err != nil {
		t.Errorf("allowed pod, ingress: %v", err)
	}
	if err := askOnce(allowedNS, netip.AddrPortFrom(outsideAddr6, 7)); err != nil {
		t.Errorf("allowed pod, IPv6 egress: %v", err)
	}
	if err := askOnce(outside, netip.AddrPortFrom(allowed6, 7)); err != nil {
		t.Errorf("allowed pod, IPv6 ingress: %v", err)
	}
	// The flood reaches the allowed pod, and the denied pod has been
	// sending on its interface.
	waitFor(t, "flood packets at the allowed pod and sends from the denied pod", func() error {
		if allowedIn.count(outsideAddr) < 100 || allowedIn.count(outsideAddr6) < 10 || deniedSent.Load() < 100 {
			return fmt.Errorf("allowed pod received %d and %d over IPv6, denied pod sent %d",
				allowedIn.count(outsideAddr), allowedIn.count(outsideAddr6), deniedSent.Load())
		}
		return nil
	})
	stopFlood()
	if n := deniedIn.total(); n != 0 {
		t.Errorf("the denied pod received %d packets", n)
	}
	if n := outsideIn.count(denied) + outsideIn.count(denied6); n != 0 {
		t.Errorf("%d packets from the denied pod reached the outside", n)
	}
	drops, err := e.drops()
	if err != nil {
		t.Fatal(err)
	}
	if drops.PolicyPackets == 0 {
		t.Errorf("drops %+v: the denied pod's policy dropped nothing", drops)
	}
	t.Logf("ADD with the enforcer's answer took %v (denied) and %v (allowed); allowed pod %s, %s received %d flood packets, %d over IPv6; denied pod %s, %s sent %d, received 0; drops %+v",
		deniedAdd, allowedAdd, allowed, allowed6, allowedIn.count(outsideAddr), allowedIn.count(outsideAddr6), denied, denied6, deniedSent.Load(), drops)
}

// watchedKernel is an NFTKernel that counts the signals of its Watch as
// the enforcer takes them: the first tells the test that watching has
// started.
type watchedKernel struct {
	*netpol.NFTKernel
	signals atomic.Int64
}

func (k *watchedKernel) Watch(ctx context.Context) <-chan struct{} {
	in := k.NFTKernel.Watch(ctx)
	out := make(chan struct{})
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-in:
			}
			k.signals.Add(1)
			select {
			case <-ctx.Done():
				return
			case out <- struct{}{}:
			}
		}
	}()
	return out
}

// TestPolicyTableDeletedIsWrittenAgain runs the enforcer on a real table
// with the resync and the safety net an hour away, deletes the table as
// another tool would, and waits until it is back: only Watch can have
// brought it back. A denied connection is denied again then.
func TestPolicyTableDeletedIsWrittenAgain(t *testing.T) {
	testneeds.Root(t, "creating network namespaces, veths and an nftables table in them")
	suffix := make([]byte, 3)
	rand.Read(suffix)
	prefix := "gvtw-" + hex.EncodeToString(suffix) + "-"
	host := netnsFor(t, prefix+"host")
	outside := netnsFor(t, prefix+"out")
	podNS := netnsFor(t, prefix+"pod")
	if err := host.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	for _, l := range []struct {
		peer          lab.Namespace
		hostVeth      string
		hostAddr, net string
		peerAddr, gw  string
	}{
		{outside, "gvtwout", "192.168.9.1/24", "", "192.168.9.2/24", "192.168.9.1"},
		{podNS, "gvtwpod", "10.244.1.1/24", "", "10.244.1.2/24", "10.244.1.1"},
	} {
		netnsRun(t, "ip", "-n", host.Name, "link", "add", l.hostVeth, "type", "veth", "peer", "name", "eth0", "netns", l.peer.Name)
		netnsRun(t, "ip", "-n", host.Name, "addr", "add", l.hostAddr, "dev", l.hostVeth)
		netnsRun(t, "ip", "-n", host.Name, "link", "set", l.hostVeth, "up")
		netnsRun(t, "ip", "-n", l.peer.Name, "addr", "add", l.peerAddr, "dev", "eth0")
		netnsRun(t, "ip", "-n", l.peer.Name, "link", "set", "eth0", "up")
		netnsRun(t, "ip", "-n", l.peer.Name, "route", "add", "default", "via", l.gw)
	}
	podAddr := netip.MustParseAddr("10.244.1.2")
	listenUDP(t, podNS, "0.0.0.0:7")
	toPod := netip.AddrPortFrom(podAddr, 7)
	if err := askOnce(outside, toPod); err != nil {
		t.Fatalf("before any policy: %v", err)
	}

	nft, err := netpol.NewNFTKernelAt(host.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nft.Close() })
	kernel := &watchedKernel{NFTKernel: nft}
	fake := newFakePolicyAPI()
	reg := prometheus.NewRegistry()
	e, err := New(Config{API: fake.api(), NodeName: "node-a", Kernel: kernel, Registerer: reg,
		Resync: time.Hour, Rewrite: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	runEnforcer(t, e)
	fake.namespaces.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}})
	fake.pods.Add(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "denied", Labels: map[string]string{"app": "denied"}},
		Spec:       corev1.PodSpec{NodeName: "node-a"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: podAddr.String()},
	})
	fake.policies.Add(&networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "deny-all"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "denied"}},
		},
	})
	waitFor(t, "the pod's policy in force and watching started", func() error {
		if st := e.Status(time.Now()); st.Pods != 1 || kernel.signals.Load() == 0 {
			return fmt.Errorf("status %+v, %d signals", st, kernel.signals.Load())
		}
		return nil
	})
	if err := askOnce(outside, toPod); err == nil {
		t.Fatal("the pod answered despite its default-deny policy")
	}

	// Someone else deletes the table.
	fd, err := os.Open(host.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(fd.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	ours := &nftables.Table{Family: nftables.TableFamilyINet, Name: netpol.TableName}
	conn.DelTable(ours)
	deleted := time.Now()
	if err := conn.Flush(); err != nil {
		t.Fatal(err)
	}
	var back time.Duration
	// Polled every millisecond, so that back measures the enforcer, not
	// the poll; the minute only bounds a failure.
	pollCtx, stopPoll := context.WithTimeout(context.Background(), time.Minute)
	defer stopPoll()
	if err := poll.Until(pollCtx, "table inet "+netpol.TableName+" back", time.Millisecond, func() error {
		chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			return err
		}
		for _, c := range chains {
			if c.Table.Name == netpol.TableName {
				back = time.Since(deleted)
				return nil
			}
		}
		return errors.New("no chain of table inet " + netpol.TableName)
	}); err != nil {
		t.Fatal(err)
	}
	if err := askOnce(outside, toPod); err == nil {
		t.Error("the pod answered after its table came back")
	}
	if got := testutil.ToFloat64(e.writes.WithLabelValues("tampered")); got != 1 {
		t.Errorf("%v writes counted as tampered, want 1", got)
	}
	t.Logf("table inet %s back %v after its deletion (polled every 1 ms); %d watch signals", netpol.TableName, back, kernel.signals.Load())
}
