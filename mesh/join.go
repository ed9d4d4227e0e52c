package mesh

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"github.com/grapevine-net/grapevine/mesh/ledger"
)

// joinSeeds tries the seeds a few times with backoff. When none answers the
// reconnect loop keeps trying; the node founds nothing on its own unless
// Config.Found allows it.
func (m *Mesh) joinSeeds(ctx context.Context) {
	backoff := 250 * time.Millisecond
	for attempt := 0; attempt < 3; attempt++ {
		seeds := m.seedTargets()
		if len(seeds) == 0 {
			return
		}
		n, err := m.ml.Join(seeds)
		if n > 0 {
			m.log.Info("joined the cluster", "contacted", n, "members", m.ml.NumMembers())
			return
		}
		m.log.Warn("no seed answered", "seeds", seeds, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff *= 2
	}
	m.log.Warn("no seed answered yet; retrying in the background", "seeds", m.seedTargets())
}

// seedTargets returns the seeds that are not this node and not already a
// live member.
func (m *Mesh) seedTargets() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	live := make(map[string]bool)
	live[netip.AddrPortFrom(m.cfg.AdvertiseAddr, uint16(m.cfg.Port)).String()] = true
	for _, p := range m.peers {
		if p.state.Live() {
			live[p.addr.String()] = true
		}
	}
	var out []string
	for _, s := range m.seeds {
		if !live[withPort(s, m.cfg.Port)] {
			out = append(out, s)
		}
	}
	return out
}

// withPort normalizes an IP seed to "ip:port" so it compares with member
// addresses; host names are returned unchanged.
func withPort(seed string, port int) string {
	if ap, err := netip.ParseAddrPort(seed); err == nil {
		return ap.String()
	}
	if a, err := netip.ParseAddr(seed); err == nil {
		return netip.AddrPortFrom(a, uint16(port)).String()
	}
	return seed
}

// reconnectLoop re-dials members memberlist declared dead (it never does so
// itself) and seeds that are not members, so the halves of a healed
// partition merge again. It also forgets members gone for long.
func (m *Mesh) reconnectLoop(ctx context.Context) {
	interval := min(time.Second, m.cfg.ReconnectInterval)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		case <-m.seedsAdded:
		}
		m.forgetGone()
		targets := append(m.deadTargets(), m.seedTargets()...)
		if len(targets) == 0 {
			interval = m.cfg.ReconnectInterval
			continue
		}
		n, err := m.ml.Join(targets)
		if n > 0 {
			m.log.Info("reconnected", "contacted", n, "of", len(targets))
			interval = m.cfg.ReconnectInterval
		} else {
			m.log.Debug("reconnect found nobody", "targets", targets, "err", err)
			interval = min(2*interval, m.cfg.ReconnectInterval)
		}
	}
}

// deadTargets returns the addresses of members that failed (not those that
// left on purpose).
func (m *Mesh) deadTargets() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, p := range m.peers {
		if p.state == Dead && p.addr.IsValid() {
			out = append(out, p.name+"/"+p.addr.String())
		}
	}
	slices.Sort(out)
	return out
}

// forgetGone drops members dead or departed for longer than Lease and its
// margin: by then the ledger's leader has reclaimed their blocks.
func (m *Mesh) forgetGone() {
	m.mu.Lock()
	defer m.mu.Unlock()
	forgot := false
	for name, p := range m.peers {
		if !p.state.Live() && time.Since(p.since) > m.cfg.Lease+ledger.LeaseMargin(m.cfg.Lease) {
			delete(m.peers, name)
			m.indexPeerLocked(p)
			forgot = true
		}
	}
	if forgot {
		m.countMembersLocked()
		signal(m.peersChanged)
	}
}
