package probe

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// echoPayload marks Grapevine's requests in a capture; 8 bytes keep the
// packet at the Ethernet minimum (36 bytes of IP, padded to a 60-byte frame).
var echoPayload = []byte("gvprobe\x00")

// icmpConn is a raw ICMP socket of the calling thread's network namespace.
type icmpConn struct {
	c   *icmp.PacketConn
	buf []byte
}

// Listen opens the raw ICMP socket a Prober sends through, in the calling
// thread's network namespace (the agent's: the host's). It needs
// CAP_NET_RAW. The socket is filtered in the kernel to echo replies, so
// other ICMP traffic of the host never wakes the reader.
func Listen() (Conn, error) {
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

func (k *icmpConn) WriteEcho(dst netip.Addr, id, seq uint16) error {
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: int(id), Seq: int(seq), Data: echoPayload}}
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
		m, err := icmp.ParseMessage(1, k.buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
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
