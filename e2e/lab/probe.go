package lab

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/grapevine-net/grapevine/internal/poll"
)

// Ping sends ICMP echo requests (ICMPv6 to an IPv6 dst) from inside the
// namespace to dst until one is answered or ctx ends, and returns the
// round-trip time of the answer. The lab carries its own ping so it needs
// nothing installed beyond iproute2.
func (n Namespace) Ping(ctx context.Context, dst netip.Addr) (time.Duration, error) {
	conn, err := n.icmpConn(dst)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	return ping(ctx, conn, dst)
}

// PingOnce sends one echo request from inside the namespace to dst and
// waits up to wait for its answer: whether the first packet of a flow gets
// through, which Ping's retries would hide.
func (n Namespace) PingOnce(dst netip.Addr, wait time.Duration) (time.Duration, error) {
	conn, err := n.icmpConn(dst)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	rtt, answered, err := echo(conn, dst, newEchoID(), 1, time.Now().Add(wait))
	if err != nil {
		return 0, fmt.Errorf("ping %s once from %s: %w", dst, n.Name, err)
	}
	if !answered {
		return 0, fmt.Errorf("ping %s once from %s: no answer within %v", dst, n.Name, wait)
	}
	return rtt, nil
}

// icmpConn opens an ICMP socket of dst's family inside the namespace.
func (n Namespace) icmpConn(dst netip.Addr) (conn *icmp.PacketConn, err error) {
	err = n.Do(func() (err error) {
		if dst.Is6() && !dst.Is4In6() {
			conn, err = icmp.ListenPacket("ip6:ipv6-icmp", "::")
			return err
		}
		conn, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ping from %s: %w", n.Name, err)
	}
	return conn, nil
}

// Ping pings dst from the calling process's namespace (see Namespace.Ping).
func Ping(ctx context.Context, dst netip.Addr) (time.Duration, error) {
	conn, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return 0, fmt.Errorf("ping: %w", err)
	}
	defer conn.Close()
	return ping(ctx, conn, dst)
}

func ping(ctx context.Context, conn *icmp.PacketConn, dst netip.Addr) (time.Duration, error) {
	id := newEchoID()
	for seq := 1; ; seq++ {
		deadline := time.Now().Add(time.Second)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		rtt, answered, err := echo(conn, dst, id, seq, deadline)
		if err != nil {
			// Unreachable routes fail the send itself; retry until ctx ends.
			if waitErr := poll.Sleep(ctx, 200*time.Millisecond); waitErr != nil {
				return 0, fmt.Errorf("ping %s: %w (last: %w)", dst, waitErr, err)
			}
			continue
		}
		if answered {
			return rtt, nil
		}
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("ping %s: no answer: %w", dst, err)
		}
	}
}

func newEchoID() int {
	var idb [2]byte
	rand.Read(idb[:])
	return int(binary.BigEndian.Uint16(idb[:]))
}

// echo sends one echo request (id, seq) to dst and reads until its answer
// or deadline. err is the send's failure; answered is false when nothing
// came back in time.
func echo(conn *icmp.PacketConn, dst netip.Addr, id, seq int, deadline time.Time) (rtt time.Duration, answered bool, err error) {
	var request, answer icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	proto := 1 // ICMP
	if dst.Is6() && !dst.Is4In6() {
		// The kernel fills in an ICMPv6 checksum itself.
		request, answer, proto = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply, 58
	}
	msg := icmp.Message{Type: request, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("grapevine lab")}}
	wire, err := msg.Marshal(nil)
	if err != nil {
		return 0, false, err
	}
	sent := time.Now()
	if _, err := conn.WriteTo(wire, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return 0, false, err
	}
	conn.SetReadDeadline(deadline)
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			return 0, false, nil // timed out
		}
		reply, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || reply.Type != answer {
			continue
		}
		if e, ok := reply.Body.(*icmp.Echo); ok && e.ID == id && e.Seq == seq && from.String() == dst.String() {
			return time.Since(sent), true, nil
		}
	}
}

// ServeEcho accepts connections on ln until it is closed. Each connection is
// greeted with one line naming the address the server saw the client come
// from (which shows whether the client was masqueraded), then every line the
// client sends is echoed back.
func ServeEcho(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go func() {
			defer c.Close()
			if _, err := fmt.Fprintf(c, "from %s\n", c.RemoteAddr()); err != nil {
				return
			}
			io.Copy(c, c)
		}()
	}
}

// EchoConn is a client connection to ServeEcho.
type EchoConn struct {
	net.Conn
	// Source is the client address the server saw.
	Source netip.AddrPort
	r      *bufio.Reader
}

// NewEchoConn reads the server's greeting from c.
func NewEchoConn(c net.Conn) (*EchoConn, error) {
	e := &EchoConn{Conn: c, r: bufio.NewReader(c)}
	line, err := e.r.ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("echo greeting from %s: %w", c.RemoteAddr(), err)
	}
	src, ok := strings.CutPrefix(strings.TrimSpace(line), "from ")
	if !ok {
		return nil, fmt.Errorf("echo greeting from %s: unexpected %q", c.RemoteAddr(), line)
	}
	if e.Source, err = netip.ParseAddrPort(src); err != nil {
		return nil, fmt.Errorf("echo greeting from %s: %w", c.RemoteAddr(), err)
	}
	return e, nil
}

// RoundTrip sends one line and waits for it to come back.
func (e *EchoConn) RoundTrip(msg string) error {
	if strings.Contains(msg, "\n") {
		return errors.New("echo: message must be a single line")
	}
	if _, err := io.WriteString(e.Conn, msg+"\n"); err != nil {
		return fmt.Errorf("echo to %s: %w", e.RemoteAddr(), err)
	}
	got, err := e.r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("echo from %s: %w", e.RemoteAddr(), err)
	}
	if got != msg+"\n" {
		return fmt.Errorf("echo from %s: sent %q, got %q back", e.RemoteAddr(), msg, got)
	}
	return nil
}

// DialEcho connects from inside the namespace to a ServeEcho server and
// reads its greeting. It retries until ctx ends, because a route may still
// be on its way.
func (n Namespace) DialEcho(ctx context.Context, addr netip.AddrPort) (*EchoConn, error) {
	for {
		attempt, cancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := n.Dial(attempt, addr.String())
		cancel()
		if err == nil {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			e, err := NewEchoConn(c)
			if err != nil {
				c.Close()
				return nil, err
			}
			c.SetDeadline(time.Time{})
			return e, nil
		}
		if waitErr := poll.Sleep(ctx, 200*time.Millisecond); waitErr != nil {
			return nil, fmt.Errorf("%w (last: %w)", waitErr, err)
		}
	}
}
