package doctor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/node"
)

// fakeHost is a Host with its state in fields.
type fakeHost struct {
	sysctls    map[string]string
	links      map[string]node.Link
	routes     []node.Route
	podRoutes  []node.Route
	veths      []node.HostVeth
	neighs     []node.PodNeighbour
	chains     []Chain
	legacy     string // iptables-legacy-save's output
	legacyErr  error
	iptables   []node.ForwardChain
	masquerade []string
	routesErr  error
}

func (h *fakeHost) Sysctl(key string) (string, error) {
	v, ok := h.sysctls[key]
	if !ok {
		return "", fmt.Errorf("read %s: %w", key, fs.ErrNotExist)
	}
	return v, nil
}

func (h *fakeHost) Link(name string) (node.Link, error) {
	l, ok := h.links[name]
	if !ok {
		return node.Link{}, node.ErrLinkNotFound
	}
	return l, nil
}

func (h *fakeHost) Links() ([]node.Link, error) {
	var out []node.Link
	for _, l := range h.links {
		out = append(out, l)
	}
	return out, nil
}

func (h *fakeHost) Routes() ([]node.Route, error)                 { return h.routes, h.routesErr }
func (h *fakeHost) PodRoutes() ([]node.Route, error)              { return h.podRoutes, nil }
func (h *fakeHost) HostVeths(string) ([]node.HostVeth, error)     { return h.veths, nil }
func (h *fakeHost) PodNeighbours() ([]node.PodNeighbour, error)   { return h.neighs, nil }
func (h *fakeHost) ForwardChains() ([]Chain, error)               { return h.chains, nil }
func (h *fakeHost) IptablesForward() ([]node.ForwardChain, error) { return h.iptables, nil }
func (h *fakeHost) Firewall() (HostFirewall, error)               { return HostFirewall{}, nil }
func (h *fakeHost) LegacyRuleset(context.Context) (string, error) { return h.legacy, h.legacyErr }
func (h *fakeHost) MasqueradeRules() ([]string, error)            { return h.masquerade, nil }

// fakeNetwork accepts connections to open addresses and refuses the rest,
// and answers echo requests up to a size per address.
type fakeNetwork struct {
	mu     sync.Mutex
	open   map[string]bool
	dialed []string
	// answers is the largest request each address answers (none: no
	// answer); localMTU the largest this host sends (0: any).
	answers  map[netip.Addr]int
	localMTU int
	noRaw    bool // PingDF fails as without CAP_NET_RAW
	pings    map[netip.Addr][]int
	// clocks is how far each address's clock is ahead; none: in step.
	clocks map[netip.Addr]time.Duration
}

func (d *fakeNetwork) ClockOffset(_ context.Context, dst netip.Addr) (time.Duration, time.Duration, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.noRaw {
		return 0, 0, fmt.Errorf("%w: operation not permitted", ErrNoRawSocket)
	}
	return d.clocks[dst], time.Millisecond, nil
}

func (d *fakeNetwork) PingDF(ctx context.Context, dst netip.Addr, size int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pings == nil {
		d.pings = map[netip.Addr][]int{}
	}
	d.pings[dst] = append(d.pings[dst], size)
	if d.noRaw {
		return fmt.Errorf("%w: operation not permitted", ErrNoRawSocket)
	}
	if d.localMTU > 0 && size > d.localMTU {
		return ErrTooBig
	}
	if size > d.answers[dst] {
		return errors.New("no reply")
	}
	return nil
}

func (d *fakeNetwork) DialContext(_ context.Context, _, addr string) (net.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dialed = append(d.dialed, addr)
	if !d.open[addr] {
		return nil, errors.New("connection refused")
	}
	a, b := net.Pipe()
	b.Close()
	return a, nil
}

