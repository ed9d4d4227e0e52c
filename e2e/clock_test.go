package e2e

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/grapevine-net/grapevine/e2e/lab"
)

// skewedClockMark marks the timestamp replies skewClock sends, which its
// table lets out while it drops the kernel's own.
const skewedClockMark = 0x4756

// skewClock makes h answer ICMP timestamp requests as a host whose clock
// is skew ahead would: a table in h's namespace drops the replies of its
// kernel (which reads the machine's one clock: CLOCK_REALTIME has no
// namespace), and a raw socket there answers instead, marked so the table
// lets it out. Nothing outside h's namespace changes. stop ends the
// responder and deletes the table.
func skewClock(h *lab.Host, skew time.Duration) (stop func() error, err error) {
	if err := clockReplyTable(h, true); err != nil {
		return nil, err
	}
	var conn *net.IPConn
	err = h.Do(func() error {
		c, err := net.ListenIP("ip4:icmp", nil)
		if err != nil {
			return err
		}
		raw, err := c.SyscallConn()
		if err != nil {
			c.Close()
			return err
		}
		var markErr error
		if err := raw.Control(func(fd uintptr) {
			markErr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, skewedClockMark)
		}); err != nil || markErr != nil {
			c.Close()
			return errors.Join(err, markErr)
		}
		conn = c
		return nil
	})
	if err != nil {
		clockReplyTable(h, false)
		return nil, fmt.Errorf("%s: skewed clock responder: %w", h.Name, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				return // closed by stop
			}
			req := buf[:n]
			if n < 20 || req[0] != byte(ipv4.ICMPTypeTimestamp) {
				continue
			}
			now := time.Now().Add(skew).UTC()
			midnight := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
			ms := uint32(now.Sub(midnight).Milliseconds())
			body := make([]byte, 16) // id, seq, originate, receive, transmit
			copy(body, req[4:12])
			binary.BigEndian.PutUint32(body[8:], ms)
			binary.BigEndian.PutUint32(body[12:], ms)
			reply, err := (&icmp.Message{Type: ipv4.ICMPTypeTimestampReply, Body: &icmp.RawBody{Data: body}}).Marshal(nil)
			if err == nil {
				conn.WriteTo(reply, from)
			}
		}
	}()
	return func() error {
		conn.Close()
		<-done
		return clockReplyTable(h, false)
	}, nil
}

// clockReplyTable adds (or deletes) table inet gvtest-clock in h's
// namespace, whose output chain drops ICMP timestamp replies without
// skewedClockMark.
func clockReplyTable(h *lab.Host, add bool) error {
	if !add {
		return h.SetFilterTable("gvtest-clock", nil)
	}
	mark := make([]byte, 4)
	binary.NativeEndian.PutUint32(mark, skewedClockMark)
	return h.SetFilterTable("gvtest-clock", &lab.FilterChain{Name: "output", Hook: nftables.ChainHookOutput, Policy: nftables.ChainPolicyAccept, Rules: [][]expr.Any{{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1}, // ICMP type
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(ipv4.ICMPTypeTimestampReply)}},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: mark},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}}})
}
