package doctor

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/node"
	"github.com/grapevine-net/grapevine/status"
)

var (
	uplink = node.Link{Name: "em1", Index: 2, Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("172.16.254.1/24")}}
	eth1   = node.Link{Name: "eth1", Index: 3, Up: true, Addrs: []netip.Prefix{netip.MustParsePrefix("192.168.7.1/24")}}
	tunnel = node.Link{Name: node.TunnelName, Index: 9, Up: true}
	podIP  = netip.MustParseAddr("10.244.0.2")
)

// healthy is a host with one peer reached directly (h2), one over VXLAN
// (h3), one pod, and nothing wrong.
func healthy() Observations {
	h3Block := netip.MustParsePrefix("10.244.4.0/23")
	return Observations{
		Status: status.Report{
			Node: "h1", HostIP: "172.16.254.1", Block: "10.244.0.0/23", Ready: true,
			Settings: &status.Settings{Iface: "em1", Pool: "10.244.0.0/16", Masquerade: true, GossipPort: 7962, LedgerPort: 7963, PodMTU: 1450},
			Members: []status.Member{
				{Name: "h2", Addr: "172.16.254.2", HostIP: "172.16.254.2", Block: "10.244.2.0/23", State: "alive", Route: node.PeerProgrammed,
					Path: "direct", PathReason: "172.16.254.2 is on em1's 172.16.254.0/24", DataPath: "up",
					DataPathHealth: &status.PathHealth{Requests: 60, RTTp50ms: 0.08, RTTp99ms: 0.3}},
				{Name: "h3", Addr: "172.16.9.3", HostIP: "172.16.9.3", Block: "10.244.4.0/23", State: "alive", Route: node.PeerProgrammed,
					Path: "vxlan", PathReason: "172.16.9.3 is on none of em1's networks", DataPath: "up",
					DataPathHealth: &status.PathHealth{Requests: 60, RTTp50ms: 0.2, RTTp99ms: 0.5}},
				{Name: "h4", HostIP: "172.16.254.4", Block: "10.244.6.0/23", State: "dead", Route: status.RouteWithdrawn},
			},
		},
		IPForward: "1", RPFilterAll: "0", RPFilterUplink: "2",
		ConntrackCount: "120", ConntrackMax: "262144",
		Uplink: uplink, Tunnel: tunnel,
		Links: []node.Link{{Name: "lo", Index: 1, Addrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8")}}, uplink, eth1, tunnel},
		PeerRoutes: []node.Route{
			{Dst: netip.MustParsePrefix("10.244.0.0/16"), Unreachable: true, Metric: node.UnreachableMetric},
			{Dst: netip.MustParsePrefix("10.244.0.0/23"), Blackhole: true},
			{Dst: netip.MustParsePrefix("10.244.2.0/23"), Via: netip.MustParseAddr("172.16.254.2"), LinkIndex: uplink.Index},
			{Dst: h3Block, Via: node.VTEPAddr(h3Block), LinkIndex: tunnel.Index, OnLink: true},
		},
		Veths:         []Veth{{Name: "gv1234", Index: 20, ProxyARP: "1", PodIPs: []netip.Addr{podIP}, Permanent: []netip.Addr{podIP}}},
		ForwardChains: []Chain{{Family: "inet", Table: "filter", Name: "forward", Policy: "accept"}},
		Masquerade:    []string{"grapevine masquerade 10.244.0.0/16"},
		Ports: []Port{
			{Peer: "h2", Check: CheckGossipPort, Address: "172.16.254.2:7962"},
			{Peer: "h2", Check: CheckLedgerPort, Address: "172.16.254.2:7963"},
		},
		PathMTU: []MTUProbe{
			{Peer: "h2", Target: "172.16.254.2", Path: "direct", Size: 1450},
			{Peer: "h3", Target: "10.244.4.0", Path: "vxlan", Size: 1450},
		},
		Clocks: []ClockProbe{
			{Peer: "h2", Target: "172.16.254.2", Offset: 3 * time.Millisecond, Uncertainty: time.Millisecond},
			{Peer: "h3", Target: "172.16.9.3", Offset: -20 * time.Millisecond, Uncertainty: 2 * time.Millisecond},
		},
	}
}

// verdict is a finding's check, subject and severity.
type verdict struct {
	check, subject string
	severity       Severity
}

func TestDiagnose(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Observations)
		// want are the findings that are not OK; every other must be.
		want []verdict
	}{
		{"healthy", func(*Observations) {}, nil},
		{"agent unreachable: host checks still run", func(o *Observations) {
			o.Status, o.StatusErr, o.Ports, o.PathMTU, o.IPForward = status.Report{}, "cannot reach the agent", nil, nil, "0"
		}, []verdict{{CheckAgent, "", Fail}, {CheckIPForward, "", Fail}}},
		{"agent not ready", func(o *Observations) { o.Status.Ready, o.Status.Reason = false, "no block" },
			[]verdict{{CheckAgent, "h1", Fail}}},
		{"agent degraded", func(o *Observations) { o.Status.Degraded = "lease not renewed" },
			[]verdict{{CheckAgent, "h1", Warn}}},
		{"host address gone from the uplink", func(o *Observations) {
			o.Uplink.Addrs = []netip.Prefix{netip.MustParsePrefix("172.16.254.51/24")}
		}, []verdict{{CheckHostAddress, "em1", Fail}}},
		{"uplink gone", func(o *Observations) { o.Uplink = node.Link{} },
			[]verdict{{CheckHostAddress, "em1", Fail}}},
		{"a VXLAN peer on another interface's network", func(o *Observations) {
			o.Links[2].Addrs = append(o.Links[2].Addrs, netip.MustParsePrefix("172.16.9.1/24"))
		}, []verdict{{CheckHostAddress, "h3", Warn}}},
		{"ip_forward off", func(o *Observations) { o.IPForward = "0" },
			[]verdict{{CheckIPForward, "", Fail}}},
		{"rp_filter strict on the uplink with a VXLAN peer", func(o *Observations) { o.RPFilterUplink = "1" },
			[]verdict{{CheckRPFilter, "em1", Fail}}},
		{"rp_filter strict through conf/all with a VXLAN peer", func(o *Observations) { o.RPFilterAll, o.RPFilterUplink = "1", "0" },
			[]verdict{{CheckRPFilter, "em1", Fail}}},
		{"rp_filter strict, every peer direct", func(o *Observations) {
			o.RPFilterUplink = "1"
			o.Status.Members = o.Status.Members[:1]
			o.PeerRoutes = o.PeerRoutes[:3]
		}, nil},
		{"a peer route deleted", func(o *Observations) { o.PeerRoutes = slices.Delete(o.PeerRoutes, 2, 3) },
			[]verdict{{CheckPeerRoute, "h2", Fail}}},
		{"a peer route through the wrong device", func(o *Observations) { o.PeerRoutes[2].LinkIndex = 7 },
			[]verdict{{CheckPeerRoute, "h2", Fail}}},
		{"a VXLAN route without onlink", func(o *Observations) { o.PeerRoutes[3].OnLink = false },
			[]verdict{{CheckPeerRoute, "h3", Fail}}},
		{"the agent's last pass failed a peer", func(o *Observations) { o.Status.Members[0].Route = "error: route exists" },
			[]verdict{{CheckPeerRoute, "h2", Warn}}},
		{"a route of a block nobody routed holds", func(o *Observations) {
			o.PeerRoutes = append(o.PeerRoutes, node.Route{Dst: netip.MustParsePrefix("10.244.6.0/23"), Via: netip.MustParseAddr("172.16.254.4"), LinkIndex: uplink.Index})
		}, []verdict{{CheckStaleRoute, "10.244.6.0/23", Warn}}},
		{"routes not readable", func(o *Observations) { o.Unread = map[string]string{CheckPeerRoute: "permission denied"} },
			[]verdict{{CheckPeerRoute, "", Warn}}},
		{"data path down", func(o *Observations) {
			o.Status.Members[0].DataPath = "down"
			o.Status.Members[0].DataPathHealth = &status.PathHealth{Requests: 20, Lost: 20, Loss: 1}
		}, []verdict{{CheckPeerDataPath, "h2", Fail}}},
		{"data path losing a quarter", func(o *Observations) {
			o.Status.Members[1].DataPathHealth = &status.PathHealth{Requests: 80, Lost: 20, Loss: 0.25, RTTp50ms: 1, RTTp99ms: 9}
		}, []verdict{{CheckPeerDataPath, "h3", Fail}}},
		{"data path losing a little", func(o *Observations) {
			o.Status.Members[1].DataPathHealth = &status.PathHealth{Requests: 60, Lost: 3, Loss: 0.05}
		}, []verdict{{CheckPeerDataPath, "h3", Warn}}},
		{"data path not probed", func(o *Observations) {
			o.Status.Members[0].DataPath, o.Status.Members[0].DataPathHealth = "", nil
		}, []verdict{{CheckPeerDataPath, "h2", Warn}}},
		{"path MTU below the pod MTU on this host", func(o *Observations) {
			o.PathMTU[0].Err = "1450 bytes to 172.16.254.2: " + ErrTooBig.Error()
		}, []verdict{{CheckPathMTU, "h2", Fail}}},
		{"full-size probes lost on the way, small ones answered", func(o *Observations) {
			o.PathMTU[1].Err = "no reply"
		}, []verdict{{CheckPathMTU, "h3", Fail}}},
		{"a direct peer answers no probe at all", func(o *Observations) {
			o.PathMTU[0].Err, o.PathMTU[0].SmallErr = "no reply", "no reply"
		}, []verdict{{CheckPathMTU, "h2", Warn}}},
		{"a VXLAN peer answers nothing, not even in the clear", func(o *Observations) {
			o.PathMTU[1].Err, o.PathMTU[1].SmallErr = "no reply", "no reply"
			o.Status.Members[1].DataPath = "down"
		}, []verdict{{CheckPeerDataPath, "h3", Fail}, {CheckPathMTU, "h3", Warn}}},
		{"VXLAN peer unreachable through the tunnel while its host answers", func(o *Observations) {
			o.PathMTU[1].Err, o.PathMTU[1].SmallErr = "no reply", "no reply"
			o.Status.Members[1].DataPath = "up"
		}, []verdict{{CheckVXLAN, "h3", Fail}}},
		{"no raw ICMP socket: paths not probed", func(o *Observations) {
			o.PathMTU, o.Unread = nil, map[string]string{CheckPathMTU: ErrNoRawSocket.Error()}
		}, []verdict{{CheckPathMTU, "", Warn}}},
		{"ledger port closed", func(o *Observations) { o.Ports[1].Err = "connection refused" },
			[]verdict{{CheckLedgerPort, "h2", Fail}}},
		{"gossip port dropped", func(o *Observations) { o.Ports[0].Err = "i/o timeout" },
			[]verdict{{CheckGossipPort, "h2", Fail}}},
		{"proxy_arp off on a pod veth", func(o *Observations) { o.Veths[0].ProxyARP = "0" },
			[]verdict{{CheckProxyARP, "gv1234", Fail}}},
		{"pod neighbour entry missing", func(o *Observations) { o.Veths[0].Permanent = nil },
			[]verdict{{CheckPodNeighbour, "gv1234", Fail}}},
		{"pod route missing", func(o *Observations) { o.Veths[0].PodIPs = nil },
			[]verdict{{CheckPodRoute, "gv1234", Fail}}},
		{"nftables forward chain dropping by policy", func(o *Observations) { o.ForwardChains[0].Policy = "drop" },
			[]verdict{{CheckForwardPolicy, "nftables inet filter chain forward", Fail}}},
		{"iptables-legacy FORWARD DROP", func(o *Observations) { o.Legacy.ForwardPolicy = "DROP" },
			[]verdict{{CheckForwardPolicy, "iptables-legacy filter FORWARD", Fail}}},
		{"iptables-nft's filter FORWARD dropping, the agent's accept rules in it", func(o *Observations) {
			o.ForwardChains = append(o.ForwardChains, Chain{Family: "ip", Table: "filter", Name: "FORWARD", Policy: "drop"})
			o.IptablesForward = []node.ForwardChain{{Backend: node.BackendNFT, Policy: "DROP", Ours: acceptRules(node.BackendNFT, "10.244.0.0/16")}}
		}, nil},
		{"iptables-nft's filter FORWARD dropping, only one accept rule", func(o *Observations) {
			o.ForwardChains = append(o.ForwardChains, Chain{Family: "ip", Table: "filter", Name: "FORWARD", Policy: "drop"})
			o.IptablesForward = []node.ForwardChain{{Backend: node.BackendNFT, Policy: "DROP", Ours: acceptRules(node.BackendNFT, "10.244.0.0/16")[1:]}}
		}, []verdict{{CheckForwardPolicy, "nftables ip filter chain FORWARD", Fail}}},
		{"iptables-nft's filter FORWARD dropping, accept rules of another pool", func(o *Observations) {
			o.ForwardChains = append(o.ForwardChains, Chain{Family: "ip", Table: "filter", Name: "FORWARD", Policy: "drop"})
			o.IptablesForward = []node.ForwardChain{{Backend: node.BackendNFT, Policy: "DROP", Ours: acceptRules(node.BackendNFT, "10.99.0.0/16")}}
		}, []verdict{{CheckForwardPolicy, "nftables ip filter chain FORWARD", Fail}}},
		{"iptables-legacy FORWARD DROP, the agent's accept rules in it", func(o *Observations) {
			o.Legacy.ForwardPolicy = "DROP"
			o.IptablesForward = []node.ForwardChain{{Backend: node.BackendLegacy, Policy: "DROP", Ours: acceptRules(node.BackendLegacy, "10.244.0.0/16")}}
		}, nil},
		{"iptables-legacy filter table, no binary to read it", func(o *Observations) {
			o.IptablesForward = []node.ForwardChain{{Backend: node.BackendLegacy, Unhandled: "no iptables-legacy binary"}}
		}, []verdict{{CheckForwardPolicy, "iptables-legacy filter FORWARD", Warn}}},
		{"iptables-legacy FORWARD DROP, the agent without the binary", func(o *Observations) {
			o.Legacy.ForwardPolicy = "DROP"
			o.IptablesForward = []node.ForwardChain{{Backend: node.BackendLegacy, Unhandled: "no iptables-legacy binary"}}
		}, []verdict{{CheckForwardPolicy, "iptables-legacy filter FORWARD", Fail}}},
		{"iptables-legacy FORWARD ACCEPT, no rules", func(o *Observations) { o.Legacy.ForwardPolicy = "ACCEPT" }, nil},
		{"iptables-legacy rules beside nftables", func(o *Observations) {
			o.Legacy = LegacyState{ForwardPolicy: "ACCEPT", Rules: 2, NATPostrouting: []string{"-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"}}
		}, []verdict{{CheckLegacyIptables, "", Warn}}},
		{"iptables-legacy masquerading pod-to-pod traffic", func(o *Observations) {
			o.Legacy = LegacyState{Rules: 1, NATPostrouting: []string{"-A POSTROUTING -s 10.244.0.0/16 -j MASQUERADE"}}
		}, []verdict{{CheckLegacyIptables, "nat POSTROUTING", Fail}}},
		{"h2's clock 10 minutes ahead", func(o *Observations) { o.Clocks[0].Offset = 10 * time.Minute },
			[]verdict{{CheckClock, "h2", Fail}}},
		{"h3's clock 10 minutes behind", func(o *Observations) { o.Clocks[1].Offset = -10 * time.Minute },
			[]verdict{{CheckClock, "h3", Fail}}},
		{"h2's clock 2 s ahead", func(o *Observations) { o.Clocks[0].Offset = 2 * time.Second },
			[]verdict{{CheckClock, "h2", Warn}}},
		{"h2's clock 1.2 s ahead, but within the round trip of 1 s", func(o *Observations) {
			o.Clocks[0].Offset, o.Clocks[0].Uncertainty = 1200*time.Millisecond, 500*time.Millisecond
		}, nil},
		{"h2 answers no timestamp request", func(o *Observations) { o.Clocks[0].Err = "no timestamp reply from 172.16.254.2 within 400ms" },
			[]verdict{{CheckClock, "h2", Warn}}},
		{"clocks not read without CAP_NET_RAW", func(o *Observations) { o.Clocks, o.Unread = nil, map[string]string{CheckClock: ErrNoRawSocket.Error()} },
			[]verdict{{CheckClock, "", Warn}}},
		{"firewalld's public zone opens only ssh", func(o *Observations) {
			o.Firewall = HostFirewall{FirewalldActive: true, FirewalldZones: map[string]string{"public": publicZone}, FirewalldServices: map[string]string{"ssh": sshService}}
		}, []verdict{{CheckHostFirewall, "firewalld", Fail}}},
		{"firewalld's zone of em1 opens Grapevine's ports", func(o *Observations) {
			o.Firewall = HostFirewall{FirewalldActive: true, FirewalldZones: map[string]string{"public": publicZone,
				"gv": `<zone><interface name="em1"/><port protocol="tcp" port="7962-7963"/><port protocol="udp" port="7962"/><port protocol="udp" port="4789"/></zone>`}}
		}, nil},
		{"firewalld installed but not running: its files are not judged", func(o *Observations) {
			o.Firewall = HostFirewall{FirewalldZones: map[string]string{"public": publicZone}}
		}, nil},
		{"ufw enabled, dropping, ssh allowed only", func(o *Observations) {
			o.Firewall = HostFirewall{UFWActive: true, UFWConf: "ENABLED=yes\n", UFWDefaults: "DEFAULT_INPUT_POLICY=\"DROP\"\n",
				UFWUserRules: "### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in\n"}
		}, []verdict{{CheckHostFirewall, "ufw", Fail}}},
		{"ufw allows the gossip and ledger ports, encapsulation never: no VXLAN port needed", func(o *Observations) {
			o.Status.Encapsulation = "never"
			o.Firewall = HostFirewall{UFWActive: true, UFWConf: "ENABLED=yes\n", UFWDefaults: "DEFAULT_INPUT_POLICY=\"DROP\"\n",
				UFWUserRules: "### tuple ### allow any 7962 0.0.0.0/0 any 0.0.0.0/0 in\n### tuple ### allow tcp 7963 0.0.0.0/0 any 0.0.0.0/0 in\n"}
		}, nil},
		{"conntrack table 85 % full", func(o *Observations) { o.ConntrackCount, o.ConntrackMax = "850", "1000" },
			[]verdict{{CheckConntrack, "", Warn}}},
		{"conntrack table full", func(o *Observations) { o.ConntrackCount, o.ConntrackMax = "1000", "1000" },
			[]verdict{{CheckConntrack, "", Fail}}},
		{"no conntrack here", func(o *Observations) { o.ConntrackCount, o.ConntrackMax = "", "" }, nil},
		{"conntrack unreadable", func(o *Observations) { o.ConntrackCount, o.ConntrackMax = "12", "" },
			[]verdict{{CheckConntrack, "", Warn}}},
		{"masquerade rule missing", func(o *Observations) { o.Masquerade = nil },
			[]verdict{{CheckMasquerade, "", Fail}}},
		{"masquerade rule for another pool", func(o *Observations) { o.Masquerade = []string{"grapevine masquerade 10.9.0.0/16"} },
			[]verdict{{CheckMasquerade, "", Fail}}},
		{"masquerade off by flag", func(o *Observations) { o.Masquerade, o.Status.Settings.Masquerade = nil, false }, nil},
		{"an older agent without settings", func(o *Observations) { o.Status.Settings = nil },
			[]verdict{{CheckAgent, "", Warn}}},
		{"network policy enforced", func(o *Observations) {
			o.Status.NetworkPolicy = status.NetworkPolicy{Enabled: true, Socket: "/run/grapevine/policy.sock", Synced: true, Policies: 3, Pods: 2}
		}, nil},
		{"grapevine-policy not answering", func(o *Observations) {
			o.Status.NetworkPolicy = status.NetworkPolicy{Enabled: true, Socket: "/run/grapevine/policy.sock", Unreachable: "connection refused"}
		}, []verdict{{CheckNetworkPolicy, "/run/grapevine/policy.sock", Fail}}},
		{"grapevine-policy waiting for its first lists", func(o *Observations) {
			o.Status.NetworkPolicy = status.NetworkPolicy{Enabled: true, Socket: "/run/grapevine/policy.sock"}
		}, []verdict{{CheckNetworkPolicy, "/run/grapevine/policy.sock", Warn}}},
		{"grapevine-policy's ruleset refused", func(o *Observations) {
			o.Status.NetworkPolicy = status.NetworkPolicy{Enabled: true, Socket: "/run/grapevine/policy.sock", Synced: true, Error: "invalid argument"}
		}, []verdict{{CheckNetworkPolicy, "/run/grapevine/policy.sock", Fail}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := healthy()
			tt.change(&o)
			fs := Diagnose(o)
			var got []verdict
			for _, f := range fs {
				if f.Check == "" || f.Seen == "" {
					t.Errorf("finding without check or what was seen: %+v", f)
				}
				if f.Severity == OK {
					continue
				}
				if f.Cause == "" || f.Fix == "" {
					t.Errorf("%s finding without cause or fix: %+v", f.Severity, f)
				}
				got = append(got, verdict{f.Check, f.Subject, f.Severity})
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("findings not OK: %v, want %v\n%s", got, tt.want, render(fs))
			}
			if Failed(fs) != slices.ContainsFunc(tt.want, func(v verdict) bool { return v.severity == Fail }) {
				t.Fatalf("Failed = %v for %v", Failed(fs), tt.want)
			}
		})
	}
}

