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
	"sync"
	"time"

	"github.com/hashicorp/raft"
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

// The first byte of every connection (inside TLS) says what it carries.
const (
	muxRaft byte = 'R'
	muxRPC  byte = 'L'
)

const (
	handshakeTimeout = 10 * time.Second
	maxPendingConns  = 64 // connections not yet past TLS and the mux byte
	maxConcurrentRPC = 64 // RPCs served at once; more are refused as busy
	tlsDerivation    = "grapevine ledger tls"
)

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

// mux accepts connections on the shared listener, completes TLS and reads
// the mux byte on a goroutine per connection (so a slow or hostile peer
// stalls nobody), then hands raft connections to the stream layer and RPC
// connections to the RPC handler.
type mux struct {
	ln       net.Listener
	tls      *tls.Config // nil: plaintext
	raft     chan net.Conn
	rpc      func(net.Conn)
	reject   func(reason string)
	log      *slog.Logger
	pending  chan struct{} // connections in TLS handshake or mux byte
	rpcSlots chan struct{} // RPCs being served
	done     chan struct{}
	wg       sync.WaitGroup
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
		select {
		case m.pending <- struct{}{}:
		default:
			m.reject("busy")
			c.Close()
			continue
		}
		m.wg.Add(1)
		go m.handle(c)
	}
}

func (m *mux) handle(c net.Conn) {
	defer m.wg.Done()
	kind, c, err := m.open(c)
	<-m.pending
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
	default:
		m.reject("mux")
		c.Close()
	}
}

// open completes TLS and reads the mux byte, within handshakeTimeout.
func (m *mux) open(c net.Conn) (byte, net.Conn, error) {
	c.SetDeadline(time.Now().Add(handshakeTimeout))
	if m.tls != nil {
		tc := tls.Server(c, m.tls)
		if err := tc.Handshake(); err != nil {
			m.reject("tls")
			m.log.Warn("ledger connection refused: TLS handshake failed (peer without this cluster's key?)", "peer", c.RemoteAddr().String(), "err", err)
			return 0, c, err
		}
		c = tc
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		m.reject("mux")
		return 0, c, err
	}
	c.SetDeadline(time.Time{})
	return b[0], c, nil
}

// dialMux opens a connection of one kind to a peer.
func dialMux(ctx context.Context, n Network, clientTLS *tls.Config, addr netip.AddrPort, kind byte) (net.Conn, error) {
	c, err := n.Dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if clientTLS != nil {
		tc := tls.Client(c, clientTLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
		}
		c = tc
	}
	if _, err := c.Write([]byte{kind}); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// streamLayer is raft's view of the shared listener.
type streamLayer struct {
	m         *mux
	net       Network
	clientTLS *tls.Config
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
	return dialMux(ctx, s.net, s.clientTLS, addr, muxRaft)
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
