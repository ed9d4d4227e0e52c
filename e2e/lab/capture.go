package lab

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// VXLANPort is the UDP port Grapevine's VXLAN packets go to.
const VXLANPort = 4789

// Packet is one IPv4 packet a Capture saw.
type Packet struct {
	At       time.Time
	Src, Dst netip.Addr
	Protocol int
	// VXLAN marks UDP to VXLANPort; InnerSrc and InnerDst are then the
	// addresses of the IPv4 packet it carries, if any.
	VXLAN              bool
	InnerSrc, InnerDst netip.Addr
}

func (p Packet) String() string {
	return fmt.Sprintf("%s %s > %s proto %d", p.At.Format("15:04:05.000"), p.Src, p.Dst, p.Protocol)
}

// Capture records the IPv4 packets crossing one interface of a namespace,
// in both directions, as tcpdump would: a raw AF_PACKET socket bound to the
// interface, so the lab needs nothing installed.
type Capture struct {
	fd   int
	done chan struct{}

	mu      sync.Mutex
	packets []Packet
	err     error
}

// Capture starts capturing on iface inside the namespace until Close.
func (n Namespace) Capture(iface string) (*Capture, error) {
	var fd int
	err := n.Do(func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		// ETH_P_ALL: a socket for one protocol sees only incoming packets.
		proto := int(htons(unix.ETH_P_ALL))
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto); err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind packet socket to %s: %w", iface, err)
		}
		// A read wakes up at least every 100 ms, so Close is noticed.
		tv := unix.Timeval{Usec: 100_000}
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	})
	if err != nil {
		return nil, fmt.Errorf("capture on %s in %s: %w", iface, n.Name, err)
	}
	c := &Capture{fd: fd, done: make(chan struct{})}
	go c.read()
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *Capture) read() {
	defer unix.Close(c.fd)
	// The IPv4 header is all we look at, and for VXLAN the inner one: outer
	// IPv4 (up to 60), UDP 8, VXLAN 8, Ethernet 14, inner IPv4 20.
	buf := make([]byte, 128)
	for {
		select {
		case <-c.done:
			return
		default:
		}
		n, from, err := unix.Recvfrom(c.fd, buf, unix.MSG_TRUNC)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); !ok || ll.Protocol != htons(unix.ETH_P_IP) {
			continue
		}
		if n > len(buf) {
			n = len(buf)
		}
		h, err := ipv4.ParseHeader(buf[:n])
		if err != nil {
			continue
		}
		src, _ := netip.AddrFromSlice(h.Src.To4())
		dst, _ := netip.AddrFromSlice(h.Dst.To4())
		pkt := Packet{At: time.Now(), Src: src, Dst: dst, Protocol: h.Protocol}
		decodeVXLAN(&pkt, buf[min(h.Len, n):n])
		c.mu.Lock()
		c.packets = append(c.packets, pkt)
		c.mu.Unlock()
	}
}

// decodeVXLAN marks pkt as VXLAN if its payload is UDP to VXLANPort, and
// reads the addresses of the IPv4 packet inside.
func decodeVXLAN(pkt *Packet, payload []byte) {
	const udpHeader, vxlanHeader, ethHeader = 8, 8, 14
	if pkt.Protocol != unix.IPPROTO_UDP || len(payload) < udpHeader || binary.BigEndian.Uint16(payload[2:4]) != VXLANPort {
		return
	}
	pkt.VXLAN = true
	inner := payload[udpHeader+vxlanHeader:]
	if len(inner) < ethHeader || binary.BigEndian.Uint16(inner[12:14]) != unix.ETH_P_IP {
		return
	}
	if h, err := ipv4.ParseHeader(inner[ethHeader:]); err == nil {
		pkt.InnerSrc, _ = netip.AddrFromSlice(h.Src.To4())
		pkt.InnerDst, _ = netip.AddrFromSlice(h.Dst.To4())
	}
}

// Counts is what a capture saw between two addresses, either direction.
type Counts struct {
	// VXLAN counts UDP packets to VXLANPort between the two as outer
	// addresses, Inner the VXLAN packets carrying packets between the two,
	// Plain the other packets between the two.
	VXLAN, Inner, Plain int
}

