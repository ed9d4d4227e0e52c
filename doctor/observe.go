package doctor

import (
	"cmp"
	"context"
	"errors"
	"io/fs"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/grapevine-net/grapevine/node"
	"github.com/grapevine-net/grapevine/status"
)

// Host is the kernel state doctor reads, in the host's network namespace.
// LinuxHost is the real one; tests hand Diagnose observations directly.
type Host interface {
	// Sysctl reads a setting by its path under /proc/sys
	// (net/ipv4/ip_forward).
	Sysctl(key string) (string, error)
	// Link resolves an interface; a missing one yields an error wrapping
	// node.ErrLinkNotFound.
	Link(name string) (node.Link, error)
	// Links lists every interface with its IPv4 addresses.
	Links() ([]node.Link, error)
	// Routes lists the main table's routes carrying node.RouteProtocol.
	Routes() ([]node.Route, error)
	// PodRoutes lists the main table's /32 and /128 routes of other protocols.
	PodRoutes() ([]node.Route, error)
	// HostVeths lists the veths whose alias begins with aliasPrefix.
	HostVeths(aliasPrefix string) ([]node.HostVeth, error)
	// PodNeighbours lists the IPv4 and IPv6 neighbour entries.
	PodNeighbours() ([]node.PodNeighbour, error)
	// ForwardChains lists the nftables base chains (families ip and
	// inet) hooked at forward.
	ForwardChains() ([]Chain, error)
	// LegacyRuleset is iptables-legacy-save's output; "" when
	// iptables-legacy holds no table in this namespace. An error wrapping
	// ErrNoLegacySave: it holds some, and the binary is not installed.
	LegacyRuleset(ctx context.Context) (string, error)
	// IptablesForward lists iptables' filter FORWARD chains (of
	// iptables-nft and iptables-legacy) with the agent's accept rules in
	// them, without creating a table (node.ForwardKernel).
	IptablesForward() ([]node.ForwardChain, error)
	// Firewall reads firewalld's and ufw's configuration files and
	// whether their tables are in the kernel.
	Firewall() (HostFirewall, error)
	// MasqueradeRules lists the comments of the masquerading rules in
	// table ip node.NFTTable.
	MasqueradeRules() ([]string, error)
}

// Dialer opens TCP connections to the peers; *net.Dialer is one.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Network is how doctor reaches the peers: TCP connects to their ports and
// don't-fragment echo requests over their paths. LinuxNetwork is the real
// one.
type Network interface {
	Dialer
	Pinger
	Clocker
}

// LinuxNetwork reaches the peers from the calling thread's network
// namespace.
type LinuxNetwork struct {
	net.Dialer
	ICMPPinger
}

// Chain is an nftables base chain.
type Chain struct {
	Family, Table, Name string
	// Policy is "accept" or "drop".
	Policy string
}

// Veth is a pod's host veth as the kernel has it.
type Veth struct {
	Name     string
	Index    int
	ProxyARP string
	// PodIPs are the /32 routes through the veth; Permanent the addresses
	// with a PERMANENT neighbour entry on it.
	PodIPs    []netip.Addr
	Permanent []netip.Addr
}

// Port is the outcome of one TCP connect to a peer.
type Port struct {
	Peer    string
	Check   string // CheckGossipPort or CheckLedgerPort
	Address string // host:port
	Err     string // empty: connected
}