func render(fs []Finding) string {
	var b strings.Builder
	for _, f := range fs {
		b.WriteString(string(f.Severity) + " " + f.Check + " " + f.Subject + ": " + f.Seen + "\n")
	}
	return b.String()
}

func TestParseLegacySave(t *testing.T) {
	out := `# Generated by iptables-save v1.8.9 on Mon Dec  7 12:00:00 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -j DOCKER-USER
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 10.244.0.0/16 -j MASQUERADE
COMMIT
`
	got := parseLegacySave(out)
	want := LegacyState{ForwardPolicy: "DROP", Rules: 3, NATPostrouting: []string{"-A POSTROUTING -s 10.244.0.0/16 -j MASQUERADE"}}
	if got.ForwardPolicy != want.ForwardPolicy || got.Rules != want.Rules || !slices.Equal(got.NATPostrouting, want.NATPostrouting) {
		t.Fatalf("parseLegacySave = %+v, want %+v", got, want)
	}
	if got := parseLegacySave(""); got.ForwardPolicy != "" || got.Rules != 0 {
		t.Fatalf("parseLegacySave of nothing = %+v", got)
	}
}

func TestNATCatchesPodToPod(t *testing.T) {
	pool := netip.MustParsePrefix("10.244.0.0/16")
	tests := []struct {
		rule string
		want bool
	}{
		{"-A POSTROUTING -s 10.244.0.0/16 -j MASQUERADE", true},
		{"-A POSTROUTING -j MASQUERADE", true},
		{"-A POSTROUTING -o em1 -j MASQUERADE", true},
		{"-A POSTROUTING -o em+ -j MASQUERADE", true},
		{"-A POSTROUTING -s 10.244.2.0/23 -o em1 -j SNAT --to-source 172.16.254.1", true},
		{"-A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE", false},
		{"-A POSTROUTING -s 10.244.0.0/16 -d 8.8.8.8/32 -j MASQUERADE", false},
		{"-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE", false},
		{"-A POSTROUTING -o eth1 -j MASQUERADE", false},
		{"-A POSTROUTING ! -o em1 -j MASQUERADE", false},
		{"-A POSTROUTING -s 10.244.0.0/16 -j ACCEPT", false},
		{"-A POSTROUTING -s 10.244.0.0/16 -j RETURN", false},
		{"-A POSTROUTING ! -s 10.0.0.0/8 -j MASQUERADE", false},
		{"-A POSTROUTING ! -s 10.244.2.0/23 -j MASQUERADE", true},
	}
	for _, tt := range tests {
		if got := natCatchesPodToPod(tt.rule, pool, "em1"); got != tt.want {
			t.Errorf("natCatchesPodToPod(%q) = %v, want %v", tt.rule, got, tt.want)
		}
	}
}

