package ledger

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/grapevine-net/grapevine/internal/ratelog"
)

// Network is what the transport needs: one listener shared by raft and the
// ledger RPCs, and a dialer. Production uses TCP; tests use ledgertest.
type Network interface {
	Listen() (net.Listener, error)
	Dial(ctx context.Context, addr netip.AddrPort) (net.Conn, error)
}

// TCPNetwork listens on bind and dials peers over TCP.
func TCPNetwork(bind netip.AddrPort) Network { return tcpNetwork{bind: bind} }

type tcpNetwork struct{ bind netip.AddrPort }

func (n tcpNetwork) Listen() (net.Listener, error) { return net.Listen("tcp", n.bind.String()) }

func (tcpNetwork) Dial(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr.String())
}

// What a connection carries, stated in its hello.
const (
	muxRaft byte = 'R'
	muxRPC  byte = 'L'
)

const tlsDerivation = "grapevine ledger tls"

// tlsConfigs derives the one certificate every holder of the gossip key
// uses, from the key alone: HKDF-SHA256 -> ed25519 seed -> self-signed
// certificate with a fixed template. Each side then accepts exactly a peer
// presenting that public key, so without the key no handshake completes.
func tlsConfigs(key []byte) (server, client *tls.Config, err error) {
	seed, err := hkdf.Key(sha256.New, key, nil, tlsDerivation, ed25519.SeedSize)
	if err != nil {
		return nil, nil, fmt.Errorf("derive ledger TLS key: %w", err)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	pub := priv.Public().(ed25519.PublicKey)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "grapevine-ledger"},
		DNSNames:              []string{"grapevine-ledger"},
		NotBefore:             time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, pub, priv) // ed25519 signs deterministically
	if err != nil {
		return nil, nil, fmt.Errorf("ledger TLS certificate: %w", err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
	verify := func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
		if len(rawCerts) != 1 {
			return errors.New("ledger peer must present exactly one certificate")
		}
		c, err := x509.ParseCertificate(rawCerts[0])
		if err != nil {
			return fmt.Errorf("ledger peer certificate: %w", err)
		}
		peer, ok := c.PublicKey.(ed25519.PublicKey)
		if !ok || !bytes.Equal(peer, pub) {
			return errors.New("ledger peer certificate is not derived from this cluster's key")
		}
		return nil
	}
	server = &tls.Config{
		MinVersion:            tls.VersionTLS13,
		Certificates:          []tls.Certificate{cert},
		ClientAuth:            tls.RequireAnyClientCert,
		VerifyPeerCertificate: verify,
	}
	client = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ServerName:   "grapevine-ledger",
		// The chain is not verified against roots: VerifyPeerCertificate
		// pins the one key instead.
		InsecureSkipVerify:    true,
		VerifyPeerCertificate: verify,
	}
	return server, client, nil
}

// handshakeTimeout bounds TLS and the hello on an accepted connection. On
// a LAN both take milliseconds; a connection that has not finished within
// it is a stranger holding a slot (see admission).
const handshakeTimeout = 2 * time.Second

// maxConcurrentRPC bounds the RPCs served at once; more are refused as busy.
const maxConcurrentRPC = 64

// Refusals are counted each, but logged at most refusalLogBurst lines per
// refusalLogEvery per class: a flood costs counter increments, not a log.
const (
	refusalLogBurst = 3
	refusalLogEvery = 10 * time.Second
)

// refusalText explains a refusal reason in the log.
var refusalText = map[string]string{
	"handshake-source-limit": "too many connections from this address have not finished the handshake",
	"handshake-busy":         "too many connections from addresses gossip does not know have not finished the handshake",
	"handshake-timeout":      "no TLS handshake and hello within " + handshakeTimeout.String(),
	"tls":                    "TLS handshake failed (peer without this cluster's key?)",
	"mux":                    "malformed hello (another transport or an older version?)",
	"hello":                  "hello with a zero node ID",
	"version":                "peer speaks another ledger transport version",
	"foreign-cluster":        "peer belongs to another ledger (same key, founded separately)",
}

// mux accepts connections on the shared listener, admits them by source
// (admission), completes TLS and the hello on a goroutine per connection
// (so a slow or hostile peer stalls nobody), then hands raft connections
// to the stream layer and RPC connections to the RPC handler.
type mux struct {
	ln                   net.Listener
	tls                  *tls.Config // nil: plaintext
	raft                 chan net.Conn
	rpc                  func(net.Conn)
	reject               func(reason string)
	log                  *slog.Logger
	self                 func() hello          // this node's ledger and ID, for answers
	isMember             func(netip.Addr) bool // the address is a gossip member's
	admit                *admission            // unauthenticated connections
	rpcSlots             chan struct{}         // RPCs being served
	strangerLog, peerLog *ratelog.Limiter      // refusals before / after the key is proven
	done                 chan struct{}
	wg                   sync.WaitGroup
}

