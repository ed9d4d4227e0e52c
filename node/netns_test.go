package node

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/grapevine-net/grapevine/internal/testneeds"
)

// testNS is a named network namespace (/var/run/netns/gvnode-…) created for
// one test and removed by its cleanup, with a netlink handle into it.
type testNS struct {
	name   string
	path   string
	handle *netlink.Handle
}

// needRoot skips tests that create namespaces when not run as root, and
// fails them in CI, where a skip would hide that they never ran.
func needRoot(tb testing.TB) {
	tb.Helper()
	testneeds.Root(tb, "creating network namespaces")
}

func newTestNS(tb testing.TB) *testNS {
	tb.Helper()
	needRoot(tb)
	suffix := make([]byte, 4)
	rand.Read(suffix)
	name := "gvnode-" + hex.EncodeToString(suffix)
	dir := "/var/run/netns"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		tb.Fatal(err)
	}
	f.Close()
	tb.Cleanup(func() {
		unix.Unmount(path, unix.MNT_DETACH)
		os.Remove(path)
	})

	// Unshare on a thread of its own that is never returned to the
	// runtime: the goroutine exits locked, and Go ends the thread.
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		errc <- unix.Mount(self, path, "none", unix.MS_BIND, "")
	}()
	if err := <-errc; err != nil {
		tb.Fatalf("create namespace %s: %v", name, err)
	}

	fd, err := netns.GetFromPath(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer fd.Close()
	h, err := netlink.NewHandleAt(fd)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(h.Close)
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		tb.Fatal(err)
	}
	return &testNS{name: name, path: path, handle: h}
}

// addLink creates an up link with the given addresses: one end of a veth
// pair whose other end (name+"-p") stays in the namespace, up, as a stand-in
// for the wire (this kernel may lack the dummy driver).
func (n *testNS) addLink(tb testing.TB, name string, addrs ...string) netlink.Link {
	tb.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "-p"}
	if err := n.handle.LinkAdd(veth); err != nil {
		tb.Fatalf("add %s: %v", name, err)
	}
	n.setUp(tb, name+"-p")
	return n.setUp(tb, name, addrs...)
}

func (n *testNS) setUp(tb testing.TB, name string, addrs ...string) netlink.Link {
	tb.Helper()
	l, err := n.handle.LinkByName(name)
	if err != nil {
		tb.Fatal(err)
	}
	for _, a := range addrs {
		if err := n.handle.AddrAdd(l, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix(a))}); err != nil {
			tb.Fatalf("address %s on %s: %v", a, name, err)
		}
	}
	if err := n.handle.LinkSetUp(l); err != nil {
		tb.Fatal(err)
	}
	return l
}

// kernel opens a NetlinkKernel for the namespace.
func (n *testNS) kernel(tb testing.TB) *NetlinkKernel {
	tb.Helper()
	k, err := NewNetlinkKernelAt(n.path)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { k.Close() })
	return k
}

// addAddrNoDAD adds an IPv6 address to an existing link without duplicate
// address detection, so it is usable at once rather than tentative.
func (n *testNS) addAddrNoDAD(tb testing.TB, name, address string) {
	tb.Helper()
	l, err := n.handle.LinkByName(name)
	if err != nil {
		tb.Fatal(err)
	}
	if err := n.handle.AddrAdd(l, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix(address)), Flags: unix.IFA_F_NODAD}); err != nil {
		tb.Fatalf("address %s on %s: %v", address, name, err)
	}
}

// addForeignRoute adds a route with another protocol, as an operator would.
func (n *testNS) addForeignRoute(tb testing.TB, r netlink.Route) {
	tb.Helper()
	if err := n.handle.RouteAdd(&r); err != nil {
		tb.Fatalf("add foreign route %v: %v", r, err)
	}
}

func gatewayRoute(dst, via string, link netlink.Link, proto netlink.RouteProtocol) netlink.Route {
	return netlink.Route{
		Dst:       ipNet(netip.MustParsePrefix(dst)),
		Gw:        net.ParseIP(via),
		LinkIndex: link.Attrs().Index,
		Protocol:  proto,
	}
}