func TestRPFilterEffective(t *testing.T) {
	tests := []struct{ all, iface, want string }{
		{"0", "0", "0"}, {"0", "1", "1"}, {"1", "0", "1"}, {"2", "1", "2"}, {"1", "2", "2"}, {"", "1", "1"},
	}
	for _, tt := range tests {
		if got := rpFilterEffective(tt.all, tt.iface); got != tt.want {
			t.Errorf("rpFilterEffective(%s, %s) = %s, want %s", tt.all, tt.iface, got, tt.want)
		}
	}
}

// acceptRules are the agent's accept rules for pool in backend's chain.
func acceptRules(backend, pool string) []node.ForwardRule {
	var rules []node.ForwardRule
	for _, spec := range node.ForwardAcceptSpecs(netip.MustParsePrefix(pool)) {
		rules = append(rules, node.ForwardRule{Backend: backend, Spec: spec})
	}
	return rules
}

func TestICMPClockOffset(t *testing.T) {
	const day = msPerDay
	tests := []struct {
		name                                 string
		originate, receive, transmit, arrive uint32
		offset, uncertainty                  time.Duration
	}{
		{"in step, 2 ms round trip", 1000, 1001, 1001, 1002, 0, time.Millisecond},
		{"peer 10 minutes ahead", 1000, 601001, 601001, 1002, 10 * time.Minute, time.Millisecond},
		{"peer 10 minutes behind", 700000, 100001, 100001, 700002, -10 * time.Minute, time.Millisecond},
		{"across midnight here: peer in step", day - 1, 0, 0, 1, 0, time.Millisecond},
		{"peer past midnight, 10 minutes ahead", day - 300000, 300000, 300000, day - 300000, 10 * time.Minute, 0},
		{"peer 10 minutes behind across midnight", 300000, day - 300000, day - 300000, 300000, -10 * time.Minute, 0},
		{"the peer held the request 5 ms: not counted in the round trip", 1000, 1001, 1006, 1007, 0, time.Millisecond},
	}
	for _, tt := range tests {
		off, unc := icmpClockOffset(tt.originate, tt.receive, tt.transmit, tt.arrive)
		if off != tt.offset || unc != tt.uncertainty {
			t.Errorf("%s: offset %v ±%v, want %v ±%v", tt.name, off, unc, tt.offset, tt.uncertainty)
		}
	}
}

