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

	"golang.org/x/net/ipv4"

	"github.com/grapevine-net/grapevine/status"
)

// A peer's clock is read with an ICMP timestamp request (RFC 792, type
// 13), which the Linux kernel answers by itself with its wall clock in
// milliseconds since midnight UTC: it needs nothing of the peer's agent,
// no port and no new endpoint, is answered by every host whose firewall
// passes it, and costs one packet each way. The offset is the NTP formula
// over the four timestamps; its uncertainty is half the round trip, far
// below what the check judges.

// Clocker reads a peer host's clock; ICMPPinger is the real one.
type Clocker interface {
	// ClockOffset returns how far dst's clock is ahead of this host's
	// (negative: behind) and half the round trip, the bound of the
	// error.
	ClockOffset(ctx context.Context, dst netip.Addr) (offset, uncertainty time.Duration, err error)
}

// ClockProbe is the outcome of reading one peer's clock.
type ClockProbe struct {
	Peer, Target string
	Offset       time.Duration
	Uncertainty  time.Duration
	Err          string
	// IPv6 says the peer's host IP is IPv6 (an IPv6-only cluster): ICMPv6
	// has no timestamp message, so its clock is not read.
	IPv6 bool
}

// The offsets from which doctor warns and fails. NTP keeps hosts within
// milliseconds of each other; a second apart, something is wrong with
// time keeping, and a minute apart the hosts' logs, status times and
// anything that checks a certificate's or token's validity disagree.
const (
	clockWarn = time.Second
	clockFail = time.Minute
)

const (
	clockAttempts     = 3
	clockProbeTimeout = 400 * time.Millisecond
	msPerDay          = 24 * 60 * 60 * 1000
)

// probeClocks reads every live peer's clock, all at once. It fails only
// when it may not send ICMP at all.
func probeClocks(ctx context.Context, c Clocker, st status.Report) ([]ClockProbe, error) {
	if c == nil {
		return nil, nil
	}
	var probes []ClockProbe
	for _, m := range st.Members {
		if m.Foreign || m.State != "alive" || m.HostIP == "" {
			continue
		}
		a, err := netip.ParseAddr(m.HostIP)
		if err != nil {
			continue
		}
		probes = append(probes, ClockProbe{Peer: m.Name, Target: m.HostIP, IPv6: a.Is6() && !a.Is4In6()})
	}
	var wg sync.WaitGroup
	for i := range probes {
		if probes[i].IPv6 {
			continue
		}
		wg.Go(func() {
			p := &probes[i]
			dst := netip.MustParseAddr(p.Target)
			var err error
			for range clockAttempts {
				tryCtx, cancel := context.WithTimeout(ctx, clockProbeTimeout)
				p.Offset, p.Uncertainty, err = c.ClockOffset(tryCtx, dst)
				cancel()
				if err == nil || ctx.Err() != nil || errors.Is(err, ErrNoRawSocket) {
					break
				}
			}
			if err != nil {
				p.Err = err.Error()
			}
		})
	}
	wg.Wait()
	for _, p := range probes {
		if strings.Contains(p.Err, ErrNoRawSocket.Error()) {
			return nil, ErrNoRawSocket
		}
	}
	return probes, nil
}

// checkClocks judges the peers' clock offsets.
func checkClocks(probes []ClockProbe) []Finding {
	var fs []Finding
	for _, p := range probes {
		f := Finding{Check: CheckClock, Subject: p.Peer}
		if p.IPv6 {
			// Not a fault of the hosts: nothing to warn of.
			f.Severity, f.Seen = OK, "not checked: the peer's host IP "+p.Target+" is IPv6, and ICMPv6 has no timestamp message; compare the clocks by hand (chronyc tracking, timedatectl)"
			fs = append(fs, f)
			continue
		}
		if p.Err != "" {
			f.Severity, f.Seen = Warn, "not checked: "+p.Err
			f.Cause = "the peer's host does not answer ICMP timestamp requests (a firewall filters them, or icmp type 13/14 is dropped)"
			f.Fix = "allow ICMP timestamp request and reply between the hosts, or compare the clocks by hand (chronyc tracking, timedatectl)"
			fs = append(fs, f)
			continue
		}
		f.Seen = fmt.Sprintf("%s's clock is %s %s this host's (±%s)", p.Peer, abs(p.Offset).Round(time.Millisecond), aheadOrBehind(p.Offset), p.Uncertainty.Round(time.Millisecond))
		// Judged on the least the offset can be.
		least := abs(p.Offset) - p.Uncertainty
		switch {
		case least >= clockFail:
			f.Severity = Fail
		case least >= clockWarn:
			f.Severity = Warn
		default:
			f.Severity = OK
			fs = append(fs, f)
			continue
		}
		f.Cause = "time keeping (NTP: chrony, systemd-timesyncd, ntpd) is not running or cannot reach its servers on this host or the peer's: their logs and grapevine status's times disagree, and certificates, tokens and Kubernetes' leases are judged by clocks that differ"
		f.Fix = "on both hosts: timedatectl (\"System clock synchronized: yes\"), chronyc tracking or chronyc sources; start or fix the NTP service and let it step the clock"
		fs = append(fs, f)
	}
	return fs
}

