package meshtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// StreamHost is one host's stream sockets on a Network, for the block
// ledger's traffic (it satisfies the ledger's Network interface): Listen at
// the host's address, Dial any address. Partitions cut dials and every
// open connection between the two sides at once, as a pulled cable would;
// Close (a crash) drops the host's listener and connections.
type StreamHost struct {
	net  *Network
	addr netip.AddrPort
	sent *atomic.Int64 // bytes written by this host's ends of its streams
}

// StreamHost returns the stream endpoint of the host at addr.
func (n *Network) StreamHost(addr netip.AddrPort) *StreamHost {
	return &StreamHost{net: n, addr: addr, sent: new(atomic.Int64)}
}

// BytesSent is the number of bytes this host has written to its streams
// so far, those it dialled and those it accepted.
func (h *StreamHost) BytesSent() int64 { return h.sent.Load() }

// Addr is the address the host listens on.
func (h *StreamHost) Addr() netip.AddrPort { return h.addr }

// Listen opens the host's listener; one per address at a time.
func (h *StreamHost) Listen() (net.Listener, error) {
	n := h.net
	n.mu.Lock()
	defer n.mu.Unlock()
	if old, ok := n.listeners[h.addr]; ok && !old.isClosed() {
		return nil, fmt.Errorf("meshtest: listen %s: address in use", h.addr)
	}
	l := &listener{net: n, addr: h.addr, sent: h.sent, conns: make(chan net.Conn, 64), done: make(chan struct{})}
	n.listeners[h.addr] = l
	return l, nil
}

// Dial connects to the listener at to, unless a partition or a missing
// listener is in the way.
func (h *StreamHost) Dial(ctx context.Context, to netip.AddrPort) (net.Conn, error) {
	n := h.net
	n.mu.Lock()
	l, ok := n.listeners[to]
	if !ok || l.isClosed() || n.blocked[[2]netip.Addr{h.addr.Addr(), to.Addr()}] {
		n.mu.Unlock()
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: tcpAddr(to), Err: fmt.Errorf("no route to host")}
	}
	a, b := newStreamPair(n, tcpAddr(h.addr), tcpAddr(to))
	a.sent, b.sent = h.sent, l.sent
	n.smu.Lock()
	n.streams[a] = [2]netip.Addr{h.addr.Addr(), to.Addr()}
	n.smu.Unlock()
	n.mu.Unlock()
	select {
	case l.conns <- b:
		return a, nil
	case <-l.done:
	case <-ctx.Done():
	}
	a.Close()
	return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: tcpAddr(to), Err: fmt.Errorf("connection refused")}
}

// Close drops the host's listener and every connection from or to it.
func (h *StreamHost) Close() {
	n := h.net
	n.mu.Lock()
	defer n.mu.Unlock()
	if l, ok := n.listeners[h.addr]; ok {
		l.closeLocked()
		delete(n.listeners, h.addr)
	}
	for _, c := range n.streamsWhere(func(ends [2]netip.Addr) bool {
		return ends[0] == h.addr.Addr() || ends[1] == h.addr.Addr()
	}) {
		c.Close()
	}
}

// cutStreamsLocked closes the connections a partition just cut.
func (n *Network) cutStreamsLocked() {
	for _, c := range n.streamsWhere(func(ends [2]netip.Addr) bool { return n.blocked[ends] }) {
		c.Close()
	}
}

func (n *Network) streamsWhere(match func([2]netip.Addr) bool) []*streamConn {
	n.smu.Lock()
	defer n.smu.Unlock()
	var out []*streamConn
	for c, ends := range n.streams {
		if match(ends) {
			out = append(out, c)
		}
	}
	return out
}

func tcpAddr(a netip.AddrPort) *net.TCPAddr {
	return &net.TCPAddr{IP: net.IP(a.Addr().AsSlice()), Port: int(a.Port())}
}

type listener struct {
	net   *Network
	addr  netip.AddrPort
	sent  *atomic.Int64 // the listening host's byte count
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *listener) Close() error {
	l.net.mu.Lock()
	defer l.net.mu.Unlock()
	l.closeLocked()
	return nil
}