// newMux builds the mux for Run; its admission prefers the members of
// gossip's latest view.
func (l *Ledger) newMux() *mux {
	return &mux{
		ln:          l.ln,
		tls:         l.serverTLS,
		raft:        make(chan net.Conn),
		rpc:         l.serveRPC,
		reject:      l.reject,
		log:         l.log,
		self:        l.hello,
		isMember:    l.isMemberAddr,
		admit:       newAdmission(defaultAdmission),
		rpcSlots:    make(chan struct{}, maxConcurrentRPC),
		strangerLog: ratelog.New(refusalLogBurst, refusalLogEvery),
		peerLog:     ratelog.New(refusalLogBurst, refusalLogEvery),
		done:        make(chan struct{}),
	}
}

// newStreamLayer is raft's view of the mux.
func (l *Ledger) newStreamLayer(m *mux) *streamLayer {
	return &streamLayer{m: m, dialer: l.dialer(), advertise: l.cfg.Advertise, closed: make(chan struct{})}
}

// hello is what this node states on every ledger connection.
func (l *Ledger) hello() hello {
	return hello{version: helloVersion, cluster: l.fsm.clusterID(), node: l.cfg.ID}
}

// isMemberAddr reports whether addr is the host IP or ledger address of a
// member in gossip's latest view (alive or not: gossip still knows it).
func (l *Ledger) isMemberAddr(addr netip.Addr) bool {
	if !addr.IsValid() {
		return false
	}
	peers, _ := l.peerView()
	for _, p := range peers {
		if p.HostIP.Unmap() == addr || p.Addr.Addr().Unmap() == addr {
			return true
		}
	}
	return false
}

// dialer opens this node's ledger connections.
func (l *Ledger) dialer() *dialer {
	return &dialer{net: l.net, tls: l.clientTLS, self: l.hello, reject: l.reject}
}

// remoteIP is the connection's source address (zero if it has none).
func remoteIP(c net.Conn) netip.Addr {
	switch a := c.RemoteAddr().(type) {
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap()
	case nil:
		return netip.Addr{}
	default:
		ap, _ := netip.ParseAddrPort(a.String())
		return ap.Addr().Unmap()
	}
}

func (m *mux) serve() {
	defer m.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		c, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			m.log.Warn("ledger accept failed", "err", err)
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		src := remoteIP(c)
		release, reason := m.admit.acquire(src, m.isMember(src))
		if reason != "" {
			m.refuse(m.strangerLog, reason, src, nil)
			c.Close()
			continue
		}
		m.wg.Add(1)
		go m.handle(c, src, release)
	}
}

// refuse counts a refused connection and logs it at a bounded rate.
func (m *mux) refuse(lim *ratelog.Limiter, reason string, peer netip.Addr, err error) {
	m.reject(reason)
	ok, notLogged := lim.Allow(time.Now())
	if !ok {
		return
	}
	args := []any{"reason", reason, "peer", peer.String()}
	if err != nil {
		args = append(args, "err", err)
	}
	if notLogged > 0 {
		args = append(args, "refusals_not_logged", notLogged)
	}
	m.log.Warn("ledger connection refused: "+refusalText[reason], args...)
}

func (m *mux) handle(c net.Conn, src netip.Addr, release func()) {
	defer m.wg.Done()
	kind, c, err := m.open(c, src)
	release()
	if err != nil {
		c.Close()
		return
	}
	switch kind {
	case muxRaft:
		select {
		case m.raft <- c:
		case <-m.done:
			c.Close()
		}
	case muxRPC:
		select {
		case m.rpcSlots <- struct{}{}:
			m.rpc(c)
			<-m.rpcSlots
		default:
			m.reject("busy")
			c.Close()
		}
	}
}