func abs(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

func aheadOrBehind(d time.Duration) string {
	if d < 0 {
		return "behind"
	}
	return "ahead of"
}

// icmpClockOffset is the offset of the peer's clock from the four
// timestamps of an ICMP timestamp exchange, each in milliseconds since
// midnight UTC: originate (sent here), receive and transmit (the peer's),
// and the reply's arrival here. A difference is taken modulo a day, so an
// exchange across midnight, or clocks a few hours apart, come out right
// up to half a day. It is pure.
func icmpClockOffset(originate, receive, transmit, arrived uint32) (offset, uncertainty time.Duration) {
	diff := func(a, b uint32) int64 {
		d := (int64(a) - int64(b)) % msPerDay
		switch {
		case d >= msPerDay/2:
			d -= msPerDay
		case d < -msPerDay/2:
			d += msPerDay
		}
		return d
	}
	off := (diff(receive, originate) + diff(transmit, arrived)) / 2
	rtt := diff(arrived, originate) - diff(transmit, receive)
	return time.Duration(off) * time.Millisecond, time.Duration(max(rtt, 0)) * time.Millisecond / 2
}

// msSinceMidnight is t as an ICMP timestamp.
func msSinceMidnight(t time.Time) uint32 {
	t = t.UTC()
	midnight := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	return uint32(t.Sub(midnight).Milliseconds())
}

// ClockOffset implements Clocker with one ICMP timestamp request.
func (ICMPPinger) ClockOffset(ctx context.Context, dst netip.Addr) (offset, uncertainty time.Duration, err error) {
	c, err := net.ListenIP("ip4:icmp", nil)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %w", ErrNoRawSocket, err)
	}
	defer c.Close()
	var filter ipv4.ICMPFilter
	filter.SetAll(true)
	filter.Accept(ipv4.ICMPTypeTimestampReply)
	if err := ipv4.NewPacketConn(c).SetICMPFilter(&filter); err != nil {
		return 0, 0, fmt.Errorf("filter raw ICMP socket: %w", err)
	}
	var idSeq [4]byte
	rand.Read(idSeq[:])
	// type 13, code 0, checksum, id, seq, originate, receive, transmit
	req := make([]byte, 20)
	req[0] = byte(ipv4.ICMPTypeTimestamp)
	copy(req[4:8], idSeq[:])
	originate := msSinceMidnight(time.Now())
	binary.BigEndian.PutUint32(req[8:], originate)
	binary.BigEndian.PutUint16(req[2:], icmpChecksum(req))
	if _, err := c.WriteTo(req, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return 0, 0, fmt.Errorf("send timestamp request to %s: %w", dst, err)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(clockProbeTimeout)
	}
	wait := time.Until(deadline).Round(time.Millisecond)
	c.SetReadDeadline(deadline)
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		arrived := msSinceMidnight(time.Now())
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return 0, 0, fmt.Errorf("no timestamp reply from %s within %v", dst, wait)
		}
		if err != nil {
			return 0, 0, fmt.Errorf("read timestamp reply: %w", err)
		}
		src, isIP := from.(*net.IPAddr)
		r := buf[:n]
		if !isIP || !src.IP.Equal(dst.AsSlice()) || len(r) < 20 || r[0] != byte(ipv4.ICMPTypeTimestampReply) || string(r[4:8]) != string(idSeq[:]) {
			continue
		}
		receive, transmit := binary.BigEndian.Uint32(r[12:]), binary.BigEndian.Uint32(r[16:])
		if receive&(1<<31) != 0 || transmit&(1<<31) != 0 {
			return 0, 0, fmt.Errorf("%s answers with a non-standard timestamp (not milliseconds since midnight UTC)", dst)
		}
		offset, uncertainty := icmpClockOffset(originate, receive, transmit, arrived)
		return offset, uncertainty, nil
	}
}

// icmpChecksum is the Internet checksum of an ICMP message whose checksum
// field is zero.
func icmpChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