func TestICMPChecksum(t *testing.T) {
	// A timestamp request whose checksum field holds the checksum sums to
	// 0xffff, i.e. checksums to zero.
	req := []byte{13, 0, 0, 0, 0x12, 0x34, 0, 1, 0x01, 0x02, 0x03, 0x04, 0, 0, 0, 0, 0, 0, 0, 0}
	sum := icmpChecksum(req)
	req[2], req[3] = byte(sum>>8), byte(sum)
	if got := icmpChecksum(req); got != 0 {
		t.Errorf("checksum over a message with its checksum = %#x, want 0", got)
	}
}

// dualStack is healthy with an IPv6 pool: h2's IPv6 block routed directly
// via its IPv6 address, h3's over VXLAN on the IPv4 underlay.
func dualStack() Observations {
	o := healthy()
	h2Block6, h3Block6 := netip.MustParsePrefix("fd00:10:244:1::/64"), netip.MustParsePrefix("fd00:10:244:2::/64")
	o.Status.Block6, o.Status.HostIP6 = "fd00:10:244::/64", "fd00:172:16:254::1"
	o.IPForward6 = "1"
	o.Status.Members[0].Block6, o.Status.Members[0].HostIP6 = h2Block6.String(), "fd00:172:16:254::2"
	o.Status.Members[0].Path6, o.Status.Members[0].Path6Reason = "direct", "fd00:172:16:254::2 is on em1's fd00:172:16:254::/64"
	o.Status.Members[1].Block6 = h3Block6.String()
	o.Status.Members[1].Path6, o.Status.Members[1].Path6Reason = "vxlan", "this host or the peer has no IPv6 address to route via; over VXLAN to 172.16.9.3"
	o.Status.Members[2].Block6 = "fd00:10:244:3::/64"
	o.PeerRoutes = append(o.PeerRoutes,
		node.Route{Dst: netip.MustParsePrefix("fd00:10:244::/48"), Unreachable: true, Metric: node.UnreachableMetric},
		node.Route{Dst: netip.MustParsePrefix("fd00:10:244::/64"), Blackhole: true, Metric: node.IPv6DefaultMetric},
		node.Route{Dst: h2Block6, Via: netip.MustParseAddr("fd00:172:16:254::2"), LinkIndex: uplink.Index, Metric: node.IPv6DefaultMetric},
		node.Route{Dst: h3Block6, Via: node.VTEPAddr(h3Block6), LinkIndex: tunnel.Index, OnLink: true, Metric: node.IPv6DefaultMetric},
	)
	return o
}

