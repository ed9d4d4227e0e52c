package doctor

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/grapevine-net/grapevine/node"
	"github.com/grapevine-net/grapevine/status"
)

// Pinger sends ICMP echo requests with don't-fragment set; ICMPPinger is
// the real one.
type Pinger interface {
	// PingDF sends one echo request to dst as an IP packet (IPv4 or IPv6,
	// after dst) of size bytes that may not be fragmented, and waits until
	// ctx ends for its reply.
	// A packet larger than the route's MTU on this host fails at once
	// with an error wrapping ErrTooBig.
	PingDF(ctx context.Context, dst netip.Addr, size int) error
}

// ErrNoRawSocket: doctor may not send ICMP itself (no CAP_NET_RAW), so
// the paths are not probed.
var ErrNoRawSocket = errors.New("cannot open a raw ICMP socket (needs CAP_NET_RAW)")

// ErrTooBig: this host's route to the destination has a smaller MTU than
// the packet (the interface's, or one a router reported).
var ErrTooBig = errors.New("larger than the MTU of the route on this host")

// MTUProbe is the outcome of probing one peer's path at the pod MTU.
type MTUProbe struct {
	Peer string
	// Target is the address probed: the peer's host IP on a direct path,
	// its VTEP address on a VXLAN path (so the probe is encapsulated as
	// pods' packets are).
	Target string
	Path   string
	Size   int
	// Err is why no full-size probe was answered; SmallErr is set when a
	// minimal one went unanswered too (the peer does not answer at all).
	Err, SmallErr string
}

// Attempts and timeouts of the path MTU probe: a lost probe is retried so
// a little loss is not taken for a too small MTU.
const (
	mtuAttempts      = 3
	mtuProbeTimeout  = 400 * time.Millisecond
	smallProbeSize   = 64
	ipv4ICMPOverhead = 20 + 8
	ipv6ICMPOverhead = 40 + 8
)

// icmpFamily is what an echo request of one IP version needs.
type icmpFamily struct {
	network          string // for net.ListenIP
	proto            int    // for icmp.ParseMessage
	overhead         int    // IP and ICMP headers
	request, reply   icmp.Type
	level, opt, pmtu int // the socket option that forbids fragmenting
}

func icmpFamilyOf(dst netip.Addr) icmpFamily {
	if dst.Is4() || dst.Is4In6() {
		return icmpFamily{"ip4:icmp", 1, ipv4ICMPOverhead, ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply,
			unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO}
	}
	return icmpFamily{"ip6:ipv6-icmp", 58, ipv6ICMPOverhead, ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply,
		unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DO}
}

// probePaths sends every routed peer a don't-fragment echo request of the
// pod MTU over the path pods use, all peers at once. It fails only when
// it may not ping at all.
func probePaths(ctx context.Context, p Pinger, st status.Report) ([]MTUProbe, error) {
	if st.Settings == nil || st.Settings.PodMTU == 0 || p == nil {
		return nil, nil
	}
	var probes []MTUProbe
	for _, m := range st.Members {
		if !m.Routed() {
			continue
		}
		target, ok := mtuTarget(m)
		if !ok {
			continue
		}
		probes = append(probes, MTUProbe{Peer: m.Name, Target: target.String(), Path: m.Path, Size: st.Settings.PodMTU})
	}
	var wg sync.WaitGroup
	for i := range probes {
		wg.Go(func() {
			pr := &probes[i]
			dst := netip.MustParseAddr(pr.Target)
			err := pingTries(ctx, p, dst, pr.Size)
			if err == nil {
				return
			}
			pr.Err = err.Error()
			if errors.Is(err, ErrTooBig) {
				return
			}
			if err := pingTries(ctx, p, dst, smallProbeSize); err != nil {
				pr.SmallErr = err.Error()
			}
		})
	}
	wg.Wait()
	for _, pr := range probes {
		if strings.Contains(pr.Err, ErrNoRawSocket.Error()) {
			return nil, ErrNoRawSocket
		}
	}
	return probes, nil
}

