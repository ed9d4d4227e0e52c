package probe

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// echoPayload marks Grapevine's requests in a capture; 8 bytes keep the
// packet at the Ethernet minimum (36 bytes of IP, padded to a 60-byte frame).
var echoPayload = []byte("gvprobe\x00")

// icmpConn is a raw ICMP (or ICMPv6) socket of the calling thread's
// network namespace.
type icmpConn struct {
	c   *icmp.PacketConn
	buf []byte
	// v6: an ICMPv6 socket, whose messages have other types and protocol
	// number.
	v6 bool
}

// Listen opens the raw sockets a Prober sends through, in the calling
// thread's network namespace (the agent's: the host's): ICMP for IPv4 hosts
// and, where the kernel has IPv6, ICMPv6 for IPv6 hosts (peers' IPv6 host
// addresses, the next hops of their IPv6 blocks). It needs CAP_NET_RAW.
// Each socket is filtered in the kernel to echo replies, so other ICMP
// traffic of the host never wakes the reader.
func Listen() (Conn, error) {
	c4, err := listen4()
	if err != nil {
		return nil, err
	}
	c6, err := listen6()
	if err != nil {
		// A kernel without IPv6 (ipv6.disable=1) has no IPv6 hosts to
		// reach either: a request to one fails to send and counts as
		// unanswered.
		return c4, nil
	}
	return newDualConn(c4, c6), nil
}

func listen4() (*icmpConn, error) {
	c, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return nil, fmt.Errorf("open raw ICMP socket (needs CAP_NET_RAW): %w", err)
	}
	var f ipv4.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv4.ICMPTypeEchoReply)
	if err := c.IPv4PacketConn().SetICMPFilter(&f); err != nil {
		c.Close()
		return nil, fmt.Errorf("filter raw ICMP socket: %w", err)
	}
	return &icmpConn{c: c, buf: make([]byte, 1500)}, nil
}

func listen6() (*icmpConn, error) {
	c, err := icmp.ListenPacket("ip6:ipv6-icmp", "::")
	if err != nil {
		return nil, fmt.Errorf("open raw ICMPv6 socket (needs CAP_NET_RAW): %w", err)
	}
	var f ipv6.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv6.ICMPTypeEchoReply)
	if err := c.IPv6PacketConn().SetICMPFilter(&f); err != nil {
		c.Close()
		return nil, fmt.Errorf("filter raw ICMPv6 socket: %w", err)
	}
	return &icmpConn{c: c, buf: make([]byte, 1500), v6: true}, nil
}

func (k *icmpConn) WriteEcho(dst netip.Addr, id, seq uint16) error {
	var echo icmp.Type = ipv4.ICMPTypeEcho
	if k.v6 {
		// The kernel computes an ICMPv6 socket's checksums.
		echo = ipv6.ICMPTypeEchoRequest
	}
	msg := icmp.Message{Type: echo, Body: &icmp.Echo{ID: int(id), Seq: int(seq), Data: echoPayload}}
	wire, err := msg.Marshal(nil)
	if err != nil {
		return err
	}
	_, err = k.c.WriteTo(wire, &net.IPAddr{IP: dst.AsSlice()})
	return err
}

func (k *icmpConn) ReadEcho() (netip.Addr, uint16, uint16, error) {
	for {
		n, from, err := k.c.ReadFrom(k.buf)
		if errors.Is(err, net.ErrClosed) {
			return netip.Addr{}, 0, 0, ErrClosed
		}
		if err != nil {
			return netip.Addr{}, 0, 0, err
		}
		proto, reply := 1, icmp.Type(ipv4.ICMPTypeEchoReply)
		if k.v6 {
			proto, reply = 58, ipv6.ICMPTypeEchoReply
		}
		m, err := icmp.ParseMessage(proto, k.buf[:n])
		if err != nil || m.Type != reply {
			continue
		}
		echo, ok := m.Body.(*icmp.Echo)
		ipAddr, isIP := from.(*net.IPAddr)
		if !ok || !isIP {
			continue
		}
		src, ok := netip.AddrFromSlice(ipAddr.IP)
		if !ok {
			continue
		}
		return src.Unmap(), uint16(echo.ID), uint16(echo.Seq), nil
	}
}

func (k *icmpConn) Close() error { return k.c.Close() }

// dualConn is an ICMP and an ICMPv6 socket as one Conn: requests go out on
// the socket of the destination's family, replies of both come in through
// ReadEcho.
type dualConn struct {
	c4, c6  *icmpConn
	replies chan echoReply
	done    chan struct{}
	close   sync.Once
}

type echoReply struct {
	from    netip.Addr
	id, seq uint16
	err     error
}

// newDualConn starts a reader per socket; both end with Close.
func newDualConn(c4, c6 *icmpConn) *dualConn {
	d := &dualConn{c4: c4, c6: c6, replies: make(chan echoReply), done: make(chan struct{})}
	for _, c := range []*icmpConn{c4, c6} {
		go d.read(c)
	}
	return d
}

func (d *dualConn) read(c *icmpConn) {
	for {
		from, id, seq, err := c.ReadEcho()
		select {
		case d.replies <- echoReply{from, id, seq, err}:
		case <-d.done:
			return
		}
		if err != nil {
			return
		}
	}
}

func (d *dualConn) WriteEcho(dst netip.Addr, id, seq uint16) error {
	if dst.Is4() || dst.Is4In6() {
		return d.c4.WriteEcho(dst.Unmap(), id, seq)
	}
	return d.c6.WriteEcho(dst, id, seq)
}

// ReadEcho returns the next reply of either socket, or the first error
// either reader met (ErrClosed after Close).
func (d *dualConn) ReadEcho() (netip.Addr, uint16, uint16, error) {
	select {
	case r := <-d.replies:
		return r.from, r.id, r.seq, r.err
	case <-d.done:
		return netip.Addr{}, 0, 0, ErrClosed
	}
}

func (d *dualConn) Close() error {
	var err error
	d.close.Do(func() {
		close(d.done)
		err = errors.Join(d.c4.Close(), d.c6.Close())
	})
	return err
}
