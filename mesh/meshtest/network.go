// Package meshtest runs clusters of mesh nodes in one process: an in-memory
// network that memberlist speaks over (with partitions and byte counters)
// and a harness that starts N nodes and measures how fast they converge.
// It exists for tests and benchmarks; the agent never imports it.
package meshtest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Network is an in-memory IPv4 network. Every transport has its own
// address, so member addresses look like real hosts'. Packets are dropped
// (as UDP would be) when the receiver is gone, busy, or cut off by a
// partition; stream dials fail instead.
type Network struct {
	mu      sync.RWMutex
	byAddr  map[netip.AddrPort]*Transport
	blocked map[[2]netip.Addr]bool
	// gossipBlocked cuts gossip alone (PartitionGossip): the ledger's
	// streams still pass.
	gossipBlocked map[[2]netip.Addr]bool
	// listeners and streams are the ledger's stream sockets (StreamHost):
	// every open connection with its two hosts, so a partition can cut it.
	listeners map[netip.AddrPort]*listener
	smu       sync.Mutex // guards streams; taken after mu
	streams   map[*streamConn][2]netip.Addr
}

// NewNetwork returns an empty network.
func NewNetwork() *Network {
	return &Network{
		byAddr:    make(map[netip.AddrPort]*Transport),
		blocked:   make(map[[2]netip.Addr]bool),
		listeners: make(map[netip.AddrPort]*listener),

		gossipBlocked: make(map[[2]netip.Addr]bool),
		streams:       make(map[*streamConn][2]netip.Addr),
	}
}

// NewTransport attaches a transport at addr. The address may be reused once
// the previous transport there was shut down (a restarted node).
func (n *Network) NewTransport(addr netip.AddrPort) (*Transport, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if old, ok := n.byAddr[addr]; ok && !old.closed.Load() {
		return nil, fmt.Errorf("meshtest: address %s is in use", addr)
	}
	t := &Transport{
		net:     n,
		addr:    addr,
		packets: make(chan *memberlist.Packet, 1024),
		streams: make(chan net.Conn, 64),
		done:    make(chan struct{}),
	}
	n.byAddr[addr] = t
	return t, nil
}

// Partition cuts all traffic between the hosts of a and those of b.
func (n *Network) Partition(a, b []netip.Addr) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, x := range a {
		for _, y := range b {
			n.blocked[[2]netip.Addr{x, y}] = true
			n.blocked[[2]netip.Addr{y, x}] = true
		}
	}
	n.cutStreamsLocked()
}

// PartitionGossip cuts gossip between the hosts of a and those of b, and
// leaves the ledger's streams alone: a firewall that drops the gossip port.
func (n *Network) PartitionGossip(a, b []netip.Addr) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, x := range a {
		for _, y := range b {
			n.gossipBlocked[[2]netip.Addr{x, y}] = true
			n.gossipBlocked[[2]netip.Addr{y, x}] = true
		}
	}
}

// Isolate cuts all traffic between the hosts of a and every other host
// attached to this network now (gossip transports and stream listeners).
func (n *Network) Isolate(a ...netip.Addr) {
	n.mu.RLock()
	var others []netip.Addr
	in := make(map[netip.Addr]bool, len(a))
	for _, x := range a {
		in[x] = true
	}
	for ap := range n.byAddr {
		if !in[ap.Addr()] {
			others = append(others, ap.Addr())
		}
	}
	for ap := range n.listeners {
		if !in[ap.Addr()] {
			others = append(others, ap.Addr())
		}
	}
	n.mu.RUnlock()
	n.Partition(a, others)
}

// Heal removes every partition.
func (n *Network) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	clear(n.blocked)
	clear(n.gossipBlocked)
}

// peer returns the live transport at addr if from may reach it.
func (n *Network) peer(from netip.Addr, addr string) (*Transport, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("meshtest: bad address %q: %w", addr, err)
	}
	n.mu.RLock()
	defer n.mu.RUnlock()
	t, ok := n.byAddr[ap]
	if ends := [2]netip.Addr{from, ap.Addr()}; !ok || t.closed.Load() || n.blocked[ends] || n.gossipBlocked[ends] {
		return nil, fmt.Errorf("meshtest: no route to %s", addr)
	}
	return t, nil
}

// Transport is one host's memberlist transport on a Network.
type Transport struct {
	net     *Network
	addr    netip.AddrPort
	packets chan *memberlist.Packet
	streams chan net.Conn
	done    chan struct{}
	closed  atomic.Bool
	sent    atomic.Int64 // bytes written: packets and streams
	msgs    atomic.Int64 // packets sent and streams opened

	// accepted holds the stream ends handed to this transport, so Shutdown
	// can close them: a pipe nobody reads would block its writer forever.
	mu       sync.Mutex
	accepted map[*conn]struct{}
	dropped  atomic.Int64 // packets lost to a full receive buffer
}