func TestObserve(t *testing.T) {
	st := healthy().Status
	other := netip.MustParseAddr("10.244.0.3")
	h := &fakeHost{
		sysctls: map[string]string{
			"net/ipv4/ip_forward": "1", "net/ipv4/conf/all/rp_filter": "0", "net/ipv4/conf/em1/rp_filter": "2",
			"net/ipv4/conf/gv1/proxy_arp": "1", "net/ipv4/conf/gv2/proxy_arp": "0",
			"net/netfilter/nf_conntrack_count": "7", "net/netfilter/nf_conntrack_max": "65536",
		},
		links:     map[string]node.Link{"em1": uplink},
		veths:     []node.HostVeth{{Name: "gv2", Index: 21}, {Name: "gv1", Index: 20}},
		podRoutes: []node.Route{{Dst: netip.PrefixFrom(podIP, 32), LinkIndex: 20}, {Dst: netip.PrefixFrom(other, 32), LinkIndex: 21}, {Dst: netip.MustParsePrefix("10.9.9.9/32"), Via: netip.MustParseAddr("172.16.254.9"), LinkIndex: 2}},
		neighs:    []node.PodNeighbour{{LinkIndex: 20, Neighbour: node.Neighbour{IP: podIP, Permanent: true}}, {LinkIndex: 21, Neighbour: node.Neighbour{IP: other}}},
		legacy:    "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n",
	}
	h2, h3VTEP := netip.MustParseAddr("172.16.254.2"), netip.MustParseAddr("10.244.4.0")
	d := &fakeNetwork{open: map[string]bool{"172.16.254.2:7962": true, "172.16.254.2:7963": true, "172.16.9.3:7962": true},
		answers: map[netip.Addr]int{h2: 1500, h3VTEP: 1400}, clocks: map[netip.Addr]time.Duration{h2: 10 * time.Minute}}
	o := Observe(context.Background(), h, d, st, nil)

	// The live members' host IPs, not the dead h4's.
	wantClocks := []ClockProbe{
		{Peer: "h2", Target: "172.16.254.2", Offset: 10 * time.Minute, Uncertainty: time.Millisecond},
		{Peer: "h3", Target: "172.16.9.3", Uncertainty: time.Millisecond},
	}
	if !slices.Equal(o.Clocks, wantClocks) {
		t.Errorf("clocks %+v, want %+v", o.Clocks, wantClocks)
	}

	want := []Veth{
		{Name: "gv1", Index: 20, ProxyARP: "1", PodIPs: []netip.Addr{podIP}, Permanent: []netip.Addr{podIP}},
		{Name: "gv2", Index: 21, ProxyARP: "0", PodIPs: []netip.Addr{other}},
	}
	if !slices.EqualFunc(o.Veths, want, func(a, b Veth) bool {
		return a.Name == b.Name && a.Index == b.Index && a.ProxyARP == b.ProxyARP && slices.Equal(a.PodIPs, b.PodIPs) && slices.Equal(a.Permanent, b.Permanent)
	}) {
		t.Errorf("veths %+v, want %+v", o.Veths, want)
	}
	if o.ConntrackCount != "7" || o.ConntrackMax != "65536" {
		t.Errorf("conntrack %s of %s, want 7 of 65536", o.ConntrackCount, o.ConntrackMax)
	}
	if o.IPForward != "1" || o.RPFilterUplink != "2" || o.Uplink.Index != uplink.Index || o.Tunnel.Index != 0 || o.Legacy.ForwardPolicy != "ACCEPT" {
		t.Errorf("observations %+v", o)
	}
	if len(o.Unread) != 0 {
		t.Errorf("unread %v, want none (a missing VXLAN device is no error)", o.Unread)
	}
	// The dead member h4 is not dialed; the live ones on both ports.
	var refused []string
	for _, p := range o.Ports {
		if p.Err != "" {
			refused = append(refused, p.Address)
		}
	}
	if len(o.Ports) != 4 || !slices.Equal(refused, []string{"172.16.9.3:7963"}) {
		t.Errorf("ports %+v, want 4 dialed and 172.16.9.3:7963 refused", o.Ports)
	}

	// h2 is probed directly at its host IP, h3 over VXLAN at its VTEP,
	// which answers only smaller requests: three tries at the pod MTU,
	// then a minimal one.
	wantMTU := []MTUProbe{
		{Peer: "h2", Target: "172.16.254.2", Path: "direct", Size: 1450},
		{Peer: "h3", Target: "10.244.4.0", Path: "vxlan", Size: 1450, Err: "no reply"},
	}
	if !slices.Equal(o.PathMTU, wantMTU) {
		t.Errorf("path MTU probes %+v, want %+v", o.PathMTU, wantMTU)
	}
	if got := d.pings[h3VTEP]; !slices.Equal(got, []int{1450, 1450, 1450, 64}) {
		t.Errorf("requests to h3's VTEP %v, want three of the pod MTU and a minimal one", got)
	}

	// Without the right to ping, the paths are not checked rather than
	// found broken.
	d.noRaw = true
	if o := Observe(context.Background(), h, d, st, nil); o.PathMTU != nil || o.Unread[CheckPathMTU] == "" {
		t.Errorf("without a raw socket: probes %+v, unread %q; want none and a reason", o.PathMTU, o.Unread[CheckPathMTU])
	}
	d.noRaw = false

	delete(h.sysctls, "net/netfilter/nf_conntrack_count")
	if o := Observe(context.Background(), h, d, st, nil); o.ConntrackCount != "" || o.Unread[CheckConntrack] != "" {
		t.Errorf("without conntrack: count %q, unread %q; want neither", o.ConntrackCount, o.Unread[CheckConntrack])
	}

	h.routesErr = errors.New("permission denied")
	if o := Observe(context.Background(), h, d, st, nil); o.Unread[CheckPeerRoute] == "" {
		t.Errorf("a failed route dump is not reported: %v", o.Unread)
	}
}

// Where iptables-legacy holds a filter table and neither doctor nor the
// node code it uses has the binary (the agent's image), forward-policy
// still judges nftables' chains and warns that iptables-legacy's FORWARD
// is unknown; only legacy-iptables is not checked.
func TestObserveLegacyWithoutBinary(t *testing.T) {
	h := &fakeHost{
		sysctls:   map[string]string{"net/ipv4/ip_forward": "1"},
		chains:    []Chain{{Family: "inet", Table: "fw", Name: "forward", Policy: "drop"}},
		legacyErr: fmt.Errorf("iptables-legacy holds tables filter but %w", ErrNoLegacySave),
		iptables:  []node.ForwardChain{{Backend: node.BackendLegacy, Unhandled: "no iptables-legacy binary here"}},
	}
	fs := Diagnose(Observe(context.Background(), h, &fakeNetwork{}, healthy().Status, nil))
	has := func(check, subject string, sev Severity, seen string) bool {
		return slices.ContainsFunc(fs, func(f Finding) bool {
			return f.Check == check && f.Subject == subject && f.Severity == sev && strings.HasPrefix(f.Seen, seen)
		})
	}
	if !has(CheckForwardPolicy, "nftables inet fw chain forward", Fail, "") {
		t.Errorf("no failed forward-policy for nftables' dropping chain: %+v", fs)
	}
	if !has(CheckForwardPolicy, "iptables-legacy filter FORWARD", Warn, "a filter table of iptables-legacy") {
		t.Errorf("no warning that iptables-legacy's FORWARD is unknown: %+v", fs)
	}
	if !has(CheckLegacyIptables, "", Warn, "not checked: iptables-legacy holds tables filter but iptables-legacy-save is not installed") {
		t.Errorf("legacy-iptables not reported as not checked: %+v", fs)
	}
}
