// Package ledgertest provides a partitionable network for tests of the
// ledger and of the mesh harness. Each node gets its own virtual address
// (e.g. 10.0.0.1:7963); connections run over loopback TCP, so deadlines
// and buffering behave as on a real network. It touches nothing outside
// the loopback interface.
package ledgertest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Network is a set of virtual hosts whose links can be cut and healed.
type Network struct {
	mu        sync.Mutex
	listeners map[netip.AddrPort]*listener
	blocked   map[[2]netip.Addr]bool
	isolated  map[netip.Addr]bool
	conns     map[*conn]struct{}
}

// NewNetwork returns an empty network.
func NewNetwork() *Network {
	return &Network{
		listeners: map[netip.AddrPort]*listener{},
		blocked:   map[[2]netip.Addr]bool{},
		isolated:  map[netip.Addr]bool{},
		conns:     map[*conn]struct{}{},
	}
}

// Host is one node's view of the network; it implements ledger.Network.
type Host struct {
	n    *Network
	addr netip.AddrPort
}

// Host returns the endpoint for the node that listens on (and advertises)
// addr.
func (n *Network) Host(addr netip.AddrPort) *Host { return &Host{n: n, addr: addr} }

// Block cuts every link between hosts a and b (both directions), closing
// open connections: a partition, not a slow link.
func (n *Network) Block(a, b netip.Addr) {
	n.mu.Lock()
	n.blocked[pair(a, b)] = true
	n.mu.Unlock()
	n.cut()
}

// Unblock restores the link between a and b.
func (n *Network) Unblock(a, b netip.Addr) {
	n.mu.Lock()
	delete(n.blocked, pair(a, b))
	n.mu.Unlock()
}

// Isolate cuts host a from every other host.
func (n *Network) Isolate(a netip.Addr) {
	n.mu.Lock()
	n.isolated[a] = true
	n.mu.Unlock()
	n.cut()
}

// Heal restores every link.
func (n *Network) Heal() {
	n.mu.Lock()
	n.blocked = map[[2]netip.Addr]bool{}
	n.isolated = map[netip.Addr]bool{}
	n.mu.Unlock()
}

// Reachable reports whether a and b can talk.
func (n *Network) Reachable(a, b netip.Addr) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.reachable(a, b)
}

func (n *Network) reachable(a, b netip.Addr) bool {
	if a == b {
		return true
	}
	return !n.blocked[pair(a, b)] && !n.isolated[a] && !n.isolated[b]
}

func pair(a, b netip.Addr) [2]netip.Addr {
	if b.Less(a) {
		a, b = b, a
	}
	return [2]netip.Addr{a, b}
}

func (n *Network) cut() {
	n.mu.Lock()
	var doomed []*conn
	for c := range n.conns {
		if !n.reachable(c.from, c.to) {
			doomed = append(doomed, c)
		}
	}
	n.mu.Unlock()
	for _, c := range doomed {
		c.Close()
	}
}

func (n *Network) track(c *conn) {
	n.mu.Lock()
	n.conns[c] = struct{}{}
	n.mu.Unlock()
}

func (n *Network) untrack(c *conn) {
	n.mu.Lock()
	delete(n.conns, c)
	n.mu.Unlock()
}

// Listen opens the host's listener (one per address at a time).
func (h *Host) Listen() (net.Listener, error) {
	real, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &listener{Listener: real, n: h.n, addr: h.addr}
	h.n.mu.Lock()
	defer h.n.mu.Unlock()
	if _, taken := h.n.listeners[h.addr]; taken {
		real.Close()
		return nil, fmt.Errorf("listen %s: address already in use", h.addr)
	}
	h.n.listeners[h.addr] = l
	return l, nil
}

// Dial connects to the host listening on addr, unless a partition or the
// lack of a listener says otherwise.
func (h *Host) Dial(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	h.n.mu.Lock()
	l := h.n.listeners[addr]
	ok := h.n.reachable(h.addr.Addr(), addr.Addr())
	h.n.mu.Unlock()
	if !ok {
		// A partition drops packets: the dial times out, it is not refused.
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
		return nil, fmt.Errorf("dial %s from %s: network unreachable (partitioned)", addr, h.addr)
	}
	if l == nil {
		return nil, fmt.Errorf("dial %s: connection refused", addr)
	}
	var d net.Dialer
	real, err := d.DialContext(ctx, "tcp", l.Listener.Addr().String())
	if err != nil {
		return nil, err
	}
	// Tell the listener who is calling: the virtual source address.
	src := h.addr.String()
	hdr := append([]byte{byte(len(src))}, src...)
	if _, err := real.Write(hdr); err != nil {
		real.Close()
		return nil, err
	}
	c := &conn{Conn: real, n: h.n, from: h.addr.Addr(), to: addr.Addr(), local: h.addr, remote: addr}
	h.n.track(c)
	if !h.n.Reachable(c.from, c.to) { // cut while dialing
		c.Close()
		return nil, fmt.Errorf("dial %s from %s: network unreachable (partitioned)", addr, h.addr)
	}
	return c, nil
}

type listener struct {
	net.Listener
	n         *Network
	addr      netip.AddrPort
	closeOnce sync.Once
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		real, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		real.SetReadDeadline(time.Now().Add(5 * time.Second))
		var n [1]byte
		if _, err := io.ReadFull(real, n[:]); err != nil {
			real.Close()
			continue
		}
		buf := make([]byte, n[0])
		if _, err := io.ReadFull(real, buf); err != nil {
			real.Close()
			continue
		}
		real.SetReadDeadline(time.Time{})
		src, err := netip.ParseAddrPort(string(buf))
		if err != nil {
			real.Close()
			continue
		}
		c := &conn{Conn: real, n: l.n, from: l.addr.Addr(), to: src.Addr(), local: l.addr, remote: src}
		l.n.track(c)
		if !l.n.Reachable(c.from, c.to) {
			c.Close()
			continue
		}
		return c, nil
	}
}

func (l *listener) Close() error {
	l.closeOnce.Do(func() {
		l.n.mu.Lock()
		if l.n.listeners[l.addr] == l {
			delete(l.n.listeners, l.addr)
		}
		l.n.mu.Unlock()
	})
	return l.Listener.Close()
}

func (l *listener) Addr() net.Addr { return net.TCPAddrFromAddrPort(l.addr) }

type conn struct {
	net.Conn
	n             *Network
	from, to      netip.Addr
	local, remote netip.AddrPort
	closeOnce     sync.Once
}

func (c *conn) Close() error {
	err := net.ErrClosed
	c.closeOnce.Do(func() {
		c.n.untrack(c)
		err = c.Conn.Close()
	})
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func (c *conn) LocalAddr() net.Addr  { return net.TCPAddrFromAddrPort(c.local) }
func (c *conn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.remote) }