var _ memberlist.NodeAwareTransport = (*Transport)(nil)

// Addr is the transport's address.
func (t *Transport) Addr() netip.AddrPort { return t.addr }

// Dropped is the number of packets to this transport lost because its
// receive buffer was full (memberlist did not keep up).
func (t *Transport) Dropped() int64 { return t.dropped.Load() }

// BytesSent is the number of bytes this transport has written so far.
func (t *Transport) BytesSent() int64 { return t.sent.Load() }

// MessagesSent is the number of messages this transport has sent so far:
// every packet (memberlist's UDP traffic) and every stream it opened (a TCP
// exchange such as a push-pull or a vote), whatever happened to them after.
func (t *Transport) MessagesSent() int64 { return t.msgs.Load() }

func (t *Transport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	return net.IP(t.addr.Addr().AsSlice()), int(t.addr.Port()), nil
}

func (t *Transport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (t *Transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	now := time.Now()
	if t.closed.Load() {
		return now, net.ErrClosed
	}
	t.sent.Add(int64(len(b)))
	t.msgs.Add(1)
	dest, err := t.net.peer(t.addr.Addr(), a.Addr)
	if err != nil {
		return now, nil // lost, as a UDP datagram would be
	}
	p := &memberlist.Packet{Buf: append([]byte(nil), b...), From: mockAddr(t.addr), Timestamp: now}
	select {
	case dest.packets <- p:
	default: // receiver's buffer full: dropped
		dest.dropped.Add(1)
	}
	return now, nil
}

func (t *Transport) PacketCh() <-chan *memberlist.Packet { return t.packets }

func (t *Transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (t *Transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if t.closed.Load() {
		return nil, net.ErrClosed
	}
	t.msgs.Add(1)
	dest, err := t.net.peer(t.addr.Addr(), a.Addr)
	if err != nil {
		return nil, err
	}
	local, remote := net.Pipe()
	in := &conn{Conn: remote, local: dest.addr, remote: t.addr, sent: &dest.sent, owner: dest}
	if !dest.track(in) {
		local.Close()
		remote.Close()
		return nil, fmt.Errorf("meshtest: dial %s: connection refused", a.Addr)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case dest.streams <- in:
		return &conn{Conn: local, local: t.addr, remote: dest.addr, sent: &t.sent}, nil
	case <-dest.done:
	case <-timer.C:
	}
	local.Close()
	remote.Close()
	return nil, fmt.Errorf("meshtest: dial %s: connection refused", a.Addr)
}

func (t *Transport) StreamCh() <-chan net.Conn { return t.streams }

// Shutdown detaches the transport and closes its streams; its address can
// be used again.
func (t *Transport) Shutdown() error {
	if !t.closed.CompareAndSwap(false, true) {
		return nil
	}
	close(t.done)
	t.mu.Lock()
	open := t.accepted
	t.accepted = nil
	t.mu.Unlock()
	for c := range open {
		c.Conn.Close()
	}
	return nil
}

// track records an accepted stream end; false if the transport is shut.
func (t *Transport) track(c *conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed.Load() {
		return false
	}
	if t.accepted == nil {
		t.accepted = make(map[*conn]struct{})
	}
	t.accepted[c] = struct{}{}
	return true
}

func (t *Transport) untrack(c *conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.accepted, c)
}

// conn is one end of an in-memory stream with host addresses.
type conn struct {
	net.Conn
	local, remote netip.AddrPort
	sent          *atomic.Int64
	owner         *Transport // accepting side: forget the conn on Close
}

func (c *conn) Close() error {
	if c.owner != nil {
		c.owner.untrack(c)
	}
	return c.Conn.Close()
}

func (c *conn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if c.sent != nil {
		c.sent.Add(int64(n))
	}
	if errors.Is(err, io.ErrClosedPipe) {
		err = net.ErrClosed
	}
	return n, err
}

func (c *conn) LocalAddr() net.Addr  { return mockAddr(c.local) }
func (c *conn) RemoteAddr() net.Addr { return mockAddr(c.remote) }

// mockAddr is a TCP-looking address so memberlist can parse it.
func mockAddr(a netip.AddrPort) net.Addr {
	return &net.TCPAddr{IP: net.IP(a.Addr().AsSlice()), Port: int(a.Port())}
}
