package lab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// VXLANPort is the UDP port Grapevine's VXLAN packets go to.
const VXLANPort = 4789

// Capture counts the IPv4 packets crossing one interface of a namespace, in
// both directions, through an AF_PACKET socket: what tcpdump would show,
// without needing tcpdump.
type Capture struct {
	fd   int
	done chan struct{}
	stop sync.Once

	mu      sync.Mutex
	vxlan   map[[2]netip.Addr]int // UDP to VXLANPort, by outer source and destination
	inner   map[[2]netip.Addr]int // the packets inside those, by source and destination
	plain   map[[2]netip.Addr]int // everything else, by source and destination
	readErr error
}

// Capture starts counting the packets on ifname inside the namespace. Close
// stops it.
func (n Namespace) Capture(ifname string) (*Capture, error) {
	c := &Capture{done: make(chan struct{}),
		vxlan: make(map[[2]netip.Addr]int), inner: make(map[[2]netip.Addr]int), plain: make(map[[2]netip.Addr]int)}
	err := n.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		proto := htons(unix.ETH_P_IP)
		// SOCK_DGRAM: the kernel strips the link header, packets start at IP.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(proto))
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind to %s: %w", ifname, err)
		}
		// A read timeout lets the reader notice Close.
		tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		c.fd = fd
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("capture on %s in %s: %w", ifname, n.Name, err)
	}
	go c.read()
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *Capture) read() {
	defer unix.Close(c.fd)
	buf := make([]byte, 65536)
	for {
		select {
		case <-c.done:
			return
		default:
		}
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			c.mu.Lock()
			c.readErr = err
			c.mu.Unlock()
			return
		}
		c.count(buf[:n])
	}
}

// parseIPv4 returns a packet's addresses, protocol and payload.
func parseIPv4(p []byte) (src, dst netip.Addr, proto byte, payload []byte, ok bool) {
	if len(p) < 20 || p[0]>>4 != 4 {
		return src, dst, 0, nil, false
	}
	ihl := int(p[0]&0x0f) * 4
	if ihl < 20 || len(p) < ihl {
		return src, dst, 0, nil, false
	}
	src = netip.AddrFrom4([4]byte(p[12:16]))
	dst = netip.AddrFrom4([4]byte(p[16:20]))
	return src, dst, p[9], p[ihl:], true
}

func (c *Capture) count(p []byte) {
	src, dst, proto, payload, ok := parseIPv4(p)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	const udpHeader, vxlanHeader, ethHeader = 8, 8, 14
	if proto == unix.IPPROTO_UDP && len(payload) >= udpHeader && binary.BigEndian.Uint16(payload[2:4]) == VXLANPort {
		c.vxlan[[2]netip.Addr{src, dst}]++
		frame := payload[udpHeader:]
		if len(frame) >= vxlanHeader+ethHeader {
			if isrc, idst, _, _, ok := parseIPv4(frame[vxlanHeader+ethHeader:]); ok {
				c.inner[[2]netip.Addr{isrc, idst}]++
			}
		}
		return
	}
	c.plain[[2]netip.Addr{src, dst}]++
}

// Close stops the capture.
func (c *Capture) Close() error {
	c.stop.Do(func() { close(c.done) })
	return nil
}

// Counts is what a capture saw so far.
type Counts struct {
	// VXLAN counts UDP packets to the VXLAN port between the two
	// addresses (either direction), Inner the packets between the two
	// addresses inside VXLAN packets, Plain the packets between the two
	// addresses that were not VXLAN.
	VXLAN, Inner, Plain int
}

// Between counts the packets between a and b, in both directions.
func (c *Capture) Between(a, b netip.Addr) Counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	k1, k2 := [2]netip.Addr{a, b}, [2]netip.Addr{b, a}
	return Counts{VXLAN: c.vxlan[k1] + c.vxlan[k2], Inner: c.inner[k1] + c.inner[k2], Plain: c.plain[k1] + c.plain[k2]}
}

// Total counts every packet: VXLAN ones, the packets inside them, and the
// plain ones whose source or destination is in prefix (all plain ones when
// prefix is the zero Prefix).
func (c *Capture) Total(prefix netip.Prefix) Counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	var t Counts
	for _, n := range c.vxlan {
		t.VXLAN += n
	}
	for k, n := range c.inner {
		if !prefix.IsValid() || prefix.Contains(k[0]) || prefix.Contains(k[1]) {
			t.Inner += n
		}
	}
	for k, n := range c.plain {
		if !prefix.IsValid() || prefix.Contains(k[0]) || prefix.Contains(k[1]) {
			t.Plain += n
		}
	}
	return t
}

// Err reports why the capture stopped reading, if it did.
func (c *Capture) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readErr
}