// Observations are everything Diagnose judges: the agent's status and what
// the host's kernel and the peers' ports showed.
type Observations struct {
	Status status.Report
	// StatusErr is why the agent's status could not be read; Status is
	// then zero and only the host's own checks run.
	StatusErr string
	// IPForward (net.ipv4.ip_forward), IPForward6
	// (net.ipv6.conf.all.forwarding), RPFilterAll and RPFilterUplink are
	// sysctl values; each forwarding setting is read only where the node
	// has pods of its family (podFamilies).
	IPForward, IPForward6, RPFilterAll, RPFilterUplink string
	// Uplink and Tunnel are the interface towards the peers and the VXLAN
	// device; a zero Index: missing.
	Uplink, Tunnel node.Link
	// Links are all of the host's interfaces.
	Links         []node.Link
	PeerRoutes    []node.Route
	Veths         []Veth
	ForwardChains []Chain
	// IptablesForward are iptables' filter FORWARD chains with the
	// agent's accept rules in them.
	IptablesForward []node.ForwardChain
	// ConntrackCount and ConntrackMax are the connection tracking table's
	// use and size; "" when the kernel tracks no connections here.
	ConntrackCount, ConntrackMax string
	// Legacy is what iptables-legacy holds; zero: nothing.
	Legacy LegacyState
	// Masquerade holds the masquerading rules' comments.
	Masquerade []string
	Ports      []Port
	// PathMTU are the don't-fragment probes of the pod MTU.
	PathMTU []MTUProbe
	// Firewall is firewalld's and ufw's state.
	Firewall HostFirewall
	// Clocks are the live peers' clocks against this host's.
	Clocks []ClockProbe
	// Unread maps a check to why its input could not be read: the check
	// is then reported as not done rather than passed.
	Unread map[string]string
}

// DialTimeout bounds each TCP connect to a peer's port; all are made at
// once, so doctor's run time does not grow with the peers.
const DialTimeout = time.Second

var _ Host = (*LinuxHost)(nil)

// Observe reads what Diagnose needs beside st, the agent's status, or
// statusErr, why it could not be had. The peers are asked all at once,
// while the kernel is read.
func Observe(ctx context.Context, h Host, n Network, st status.Report, statusErr error) Observations {
	o := Observations{Status: st, Unread: map[string]string{}}
	if statusErr != nil {
		o.StatusErr = statusErr.Error()
	}
	unread := func(check string, err error) {
		if err != nil && o.Unread[check] == "" {
			o.Unread[check] = err.Error()
		}
	}
	var err error
	portsDone := make(chan []Port, 1)
	go func() { portsDone <- dialPeers(ctx, n, st) }()
	type mtuResult struct {
		probes []MTUProbe
		err    error
	}
	mtuDone := make(chan mtuResult, 1)
	go func() {
		probes, err := probePaths(ctx, n, st)
		mtuDone <- mtuResult{probes, err}
	}()
	type clockResult struct {
		probes []ClockProbe
		err    error
	}
	clockDone := make(chan clockResult, 1)
	go func() {
		probes, err := probeClocks(ctx, n, st)
		clockDone <- clockResult{probes, err}
	}()

	if v4, v6 := podFamilies(st); v4 || v6 {
		if v4 {
			o.IPForward, err = h.Sysctl("net/ipv4/ip_forward")
			unread(CheckIPForward, err)
		}
		if v6 {
			o.IPForward6, err = h.Sysctl("net/ipv6/conf/all/forwarding")
			unread(CheckIPForward, err)
		}
	}
	o.RPFilterAll, err = h.Sysctl("net/ipv4/conf/all/rp_filter")
	unread(CheckRPFilter, err)
	if st.Settings != nil && st.Settings.Iface != "" {
		o.RPFilterUplink, err = h.Sysctl("net/ipv4/conf/" + st.Settings.Iface + "/rp_filter")
		unread(CheckRPFilter, err)
		o.Uplink, err = h.Link(st.Settings.Iface)
		unread(CheckPeerRoute, err)
		if !errors.Is(err, node.ErrLinkNotFound) {
			unread(CheckHostAddress, err) // a missing uplink is the check's finding
		}
	}
	if o.Tunnel, err = h.Link(node.TunnelName); errors.Is(err, node.ErrLinkNotFound) {
		err = nil // no VXLAN device: no peer over VXLAN
	}
	unread(CheckPeerRoute, err)
	o.Links, err = h.Links()
	unread(CheckHostAddress, err)
	o.PeerRoutes, err = h.Routes()
	unread(CheckPeerRoute, err)
	o.Veths, err = observeVeths(h)
	unread(CheckProxyARP, err)
	o.ForwardChains, err = h.ForwardChains()
	unread(CheckForwardPolicy, err)
	o.IptablesForward, err = h.IptablesForward()
	unread(CheckForwardPolicy, err)
	o.ConntrackCount, o.ConntrackMax, err = readConntrack(h)
	unread(CheckConntrack, err)
	legacy, err := h.LegacyRuleset(ctx)
	unread(CheckLegacyIptables, err)
	if !errors.Is(err, ErrNoLegacySave) {
		// Without the binary forward-policy still judges nftables'
		// chains, and says what it cannot know of iptables-legacy's
		// (IptablesForward's Unhandled).
		unread(CheckForwardPolicy, err)
	}
	o.Legacy = parseLegacySave(legacy)
	o.Firewall, err = h.Firewall()
	unread(CheckHostFirewall, err)
	o.Masquerade, err = h.MasqueradeRules()
	unread(CheckMasquerade, err)
	o.Ports = <-portsDone
	mtu := <-mtuDone
	clocks := <-clockDone
	o.Clocks = clocks.probes
	unread(CheckClock, clocks.err)
	o.PathMTU = mtu.probes
	unread(CheckPathMTU, mtu.err)
	return o
}