func (l *listener) closeLocked() { l.once.Do(func() { close(l.done) }) }

func (l *listener) isClosed() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

func (l *listener) Addr() net.Addr { return tcpAddr(l.addr) }

// pipe is one direction of a stream: a buffer with a reader and writers,
// so that writes do not wait for reads (as a socket buffer).
type pipe struct {
	mu     sync.Mutex
	cond   *sync.Cond
	buf    []byte
	closed bool
}

func newPipe() *pipe {
	p := &pipe{}
	p.cond = sync.NewCond(&p.mu)
	return p
}

func (p *pipe) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.cond.Broadcast()
}

// maxBuffered bounds a direction's buffer, as a socket's send buffer does.
const maxBuffered = 4 << 20

func (p *pipe) write(b []byte, deadline *deadline) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.buf) >= maxBuffered && !p.closed && !deadline.passed() {
		p.cond.Wait()
	}
	if p.closed {
		return 0, net.ErrClosed
	}
	if deadline.passed() {
		return 0, os.ErrDeadlineExceeded
	}
	p.buf = append(p.buf, b...)
	p.cond.Broadcast()
	return len(b), nil
}

func (p *pipe) read(b []byte, deadline *deadline) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.buf) == 0 && !p.closed && !deadline.passed() {
		p.cond.Wait()
	}
	if len(p.buf) == 0 {
		if p.closed {
			return 0, io.EOF
		}
		return 0, os.ErrDeadlineExceeded
	}
	n := copy(b, p.buf)
	p.buf = p.buf[n:]
	if len(p.buf) == 0 {
		p.buf = nil
	}
	p.cond.Broadcast()
	return n, nil
}

// deadline is a settable point in time that wakes a pipe's waiters when
// it passes.
type deadline struct {
	mu    sync.Mutex
	at    time.Time
	timer *time.Timer
}

func (d *deadline) passed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return !d.at.IsZero() && !time.Now().Before(d.at)
}

func (d *deadline) set(t time.Time, wake *pipe) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.at = t
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	if !t.IsZero() {
		d.timer = time.AfterFunc(time.Until(t), func() {
			wake.mu.Lock()
			wake.mu.Unlock()
			wake.cond.Broadcast()
		})
	}
}

// streamConn is one end of an in-memory stream. The network tracks the
// dialling end; closing either end closes both directions.
type streamConn struct {
	in, out       *pipe
	local, remote net.Addr
	rdl, wdl      deadline
	closeOnce     sync.Once
	// dialer is the tracked end of the pair (itself on the dialling side).
	dialer *streamConn
	net    *Network
	sent   *atomic.Int64 // this end's host's byte count (nil: not counted)
}

func newStreamPair(n *Network, a, b net.Addr) (*streamConn, *streamConn) {
	ab, ba := newPipe(), newPipe()
	x := &streamConn{in: ba, out: ab, local: a, remote: b, net: n}
	y := &streamConn{in: ab, out: ba, local: b, remote: a, net: n}
	x.dialer, y.dialer = x, x
	return x, y
}

func (c *streamConn) Read(b []byte) (int, error) { return c.in.read(b, &c.rdl) }
func (c *streamConn) Write(b []byte) (int, error) {
	n, err := c.out.write(b, &c.wdl)
	if c.sent != nil {
		c.sent.Add(int64(n))
	}
	return n, err
}

// Close ends both directions: the peer reads EOF and its writes fail.
func (c *streamConn) Close() error {
	c.closeOnce.Do(func() {
		c.in.close()
		c.out.close()
		c.net.smu.Lock()
		delete(c.net.streams, c.dialer)
		c.net.smu.Unlock()
	})
	return nil
}

func (c *streamConn) LocalAddr() net.Addr  { return c.local }
func (c *streamConn) RemoteAddr() net.Addr { return c.remote }
func (c *streamConn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}
func (c *streamConn) SetReadDeadline(t time.Time) error  { c.rdl.set(t, c.in); return nil }
func (c *streamConn) SetWriteDeadline(t time.Time) error { c.wdl.set(t, c.out); return nil }