// mtuTarget is the address a probe over m's path goes to.
func mtuTarget(m status.Member) (netip.Addr, bool) {
	switch node.Path(m.Path) {
	case node.PathDirect:
		a, err := netip.ParseAddr(m.HostIP)
		return a, err == nil
	case node.PathVXLAN:
		b, err := netip.ParsePrefix(m.Block)
		return node.VTEPAddr(b), err == nil
	}
	return netip.Addr{}, false
}

func pingTries(ctx context.Context, p Pinger, dst netip.Addr, size int) error {
	var err error
	for range mtuAttempts {
		tryCtx, cancel := context.WithTimeout(ctx, mtuProbeTimeout)
		err = p.PingDF(tryCtx, dst, size)
		cancel()
		if err == nil || errors.Is(err, ErrTooBig) || ctx.Err() != nil {
			return err
		}
	}
	return err
}

// ICMPPinger pings from a raw ICMP socket of the calling thread's network
// namespace (CAP_NET_RAW), one socket per request.
type ICMPPinger struct{}

// PingDF implements Pinger.
func (ICMPPinger) PingDF(ctx context.Context, dst netip.Addr, size int) error {
	fam := icmpFamilyOf(dst)
	if size < fam.overhead {
		return fmt.Errorf("echo request of %d bytes: smaller than its headers", size)
	}
	c, err := net.ListenIP(fam.network, nil)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoRawSocket, err)
	}
	defer c.Close()
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var sockErr error
	if err := raw.Control(func(fd uintptr) {
		sockErr = unix.SetsockoptInt(int(fd), fam.level, fam.opt, fam.pmtu)
	}); err != nil || sockErr != nil {
		return fmt.Errorf("set don't-fragment: %w", errors.Join(err, sockErr))
	}
	if err := acceptOnlyEchoReplies(c, dst); err != nil {
		return fmt.Errorf("filter raw ICMP socket: %w", err)
	}
	var idSeq [4]byte
	rand.Read(idSeq[:])
	id, seq := int(binary.BigEndian.Uint16(idSeq[:2])), int(binary.BigEndian.Uint16(idSeq[2:]))
	msg := icmp.Message{Type: fam.request, Body: &icmp.Echo{ID: id, Seq: seq, Data: make([]byte, size-fam.overhead)}}
	wire, err := msg.Marshal(nil)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(wire, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		if errors.Is(err, unix.EMSGSIZE) {
			return fmt.Errorf("%d bytes to %s: %w", size, dst, ErrTooBig)
		}
		return fmt.Errorf("send %d bytes to %s: %w", size, dst, err)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(mtuProbeTimeout)
	}
	wait := time.Until(deadline).Round(time.Millisecond)
	c.SetReadDeadline(deadline)
	buf := make([]byte, size+fam.overhead)
	for {
		n, from, err := c.ReadFrom(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("no reply from %s to %d bytes with don't-fragment within %v", dst, size, wait)
		}
		if err != nil {
			return fmt.Errorf("read echo reply: %w", err)
		}
		m, err := icmp.ParseMessage(fam.proto, buf[:n])
		if err != nil || m.Type != fam.reply {
			continue
		}
		echo, ok := m.Body.(*icmp.Echo)
		src, isIP := from.(*net.IPAddr)
		if ok && isIP && echo.ID == id && echo.Seq == seq && src.IP.Equal(dst.AsSlice()) {
			return nil
		}
	}
}

// acceptOnlyEchoReplies has the kernel pass c only echo replies, of dst's
// ICMP version.
func acceptOnlyEchoReplies(c *net.IPConn, dst netip.Addr) error {
	if dst.Is4() || dst.Is4In6() {
		var filter ipv4.ICMPFilter
		filter.SetAll(true)
		filter.Accept(ipv4.ICMPTypeEchoReply)
		return ipv4.NewPacketConn(c).SetICMPFilter(&filter)
	}
	var filter ipv6.ICMPFilter
	filter.SetAll(true)
	filter.Accept(ipv6.ICMPTypeEchoReply)
	return ipv6.NewPacketConn(c).SetICMPFilter(&filter)
}