// readConntrack reads the connection tracking table's use and size; both
// "" when conntrack is not loaded.
func readConntrack(h Host) (count, limit string, err error) {
	count, err = h.Sysctl("net/netfilter/nf_conntrack_count")
	if errors.Is(err, fs.ErrNotExist) {
		return "", "", nil
	}
	if err != nil {
		return "", "", err
	}
	limit, err = h.Sysctl("net/netfilter/nf_conntrack_max")
	return count, limit, err
}

// observeVeths reads the pods' host veths with their settings, routes and
// neighbour entries.
func observeVeths(h Host) ([]Veth, error) {
	links, err := h.HostVeths(node.NetworkName + "/")
	if err != nil {
		return nil, err
	}
	routes, err := h.PodRoutes()
	if err != nil {
		return nil, err
	}
	neighs, err := h.PodNeighbours()
	if err != nil {
		return nil, err
	}
	var out []Veth
	for _, l := range links {
		v := Veth{Name: l.Name, Index: l.Index}
		if v.ProxyARP, err = h.Sysctl("net/ipv4/conf/" + l.Name + "/proxy_arp"); err != nil {
			return nil, err
		}
		for _, r := range routes {
			if r.Unicast() && r.LinkIndex == l.Index && !r.Via.IsValid() {
				v.PodIPs = append(v.PodIPs, r.Dst.Addr())
			}
		}
		for _, n := range neighs {
			if n.LinkIndex == l.Index && n.Permanent {
				v.Permanent = append(v.Permanent, n.IP)
			}
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b Veth) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}

// dialPeers connects to every live peer's gossip and ledger ports at once.
// The ports are this agent's: a cluster's agents are started alike.
func dialPeers(ctx context.Context, d Dialer, st status.Report) []Port {
	if st.Settings == nil {
		return nil
	}
	var ports []Port
	for _, m := range st.Members {
		if m.Foreign || (m.State != "alive" && m.State != "suspect") {
			continue
		}
		addr := m.Addr
		if addr == "" {
			addr = m.HostIP
		}
		if addr == "" {
			continue
		}
		ports = append(ports,
			Port{Peer: m.Name, Check: CheckGossipPort, Address: net.JoinHostPort(addr, strconv.Itoa(st.Settings.GossipPort))},
			Port{Peer: m.Name, Check: CheckLedgerPort, Address: net.JoinHostPort(addr, strconv.Itoa(st.Settings.LedgerPort))})
	}
	var wg sync.WaitGroup
	for i := range ports {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, DialTimeout)
			defer cancel()
			c, err := d.DialContext(ctx, "tcp", ports[i].Address)
			if err != nil {
				ports[i].Err = err.Error()
				return
			}
			c.Close()
		})
	}
	wg.Wait()
	return ports
}