// Between counts the packets between a and b, in both directions.
func (c *Capture) Between(a, b netip.Addr) Counts {
	between := func(x, y netip.Addr) bool { return x == a && y == b || x == b && y == a }
	c.mu.Lock()
	defer c.mu.Unlock()
	var n Counts
	for _, p := range c.packets {
		switch {
		case p.VXLAN && between(p.Src, p.Dst):
			n.VXLAN++
		case !p.VXLAN && between(p.Src, p.Dst):
			n.Plain++
		}
		if p.VXLAN && between(p.InnerSrc, p.InnerDst) {
			n.Inner++
		}
	}
	return n
}

// Total counts every VXLAN packet, the VXLAN packets carrying a packet from
// or to prefix, and the plain packets from or to prefix.
func (c *Capture) Total(prefix netip.Prefix) Counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n Counts
	for _, p := range c.packets {
		switch {
		case p.VXLAN:
			n.VXLAN++
			if prefix.Contains(p.InnerSrc) || prefix.Contains(p.InnerDst) {
				n.Inner++
			}
		case prefix.Contains(p.Src) || prefix.Contains(p.Dst):
			n.Plain++
		}
	}
	return n
}

// Err reports why the capture stopped reading, if it did.
func (c *Capture) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Matching returns the packets seen so far whose source or destination lies
// in p.
func (c *Capture) Matching(p netip.Prefix) ([]Packet, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Packet
	for _, pkt := range c.packets {
		if p.Contains(pkt.Src) || p.Contains(pkt.Dst) {
			out = append(out, pkt)
		}
	}
	return out, c.err
}

// Count is how many packets were seen so far.
func (c *Capture) Count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.packets)
}

// Close stops the capture.
func (c *Capture) Close() {
	select {
	case <-c.done:
	default:
		close(c.done)
	}
}

// EchoOutcome is what one ICMP echo request got back.
type EchoOutcome struct {
	// Reply is true for an echo reply from the destination.
	Reply bool
	// Unreachable is true for a "destination unreachable" error about the
	// request; From is the host that sent it and Code its ICMP code.
	Unreachable bool
	From        netip.Addr
	Code        int
	// SendErr is the error of the send itself: a local sender gets "no
	// route to host" from an unreachable route.
	SendErr error
	After   time.Duration
}

// EchoOnce sends one ICMP echo request from inside the namespace to dst and
// reports what came back within wait: a reply, an unreachable error quoting
// the request, or nothing (zero outcome).
func (n Namespace) EchoOnce(ctx context.Context, dst netip.Addr, wait time.Duration) (EchoOutcome, error) {
	var conn *icmp.PacketConn
	err := n.Do(func() (err error) {
		conn, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		return EchoOutcome{}, fmt.Errorf("echo from %s: %w", n.Name, err)
	}
	defer conn.Close()
	var idb [2]byte
	rand.Read(idb[:])
	id := int(binary.BigEndian.Uint16(idb[:]))
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("grapevine lab")}}
	wire, err := msg.Marshal(nil)
	if err != nil {
		return EchoOutcome{}, err
	}
	sent := time.Now()
	if _, err := conn.WriteTo(wire, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return EchoOutcome{SendErr: err, After: time.Since(sent)}, nil
	}
	deadline := sent.Add(wait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetReadDeadline(deadline)
	buf := make([]byte, 1500)
	for {
		size, from, err := conn.ReadFrom(buf)
		if err != nil {
			return EchoOutcome{}, nil // nothing came back in time
		}
		m, err := icmp.ParseMessage(1, buf[:size])
		if err != nil {
			continue
		}
		fromAddr, _ := netip.ParseAddr(from.String())
		switch body := m.Body.(type) {
		case *icmp.Echo:
			if m.Type == ipv4.ICMPTypeEchoReply && body.ID == id && fromAddr == dst {
				return EchoOutcome{Reply: true, From: fromAddr, After: time.Since(sent)}, nil
			}
		case *icmp.DstUnreach:
			if quotesEcho(body.Data, dst, id) {
				return EchoOutcome{Unreachable: true, From: fromAddr, Code: m.Code, After: time.Since(sent)}, nil
			}
		}
	}
}

// quotesEcho reports whether an ICMP error's quoted packet is our echo
// request to dst with the given id.
func quotesEcho(quoted []byte, dst netip.Addr, id int) bool {
	h, err := ipv4.ParseHeader(quoted)
	if err != nil || h.Protocol != 1 || len(quoted) < h.Len+8 {
		return false
	}
	qdst, _ := netip.AddrFromSlice(h.Dst.To4())
	return qdst == dst && int(binary.BigEndian.Uint16(quoted[h.Len+4:])) == id
}