// TestDiagnosePeerRoutes6: each peer's IPv6 block route is held against
// its path in the status, as the IPv4 one is.
func TestDiagnosePeerRoutes6(t *testing.T) {
	const h2Route6, h3Route6 = 6, 7 // indexes in dualStack's PeerRoutes
	tests := []struct {
		name   string
		change func(*Observations)
		want   []verdict
	}{
		{"healthy dual stack", func(*Observations) {}, nil},
		{"IPv6 forwarding off", func(o *Observations) { o.IPForward6 = "0" },
			[]verdict{{CheckIPForward, "", Fail}}},
		{"a direct IPv6 route deleted", func(o *Observations) { o.PeerRoutes = slices.Delete(o.PeerRoutes, h2Route6, h2Route6+1) },
			[]verdict{{CheckPeerRoute, "h2 (IPv6)", Fail}}},
		{"a direct IPv6 route via the peer's IPv4 VTEP instead", func(o *Observations) {
			r := &o.PeerRoutes[h2Route6]
			r.Via, r.LinkIndex, r.OnLink = node.VTEPAddr(r.Dst), tunnel.Index, true
		}, []verdict{{CheckPeerRoute, "h2 (IPv6)", Fail}}},
		{"an IPv6 route via another IPv6 address", func(o *Observations) {
			o.PeerRoutes[h2Route6].Via = netip.MustParseAddr("fd00:172:16:254::9")
		}, []verdict{{CheckPeerRoute, "h2 (IPv6)", Fail}}},
		{"a VXLAN IPv6 route without onlink", func(o *Observations) { o.PeerRoutes[h3Route6].OnLink = false },
			[]verdict{{CheckPeerRoute, "h3 (IPv6)", Fail}}},
		{"the agent's last pass failed a peer: both families warn", func(o *Observations) { o.Status.Members[0].Route = "error: route exists" },
			[]verdict{{CheckPeerRoute, "h2", Warn}, {CheckPeerRoute, "h2 (IPv6)", Warn}}},
		{"a peer's IPv6 block without a path", func(o *Observations) {
			o.Status.Members[1].Path6, o.Status.Members[1].Path6Reason = "none", "this host or the peer has no IPv6 address to route via; --encapsulation=never"
			o.PeerRoutes = o.PeerRoutes[:h3Route6]
		}, []verdict{{CheckPeerRoute, "h3 (IPv6)", Warn}}},
		{"a route for an IPv6 block nobody routed holds", func(o *Observations) {
			o.PeerRoutes = append(o.PeerRoutes, node.Route{Dst: netip.MustParsePrefix("fd00:10:244:3::/64"), Via: netip.MustParseAddr("fd00:172:16:254::4"), LinkIndex: uplink.Index})
		}, []verdict{{CheckStaleRoute, "fd00:10:244:3::/64", Warn}}},
		{"an agent reporting no IPv6 blocks: IPv6 routes not judged", func(o *Observations) {
			o.Status.Block6 = ""
			for i := range o.Status.Members {
				o.Status.Members[i].Block6, o.Status.Members[i].Path6 = "", ""
			}
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := dualStack()
			tt.change(&o)
			fs := Diagnose(o)
			var got []verdict
			for _, f := range fs {
				if f.Severity == OK {
					continue
				}
				if f.Cause == "" || f.Fix == "" {
					t.Errorf("%s finding without cause or fix: %+v", f.Severity, f)
				}
				got = append(got, verdict{f.Check, f.Subject, f.Severity})
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("findings not OK: %v, want %v\n%s", got, tt.want, render(fs))
			}
			// h2's IPv6 route is judged, passed or not, exactly when the
			// status names its IPv6 block.
			judged := slices.ContainsFunc(fs, func(f Finding) bool { return f.Subject == "h2 (IPv6)" })
			if judged != (o.Status.Members[0].Block6 != "") {
				t.Fatalf("h2's IPv6 route judged %v, block6 %q:\n%s", judged, o.Status.Members[0].Block6, render(fs))
			}
		})
	}
}