// open completes TLS and the hello within handshakeTimeout and returns
// what the connection carries; it counts and logs every refusal.
func (m *mux) open(c net.Conn, src netip.Addr) (byte, net.Conn, error) {
	c.SetDeadline(time.Now().Add(handshakeTimeout))
	if m.tls != nil {
		tc := tls.Server(c, m.tls)
		if err := tc.Handshake(); err != nil {
			reason := "tls"
			if errors.Is(err, os.ErrDeadlineExceeded) {
				reason = "handshake-timeout"
			}
			m.refuse(m.strangerLog, reason, src, err)
			return 0, c, err
		}
		c = tc
	}
	b := make([]byte, helloSize)
	if _, err := io.ReadFull(c, b); err != nil {
		reason := "mux"
		if errors.Is(err, os.ErrDeadlineExceeded) {
			reason = "handshake-timeout"
		}
		m.refuse(m.peerLog, reason, src, err)
		return 0, c, err
	}
	self := m.self()
	h, err := decodeHello(b)
	status, reason := helloOK, ""
	switch {
	case errors.Is(err, errHelloVersion):
		status, reason = helloBadVersion, "version"
	case err != nil:
		// Not a hello at all: nothing to answer.
		m.refuse(m.peerLog, "mux", src, err)
		return 0, c, err
	default:
		status, reason = helloVerdict(self.cluster, h)
	}
	self.code = status
	if _, werr := c.Write(self.encode()); werr != nil && status == helloOK {
		m.reject("write")
		return 0, c, werr
	}
	if status != helloOK {
		if err == nil {
			err = fmt.Errorf("peer node %s of ledger %s", h.node, h.cluster)
		}
		m.refuse(m.peerLog, reason, src, err)
		return 0, c, err
	}
	c.SetDeadline(time.Time{})
	return h.code, c, nil
}

// dialer opens ledger connections: TCP, TLS, then the hello and its answer.
type dialer struct {
	net    Network
	tls    *tls.Config // nil: plaintext
	self   func() hello
	reject func(reason string)
}

// dial opens a connection of one kind to the ledger node at addr; an
// answer that refuses it is an error (ErrForeignCluster for another ledger).
func (d *dialer) dial(ctx context.Context, addr netip.AddrPort, kind byte) (net.Conn, error) {
	c, err := d.net.Dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	if d.tls != nil {
		tc := tls.Client(c, d.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
		}
		c = tc
	}
	self := d.self()
	self.code = kind
	if _, err := c.Write(self.encode()); err != nil {
		c.Close()
		return nil, fmt.Errorf("hello to %s: %w", addr, err)
	}
	b := make([]byte, helloSize)
	if _, err := io.ReadFull(c, b); err != nil {
		c.Close()
		return nil, fmt.Errorf("hello from %s: %w", addr, err)
	}
	answer, err := decodeHello(b)
	if err == nil {
		err = answerError(self.cluster, addr.String(), answer)
		if answer.code == helloOK && errors.Is(err, ErrForeignCluster) {
			d.reject("foreign-cluster") // refused by this side
		}
	} else {
		err = fmt.Errorf("hello from %s: %w", addr, err)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	if !stop() {
		c.Close() // ctx ended meanwhile: the deadline is already set to now
		return nil, fmt.Errorf("dial ledger node at %s: %w", addr, ctx.Err())
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// streamLayer is raft's view of the shared listener.
type streamLayer struct {
	m         *mux
	dialer    *dialer
	advertise netip.AddrPort
	closed    chan struct{}
	closeOnce sync.Once
}

var _ raft.StreamLayer = (*streamLayer)(nil)

func (s *streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.m.raft:
		return c, nil
	case <-s.closed:
		return nil, net.ErrClosed
	}
}

func (s *streamLayer) Close() error {
	s.closeOnce.Do(func() { close(s.closed) })
	return nil
}

func (s *streamLayer) Addr() net.Addr { return net.TCPAddrFromAddrPort(s.advertise) }

func (s *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	addr, err := netip.ParseAddrPort(string(address))
	if err != nil {
		return nil, fmt.Errorf("raft peer address %q: %w", address, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return s.dialer.dial(ctx, addr, muxRaft)
}

// Frames of the ledger RPC: a 4-byte big-endian length, then the body.
const maxFrame = 64 << 10

var errFrameTooLarge = fmt.Errorf("%w: frame larger than %d bytes", ErrBadRequest, maxFrame)

func writeFrame(w io.Writer, body []byte) error {
	if len(body) > maxFrame {
		return errFrameTooLarge
	}
	buf := make([]byte, 4+len(body))
	binary.BigEndian.PutUint32(buf, uint32(len(body)))
	copy(buf[4:], body)
	_, err := w.Write(buf)
	return err
}

func readFrame(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxFrame {
		return nil, errFrameTooLarge
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return body, nil
}
