package probe

import (
	"errors"
	"net/netip"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/grapevine-net/grapevine/internal/testneeds"
)

// listenInNewNetns opens the real raw socket in a network namespace of its
// own with only lo up: every 127.0.0.0/8 address answers there, anything
// else has no route. The namespace goes away with the socket.
func listenInNewNetns(tb testing.TB) Conn {
	tb.Helper()
	testneeds.Root(tb, "a network namespace with a raw ICMP socket")
	type result struct {
		c   Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread is never unlocked: it ends with the goroutine, and
		// the namespace stays alive through the socket.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ch <- result{err: err}
			return
		}
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			ch <- result{err: err}
			return
		}
		c, err := Listen()
		ch <- result{c, err}
	}()
	r := <-ch
	if r.err != nil {
		tb.Fatal(r.err)
	}
	tb.Cleanup(func() { r.c.Close() })
	return r.c
}

// TestListenEcho: the kernel answers our requests on the real socket, and a
// destination without a route fails the send.
func TestListenEcho(t *testing.T) {
	c := listenInNewNetns(t)
	dst := netip.MustParseAddr("127.0.0.7")
	if err := c.WriteEcho(dst, 4242, 17); err != nil {
		t.Fatal(err)
	}
	from, id, seq, err := c.ReadEcho()
	if err != nil || from != dst || id != 4242 || seq != 17 {
		t.Fatalf("reply: from %s id %d seq %d err %v", from, id, seq, err)
	}
	if err := c.WriteEcho(netip.MustParseAddr("192.0.2.1"), 4242, 18); err == nil {
		t.Fatal("send to an address without a route succeeded")
	} else if !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("send without a route: %v, want ENETUNREACH", err)
	}
}

// TestListenEcho6: the same socket pair asks IPv6 hosts over ICMPv6 and
// IPv4 hosts over ICMP, and reads the replies of both.
func TestListenEcho6(t *testing.T) {
	c := listenInNewNetns(t)
	want := map[netip.Addr]uint16{netip.MustParseAddr("::1"): 21, netip.MustParseAddr("127.0.0.9"): 22}
	for dst, seq := range want {
		if err := c.WriteEcho(dst, 4242, seq); err != nil {
			t.Fatalf("to %s: %v", dst, err)
		}
	}
	for range want {
		from, id, seq, err := c.ReadEcho()
		if err != nil || id != 4242 || want[from] != seq {
			t.Fatalf("reply: from %s id %d seq %d err %v", from, id, seq, err)
		}
		delete(want, from)
	}
	if err := c.WriteEcho(netip.MustParseAddr("2001:db8::1"), 4242, 23); !errors.Is(err, syscall.ENETUNREACH) {
		t.Errorf("send to an IPv6 address without a route: %v, want ENETUNREACH", err)
	}
	c.Close()
	if _, _, _, err := c.ReadEcho(); !errors.Is(err, ErrClosed) {
		t.Errorf("ReadEcho after Close: %v, want ErrClosed", err)
	}
}

// BenchmarkProbeRound256 measures one probing round at 256 peers: 256 echo
// requests sent and their 256 replies read and recorded, on loopback in a
// namespace of its own. cpu-us/round is the process's CPU time (user and
// system, the kernel's replies included) per round; at the default of one
// round a second it is also the CPU cost per second.
func BenchmarkProbeRound256(b *testing.B) {
	conn := listenInNewNetns(b)
	// Each round is an interval after the last, so every host is due.
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	p, err := New(Config{Now: now}, conn)
	if err != nil {
		b.Fatal(err)
	}
	hosts := make([]netip.Addr, 256)
	for i := range hosts {
		hosts[i] = netip.AddrFrom4([4]byte{127, 0, byte(1 + i/250), byte(1 + i%250)})
	}
	p.Watch(hosts)
	replies := make(chan struct{}, 1024)
	go func() {
		for {
			from, id, seq, err := conn.ReadEcho()
			if err != nil {
				return
			}
			p.mu.Lock()
			counted, _ := p.targets.reply(from, seq, now())
			p.mu.Unlock()
			if counted && id == p.id {
				replies <- struct{}{}
			}
		}
	}()
	var before unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &before)
	rounds := 0
	for b.Loop() {
		clock.Add(int64(DefaultInterval))
		p.tick()
		for range hosts {
			select {
			case <-replies:
			case <-time.After(5 * time.Second):
				b.Fatal("a reply did not come back")
			}
		}
		rounds++
	}
	var after unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano()+after.Stime.Nano()-before.Utime.Nano()-before.Stime.Nano()) * time.Nanosecond
	b.ReportMetric(float64(cpu.Microseconds())/float64(rounds), "cpu-us/round")
	for _, v := range p.Verdicts() {
		if !v.Up {
			b.Fatalf("a loopback host is down: %+v", v)
		}
	}
}