// ipv6Only is healthy on an IPv6-only node: an IPv6 pool, the peers'
// blocks routed via their IPv6 host addresses, the pool masqueraded in
// table ip6, and only IPv6 forwarding read.
func ipv6Only() Observations {
	o := healthy()
	o.Status.Settings.Pool = "fd00:10:244::/48"
	o.Status.Block, o.Status.HostIP = "fd00:10:244::/64", "fd00:172:16:254::1"
	o.IPForward, o.IPForward6, o.RPFilterAll, o.RPFilterUplink = "", "1", "", ""
	o.Masquerade = []string{"grapevine masquerade fd00:10:244::/48"}
	o.Uplink.Addrs = []netip.Prefix{netip.MustParsePrefix("fd00:172:16:254::1/64")}
	o.PeerRoutes = []node.Route{
		{Dst: netip.MustParsePrefix("fd00:10:244::/48"), Unreachable: true, Metric: node.UnreachableMetric},
		{Dst: netip.MustParsePrefix("fd00:10:244::/64"), Blackhole: true, Metric: node.IPv6DefaultMetric},
	}
	members := o.Status.Members[:0]
	for i, m := range o.Status.Members {
		if !m.Routed() {
			continue
		}
		block := netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0x2, 0x44, 0, byte(i + 1)}), 64)
		m.Block, m.HostIP, m.Path = block.String(), fmt.Sprintf("fd00:172:16:254::%d", i+2), "direct"
		m.PathReason = m.HostIP + " is on em1's fd00:172:16:254::/64"
		members = append(members, m)
		o.PeerRoutes = append(o.PeerRoutes, node.Route{Dst: block, Via: netip.MustParseAddr(m.HostIP), LinkIndex: uplink.Index, Metric: node.IPv6DefaultMetric})
	}
	o.Status.Members = members
	o.PathMTU = nil
	return o
}

