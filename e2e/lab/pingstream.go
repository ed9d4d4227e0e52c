package lab

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// PingStream sends ICMP echo requests from a namespace to one address at a
// fixed interval and records which were answered, like `ping -i`.
type PingStream struct {
	conn *icmp.PacketConn
	dst  netip.Addr
	id   int
	stop chan struct{}
	wg   sync.WaitGroup

	mu       sync.Mutex
	sent     map[int]time.Time // seq -> when sent
	answered map[int]bool
}

// PingResult is a finished PingStream's tally.
type PingResult struct {
	Sent, Answered int
	// Lost is when each unanswered request was sent, in order.
	Lost []time.Time
}

// StartPings starts a PingStream from inside the namespace to dst.
func (n Namespace) StartPings(dst netip.Addr, interval time.Duration) (*PingStream, error) {
	var conn *icmp.PacketConn
	err := n.Do(func() (err error) {
		conn, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pings from %s: %w", n.Name, err)
	}
	var idb [2]byte
	rand.Read(idb[:])
	p := &PingStream{conn: conn, dst: dst, id: int(binary.BigEndian.Uint16(idb[:])), stop: make(chan struct{}),
		sent: map[int]time.Time{}, answered: map[int]bool{}}
	p.wg.Add(2)
	go p.send(interval)
	go p.receive()
	return p, nil
}

func (p *PingStream) send(interval time.Duration) {
	defer p.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for seq := 1; ; seq++ {
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: p.id, Seq: seq & 0xffff, Data: []byte("grapevine lab")}}
		wire, _ := msg.Marshal(nil)
		p.mu.Lock()
		p.sent[seq&0xffff] = time.Now()
		p.mu.Unlock()
		// A failed send (no route) is a lost ping.
		p.conn.WriteTo(wire, &net.IPAddr{IP: p.dst.AsSlice()})
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
	}
}

func (p *PingStream) receive() {
	defer p.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, from, err := p.conn.ReadFrom(buf)
		if err != nil {
			return // closed
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		echo, ok := m.Body.(*icmp.Echo)
		if !ok || echo.ID != p.id || from.String() != p.dst.String() {
			continue
		}
		p.mu.Lock()
		p.answered[echo.Seq] = true
		p.mu.Unlock()
	}
}

// Stop stops sending, waits grace for the last replies, and tallies.
func (p *PingStream) Stop(grace time.Duration) PingResult {
	close(p.stop)
	time.Sleep(grace)
	p.conn.Close()
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	r := PingResult{Sent: len(p.sent)}
	for seq, at := range p.sent {
		if p.answered[seq] {
			r.Answered++
		} else {
			r.Lost = append(r.Lost, at)
		}
	}
	slices.SortFunc(r.Lost, time.Time.Compare)
	return r
}