// TestDiagnoseIPv6Only: an IPv6-only node is judged by its IPv6
// forwarding, its masquerade rule in table ip6 and its peers' IPv6 routes;
// IPv4's forwarding and rp_filter do not concern it.
func TestDiagnoseIPv6Only(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Observations)
		want   []verdict
	}{
		{"healthy", func(*Observations) {}, nil},
		{"IPv6 forwarding off", func(o *Observations) { o.IPForward6 = "0" }, []verdict{{CheckIPForward, "", Fail}}},
		{"masquerade rule missing", func(o *Observations) { o.Masquerade = nil }, []verdict{{CheckMasquerade, "", Fail}}},
		{"a peer's route deleted", func(o *Observations) { o.PeerRoutes = slices.Delete(o.PeerRoutes, 2, 3) },
			[]verdict{{CheckPeerRoute, "h2", Fail}}},
		{"a route for a block no routed member holds", func(o *Observations) {
			o.PeerRoutes = append(o.PeerRoutes, node.Route{Dst: netip.MustParsePrefix("fd00:10:244:9::/64"), Via: netip.MustParseAddr("fd00:172:16:254::9"), LinkIndex: uplink.Index})
		}, []verdict{{CheckStaleRoute, "fd00:10:244:9::/64", Warn}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := ipv6Only()
			tt.change(&o)
			fs := Diagnose(o)
			var got []verdict
			for _, f := range fs {
				if f.Severity != OK {
					got = append(got, verdict{f.Check, f.Subject, f.Severity})
				}
				if f.Check == CheckIPForward && strings.Contains(f.Seen, "ipv4") || f.Check == CheckRPFilter {
					t.Errorf("an IPv6-only node judged by IPv4's %s: %+v", f.Check, f)
				}
				if f.Check == CheckMasquerade && !strings.Contains(f.Seen, "table ip6 ") {
					t.Errorf("masquerade finding does not name table ip6: %+v", f)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("findings not OK: %v, want %v\n%s", got, tt.want, render(fs))
			}
		})
	}
}
