package doctor

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/grapevine-net/grapevine/node"
	"github.com/grapevine-net/grapevine/status"
)

// Loss over the last minute from which a peer's data path is worth a
// warning, and from which it fails: at 20 % most TCP connections crawl.
const (
	lossWarn = 0.01
	lossFail = 0.20
)

// Diagnose turns observations into findings: the agent, the host's
// checks, then the peers' checks, each for every peer. A check whose input
// could not be read is a warning, never a pass. It is pure.
func Diagnose(o Observations) []Finding {
	var fs []Finding
	fs = append(fs, checkAgent(o))
	if o.StatusErr == "" && o.Status.Settings == nil {
		fs = append(fs, Finding{Check: CheckAgent, Severity: Warn, Seen: "the status carries no settings (an agent older than this grapevine)",
			Cause: "the agent and the grapevine command are different versions", Fix: "run the grapevine binary of the agent's version, or update the agent"})
	}
	for _, c := range []struct {
		name string
		run  func(Observations) []Finding
		// needsSettings: the check judges the host against the agent's
		// settings and members, and is left out without them.
		needsSettings bool
	}{
		{CheckHostAddress, checkHostAddress, true},
		{CheckIPForward, checkIPForward, false},
		{CheckRPFilter, checkRPFilter, true},
		{CheckForwardPolicy, checkForwardPolicy, false},
		{CheckConntrack, checkConntrack, false},
		{CheckHostFirewall, checkHostFirewall, true},
		{CheckMasquerade, checkMasquerade, true},
		{CheckLegacyIptables, checkLegacy, true},
		{CheckNetworkPolicy, checkNetworkPolicy, true},
		{CheckProxyARP, checkPodHosts, false},
		{CheckPeerRoute, checkPeerRoutes, true},
	} {
		if c.needsSettings && o.Status.Settings == nil {
			continue
		}
		if why, ok := o.Unread[c.name]; ok {
			fs = append(fs, Finding{Check: c.name, Severity: Warn, Seen: "not checked: " + why,
				Cause: "doctor could not read the kernel's state", Fix: "run grapevine doctor as root in the host's network namespace"})
			continue
		}
		fs = append(fs, c.run(o)...)
	}
	fs = append(fs, checkPeerPaths(o)...)
	fs = append(fs, checkDataPaths(o.Status)...)
	if why, ok := o.Unread[CheckPathMTU]; ok {
		fs = append(fs, Finding{Check: CheckPathMTU, Severity: Warn, Seen: "not checked: " + why,
			Cause: "doctor may not send ICMP itself", Fix: "run grapevine doctor as root (or with CAP_NET_RAW)"})
	} else {
		fs = append(fs, checkPathMTU(o.PathMTU, o.Status.Members)...)
	}
	fs = append(fs, checkPorts(o.Ports)...)
	if why, ok := o.Unread[CheckClock]; ok {
		fs = append(fs, Finding{Check: CheckClock, Severity: Warn, Seen: "not checked: " + why,
			Cause: "doctor may not send ICMP itself", Fix: "run grapevine doctor as root (or with CAP_NET_RAW)"})
	} else {
		fs = append(fs, checkClocks(o.Clocks)...)
	}
	return fs
}

// checkPathMTU judges the probes of the pod MTU. A VXLAN peer whose host
// answers in the clear (its data path is up) but not through gv.vxlan even
// to a minimal request has a broken tunnel, not a small MTU.
func checkPathMTU(probes []MTUProbe, members []status.Member) []Finding {
	dataPath := map[string]string{}
	for _, m := range members {
		dataPath[m.Name] = m.DataPath
	}
	var fs []Finding
	for _, p := range probes {
		f := Finding{Check: CheckPathMTU, Subject: p.Peer}
		what := fmt.Sprintf("echo request of %d bytes (the pod MTU) with don't-fragment to %s over the %s path", p.Size, p.Target, p.Path)
		switch {
		case p.Err == "":
			f.Severity, f.Seen = OK, what+": answered"
		case strings.Contains(p.Err, ErrTooBig.Error()):
			f.Severity, f.Seen = Fail, what+": "+p.Err
			f.Cause = "an interface of this host, or the MTU a router reported for the route, is below the pod MTU: pods' full-size packets to this peer are dropped here"
			f.Fix = "raise the MTU of that link (ip link set dev <iface> mtu <n>), or give pods a smaller --mtu (it applies to new pods)"
		case p.SmallErr != "" && p.Path == string(node.PathVXLAN) && dataPath[p.Peer] == "up":
			f.Check, f.Severity = CheckVXLAN, Fail
			f.Seen = fmt.Sprintf("echo requests to %s's VXLAN address %s through %s go unanswered (%s), while its host answers in the clear", p.Peer, p.Target, node.TunnelName, p.SmallErr)
			f.Cause = "a firewall between the hosts or on either of them drops UDP 4789 (VXLAN), or the tunnel's neighbour and FDB entries are wrong: pods cannot reach this peer's pods"
			f.Fix = "open UDP 4789 between the hosts (both ways); ip neigh show dev " + node.TunnelName + " and bridge fdb show dev " + node.TunnelName + " must name the peer (the agent puts back its own entries)"
		case p.SmallErr != "":
			f.Severity, f.Seen = Warn, what+": "+p.Err+"; a minimal request went unanswered too, so the MTU is not known"
			f.Cause = "the peer's host does not answer echo requests over this path (see peer-data-path)"
			f.Fix = "allow ICMP echo between the hosts, then run doctor again"
		default:
			f.Severity, f.Seen = Fail, what+": "+p.Err+"; minimal requests are answered"
			f.Cause = "a link or router on the way carries less than the pod MTU (on a VXLAN path the uplinks need it plus 50 bytes), or drops what does not fit without a fragmentation-needed reply: pods' full-size packets to this peer are lost"
			f.Fix = "raise the MTU of the links on the way, or give pods a smaller --mtu (new pods only); see the MTU section of the troubleshooting guide"
		}
		fs = append(fs, f)
	}
	return fs
}

func checkAgent(o Observations) Finding {
	st := o.Status
	switch {
	case o.StatusErr != "":
		return Finding{Check: CheckAgent, Severity: Fail, Seen: o.StatusErr,
			Cause: "the agent is not running, hangs, or listens under another --run-dir: the host's own checks below still ran, the peers' could not",
			Fix:   "start the agent (systemctl status grapevine, or the DaemonSet's pod on this node) and see its log; pass the agent's --run-dir to doctor"}
	case !st.Ready:
		return Finding{Check: CheckAgent, Severity: Fail, Subject: st.Node, Seen: "not ready: " + st.Reason,
			Cause: "the agent holds no block or cannot hand it to the CNI plugin, so no new pod gets an address",
			Fix:   "follow the reason; `grapevine status` shows the ledger and the members, the agent's log the rest"}
	case st.Degraded != "":
		return Finding{Check: CheckAgent, Severity: Warn, Subject: st.Node, Seen: "degraded: " + st.Degraded,
			Cause: "the agent keeps its routes but cannot renew its lease or reach the ledger's majority",
			Fix:   "see `grapevine status`: the ledger's leader and voters, and which members are down"}
	}
	return Finding{Check: CheckAgent, Severity: OK, Subject: st.Node, Seen: fmt.Sprintf("ready, holds %s", st.Block)}
}

// checkHostAddress fails when the address the agent advertises is no
// longer on --iface, and warns for a peer whose host IP is on the network
// of another of this host's interfaces: --iface was likely chosen wrong.
func checkHostAddress(o Observations) []Finding {
	iface := o.Status.Settings.Iface
	host, err := netip.ParseAddr(o.Status.HostIP)
	if err != nil {
		return nil
	}
	switch {
	case o.Uplink.Index == 0:
		return []Finding{{Check: CheckHostAddress, Severity: Fail, Subject: iface, Seen: "interface " + iface + " not found",
			Cause: "the interface the agent was started with is gone or was renamed",
			Fix:   "set --iface (GRAPEVINE_IFACE) to the interface towards the peers and restart the agent"}}
	case !slices.ContainsFunc(o.Uplink.Addrs, func(p netip.Prefix) bool { return p.Addr() == host }):
		return []Finding{{Check: CheckHostAddress, Severity: Fail, Subject: iface,
			Seen:  fmt.Sprintf("%s, the host IP the agent advertises, is not an address of %s (it has %v)", host, iface, o.Uplink.Addrs),
			Cause: "the address changed after the agent started (DHCP, a reconfiguration): peers route this host's block to an address that is gone",
			Fix:   "give the host a fixed address, or restart the agent so that it advertises the current one (--host-ip if it must be another)"}}
	}
	fs := []Finding{{Check: CheckHostAddress, Severity: OK, Subject: iface, Seen: fmt.Sprintf("%s on %s", host, iface)}}
	for _, m := range o.Status.Members {
		peer, err := netip.ParseAddr(m.HostIP)
		if err != nil || !m.Routed() || onNetworkOf(o.Uplink, peer) {
			continue
		}
		for _, l := range o.Links {
			if l.Index == o.Uplink.Index || l.Name == node.TunnelName || !onNetworkOf(l, peer) {
				continue
			}
			fs = append(fs, Finding{Check: CheckHostAddress, Severity: Warn, Subject: m.Name,
				Seen:  fmt.Sprintf("%s's host IP %s is on %s's network, yet this host reaches it from %s (path %s)", m.Name, peer, l.Name, iface, orDash(m.Path)),
				Cause: iface + " (the default route's interface, or --iface) was chosen while the peers share another network",
				Fix:   "set --iface (GRAPEVINE_IFACE) and --host-ip to the interface on the peers' network, on every host"})
			break
		}
	}
	return fs
}

// onNetworkOf reports whether addr is on a network directly connected to l.
func onNetworkOf(l node.Link, addr netip.Addr) bool {
	return slices.ContainsFunc(l.Addrs, func(p netip.Prefix) bool { return p.Bits() < 32 && p.Masked().Contains(addr) })
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// podFamilies says which address families this node's pods have: IPv4
// for an IPv4 pool (and when the status is unknown), IPv6 for an IPv6 pool
// (an IPv6-only node) or an IPv6 block beside the IPv4 one (dual-stack).
func podFamilies(st status.Report) (v4, v6 bool) {
	if st.Settings == nil {
		return true, st.Block6 != ""
	}
	pool, err := netip.ParsePrefix(st.Settings.Pool)
	ipv6Pool := err == nil && pool.Addr().Is6()
	return !ipv6Pool, ipv6Pool || st.Block6 != ""
}

func checkIPForward(o Observations) []Finding {
	var fs []Finding
	v4, v6 := podFamilies(o.Status)
	for _, f := range []struct {
		used         bool
		key, value   string
		family       string
		grepFor, set string
	}{
		{v4, "net.ipv4.ip_forward", o.IPForward, "IPv4", "ip_forward", "net.ipv4.ip_forward=1"},
		{v6, "net.ipv6.conf.all.forwarding", o.IPForward6, "IPv6", "forwarding", "net.ipv6.conf.all.forwarding=1"},
	} {
		switch {
		case !f.used:
		case f.value == "1":
			fs = append(fs, Finding{Check: CheckIPForward, Severity: OK, Seen: f.key + " = 1"})
		default:
			fs = append(fs, Finding{Check: CheckIPForward, Severity: Fail, Seen: f.key + " = " + f.value,
				Cause: "forwarding was turned off (by hand, a sysctl file applied at boot, or a tool that resets it): no pod traffic over " + f.family + " leaves or enters this host",
				Fix:   "sysctl -w " + f.set + " (the agent sets it again on its next pass); find what turned it off, e.g. grep -r " + f.grepFor + " /etc/sysctl.conf /etc/sysctl.d"})
		}
	}
	return fs
}

// rpFilterEffective is the kernel's rule for rp_filter: the larger of
// conf/all and the interface's value counts.
func rpFilterEffective(all, iface string) string { return max(all, iface) }

func checkRPFilter(o Observations) []Finding {
	if v4, _ := podFamilies(o.Status); !v4 {
		return nil // rp_filter is IPv4's; IPv6 has none
	}
	iface := o.Status.Settings.Iface
	eff := rpFilterEffective(o.RPFilterAll, o.RPFilterUplink)
	seen := fmt.Sprintf("rp_filter on %s is %s (all %s, %s %s)", iface, rpFilterName(eff), o.RPFilterAll, iface, o.RPFilterUplink)
	if eff != "1" {
		return []Finding{{Check: CheckRPFilter, Severity: OK, Subject: iface, Seen: seen}}
	}
	var vxlan []string
	for _, m := range o.Status.Members {
		if m.Routed() && m.Path == string(node.PathVXLAN) {
			vxlan = append(vxlan, m.Name)
		}
	}
	if len(vxlan) == 0 {
		return []Finding{{Check: CheckRPFilter, Severity: OK, Subject: iface, Seen: seen + "; no peer is reached over VXLAN"}}
	}
	return []Finding{{Check: CheckRPFilter, Severity: Fail, Subject: iface,
		Seen: seen + "; reached over VXLAN: " + strings.Join(vxlan, ", "),
		Cause: "strict reverse-path filtering drops packets whose source this host would route out another interface: " +
			"pods of a peer reached over " + node.TunnelName + " whose packets arrive on " + iface + " (the peer routes directly) are dropped",
		Fix: fmt.Sprintf("sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.%s.rp_filter=2 (loose), and persist it in /etc/sysctl.d", iface)}}
}

func rpFilterName(v string) string {
	switch v {
	case "0":
		return "off"
	case "1":
		return "strict"
	case "2":
		return "loose"
	}
	return v
}

func checkForwardPolicy(o Observations) []Finding {
	pool := "<pool>"
	var poolPrefix netip.Prefix
	if o.Status.Settings != nil {
		pool = o.Status.Settings.Pool
		poolPrefix, _ = netip.ParsePrefix(pool)
	}
	// repaired reports whether backend's filter FORWARD chain holds the
	// agent's accept rules for the pool: the agent's answer to a policy
	// of DROP there.
	repaired := func(backend string) bool {
		if !poolPrefix.IsValid() {
			return false
		}
		for _, c := range o.IptablesForward {
			if c.Backend != backend {
				continue
			}
			for _, spec := range node.ForwardAcceptSpecs(poolPrefix) {
				if !slices.ContainsFunc(c.Ours, func(r node.ForwardRule) bool { return slices.Equal(r.Spec, spec) }) {
					return false
				}
			}
			return true
		}
		return false
	}
	// legacyUnhandled is why the agent cannot handle iptables-legacy's
	// chain (its binary is not installed); "" when it can.
	legacyUnhandled := ""
	for _, c := range o.IptablesForward {
		if c.Backend == node.BackendLegacy && c.Unhandled != "" {
			legacyUnhandled = c.Unhandled
		}
	}
	var fs, repairs []Finding
	for _, c := range o.ForwardChains {
		if c.Policy != "drop" {
			continue
		}
		subject := fmt.Sprintf("nftables %s %s chain %s", c.Family, c.Table, c.Name)
		if c.Family == "ip" && c.Table == "filter" && c.Name == "FORWARD" && repaired(node.BackendNFT) {
			repairs = append(repairs, Finding{Check: CheckForwardPolicy, Severity: OK, Subject: subject,
				Seen: "policy drop (iptables-nft's filter FORWARD); the agent's rules accepting " + pool + " are in it, written over nftables netlink"})
			continue
		}
		fs = append(fs, Finding{Check: CheckForwardPolicy, Severity: Fail,
			Subject: subject,
			Seen:    "a base chain hooked at forward with policy drop",
			Cause:   "a firewall (Docker, firewalld, a host policy) drops forwarded traffic by default: pods' traffic to and from other hosts is forwarded, and is dropped unless a rule of this very chain accepts it (an accept in another table cannot override it); the agent adds its accept rules only to iptables' filter FORWARD chain",
			Fix:     fmt.Sprintf("nft insert rule %s %s %s ip saddr %s accept; nft insert rule %s %s %s ip daddr %s accept (or make the firewall accept the pool)", c.Family, c.Table, c.Name, pool, c.Family, c.Table, c.Name, pool)})
	}
	legacyFix := fmt.Sprintf("iptables-legacy -I FORWARD -s %s -j ACCEPT; iptables-legacy -I FORWARD -d %s -j ACCEPT", pool, pool)
	switch {
	case o.Legacy.ForwardPolicy == "DROP" && repaired(node.BackendLegacy):
		repairs = append(repairs, Finding{Check: CheckForwardPolicy, Severity: OK, Subject: "iptables-legacy filter FORWARD",
			Seen: "policy DROP; the agent's rules accepting " + pool + " are in it, written by the iptables-legacy binary"})
	case o.Legacy.ForwardPolicy == "DROP":
		cause := "Docker or a host firewall set iptables' FORWARD policy to DROP, and the agent's accept rules for the pool are not in the chain (yet: it adds them on its next pass; see its log if they do not appear): pods' traffic to and from other hosts is dropped"
		if legacyUnhandled != "" {
			cause = "Docker or a host firewall set iptables-legacy's FORWARD policy to DROP, and " + legacyUnhandled + ": pods' traffic to and from other hosts is dropped"
		}
		fs = append(fs, Finding{Check: CheckForwardPolicy, Severity: Fail, Subject: "iptables-legacy filter FORWARD",
			Seen: "policy DROP", Cause: cause, Fix: legacyFix})
	case o.Legacy.ForwardPolicy == "" && legacyUnhandled != "":
		fs = append(fs, Finding{Check: CheckForwardPolicy, Severity: Warn, Subject: "iptables-legacy filter FORWARD",
			Seen:  "a filter table of iptables-legacy whose FORWARD policy neither the agent nor doctor can read: no iptables-legacy binary here",
			Cause: legacyUnhandled,
			Fix:   "on the host: iptables-legacy -S FORWARD; if its policy is DROP: " + legacyFix})
	}
	if len(fs)+len(repairs) > 0 {
		return append(fs, repairs...)
	}
	seen := fmt.Sprintf("%d nftables forward base chain(s), none drops by policy", len(o.ForwardChains))
	if o.Legacy.ForwardPolicy != "" {
		seen += "; iptables-legacy FORWARD policy " + o.Legacy.ForwardPolicy
	}
	return []Finding{{Check: CheckForwardPolicy, Severity: OK, Seen: seen}}
}

// Use of the connection tracking table from which doctor warns, and from
// which it fails: once full, the kernel drops new connections.
const (
	conntrackWarn = 0.80
	conntrackFail = 0.95
)

func checkConntrack(o Observations) []Finding {
	if o.ConntrackCount == "" {
		return []Finding{{Check: CheckConntrack, Severity: OK, Seen: "no connection tracking in this namespace"}}
	}
	count, err1 := strconv.Atoi(o.ConntrackCount)
	limit, err2 := strconv.Atoi(o.ConntrackMax)
	if err1 != nil || err2 != nil || limit <= 0 {
		return []Finding{{Check: CheckConntrack, Severity: Warn, Seen: fmt.Sprintf("unreadable: nf_conntrack_count %q, nf_conntrack_max %q", o.ConntrackCount, o.ConntrackMax),
			Cause: "the kernel reported something doctor does not understand", Fix: "sysctl net.netfilter.nf_conntrack_count net.netfilter.nf_conntrack_max"}}
	}
	use := float64(count) / float64(limit)
	f := Finding{Check: CheckConntrack, Severity: OK, Seen: fmt.Sprintf("%d of %d entries (%.0f%%)", count, limit, use*100)}
	if use >= conntrackWarn {
		f.Severity = Warn
		if use >= conntrackFail {
			f.Severity = Fail
		}
		f.Cause = "the connection tracking table is (nearly) full: once full the kernel drops the first packet of every new connection (dmesg: nf_conntrack: table full, dropping packet), pods' and the agent's alike"
		f.Fix = "raise it (sysctl -w net.netfilter.nf_conntrack_max=<n>, persisted in /etc/sysctl.d) or find what opens so many connections (conntrack -L | sort | uniq -c)"
	}
	return []Finding{f}
}

// checkNetworkPolicy judges NetworkPolicy enforcement as grapevine-policy
// answered the agent on the socket node.json names: while it does not
// answer, the CNI plugin fails every new pod (closed).
func checkNetworkPolicy(o Observations) []Finding {
	p := o.Status.NetworkPolicy
	const logs = "kubectl -n kube-system logs ds/grapevine -c policy (or the grapevine-policy service's log)"
	switch {
	case !p.Enabled:
		return []Finding{{Check: CheckNetworkPolicy, Severity: OK, Seen: "off: node.json names no policy socket, so pods start without waiting for policy"}}
	case p.Unreachable != "":
		return []Finding{{Check: CheckNetworkPolicy, Severity: Fail, Subject: p.Socket,
			Seen:  "node.json names grapevine-policy's socket, and it does not answer: " + p.Unreachable,
			Cause: "grapevine-policy is not running on this host, or listens on another --socket than the agent's --policy-socket: the CNI plugin fails every new pod until it answers (running pods keep their policies)",
			Fix:   "start grapevine-policy with the same socket (" + logs + "), or turn network policy off by giving both an empty socket"}}
	case !p.Synced:
		return []Finding{{Check: CheckNetworkPolicy, Severity: Warn, Subject: p.Socket,
			Seen:  "grapevine-policy answers but has not listed pods, namespaces and network policies yet",
			Cause: "it cannot reach the API server, or may not read those kinds: new pods wait for it, the previous ruleset stays in force",
			Fix:   "see " + logs + "; the ClusterRole grapevine must allow get, list and watch on pods, namespaces and networkpolicies"}}
	case p.Error != "":
		return []Finding{{Check: CheckNetworkPolicy, Severity: Fail, Subject: p.Socket,
			Seen:  "grapevine-policy cannot apply the ruleset: " + p.Error,
			Cause: "nftables refused the table inet grapevine-policy: the previous ruleset stays in force, and new pods cannot start",
			Fix:   "see " + logs + " and nft list table inet grapevine-policy"}}
	}
	return []Finding{{Check: CheckNetworkPolicy, Severity: OK, Subject: p.Socket,
		Seen: fmt.Sprintf("grapevine-policy enforces %d policies for %d pods of this host, last sync %.0fs ago", p.Policies, p.Pods, p.LastSyncAgeSeconds)}}
}

// checkLegacy fails on an iptables-legacy NAT rule that rewrites pod-to-pod
// traffic between hosts, and warns when iptables-legacy holds rules at all:
// the kernel runs them beside nftables, and `iptables` on an nft host
// shows neither them nor Grapevine's table.
func checkLegacy(o Observations) []Finding {
	s := o.Status.Settings
	pool, err := netip.ParsePrefix(s.Pool)
	if err != nil {
		return nil
	}
	var fs []Finding
	for _, rule := range o.Legacy.NATPostrouting {
		if !natCatchesPodToPod(rule, pool, s.Iface) {
			continue
		}
		fs = append(fs, Finding{Check: CheckLegacyIptables, Severity: Fail, Subject: "nat POSTROUTING",
			Seen:  "iptables-legacy rule `" + rule + "` rewrites the source of traffic from the pool to the pool leaving by " + s.Iface,
			Cause: "a tool or script still on iptables-legacy (an old flannel or kube-router, Docker, a firewall script) masquerades the pod network beside Grapevine's nftables table: pods on other hosts see this host's address instead of the pod's",
			Fix:   "delete it (iptables-legacy -t nat -D " + strings.TrimPrefix(rule, "-A ") + ") and the tool that adds it; Grapevine's own masquerade (table ip " + node.NFTTable + ") leaves traffic within the pool alone"})
	}
	switch {
	case len(fs) > 0:
		return fs
	case o.Legacy.Rules > 0:
		return []Finding{{Check: CheckLegacyIptables, Severity: Warn,
			Seen:  fmt.Sprintf("iptables-legacy holds %d rule(s) beside nftables", o.Legacy.Rules),
			Cause: "a tool uses iptables-legacy while the host uses nftables: the kernel runs both, and each tool's listing shows only its own",
			Fix:   "list both (iptables-legacy-save; nft list ruleset) and move the tool to one backend (update-alternatives --set iptables /usr/sbin/iptables-nft)"}}
	}
	return []Finding{{Check: CheckLegacyIptables, Severity: OK, Seen: "iptables-legacy holds no rules"}}
}

// masqueradeComment is the comment node marks its masquerade rule with
// (node.masqueradeComment; the node tests pin the format).
func masqueradeComment(pool string) string { return "grapevine masquerade " + pool }

func checkMasquerade(o Observations) []Finding {
	s := o.Status.Settings
	// The rule of an IPv6 pool (an IPv6-only node) is in table ip6.
	table := "ip " + node.NFTTable
	if v4, _ := podFamilies(o.Status); !v4 {
		table = "ip6 " + node.NFTTable
	}
	switch {
	case !s.Masquerade:
		return []Finding{{Check: CheckMasquerade, Severity: OK, Seen: "off (--masquerade=false): pods reach outside the pool with their own addresses"}}
	case slices.Contains(o.Masquerade, masqueradeComment(s.Pool)):
		return []Finding{{Check: CheckMasquerade, Severity: OK, Seen: "table " + table + " masquerades " + s.Pool + " to outside it"}}
	}
	seen := "no masquerade rule for " + s.Pool + " in table " + table
	if len(o.Masquerade) > 0 {
		seen += "; found: " + strings.Join(o.Masquerade, ", ")
	}
	return []Finding{{Check: CheckMasquerade, Severity: Fail, Seen: seen,
		Cause: "the table was deleted or flushed (nft flush ruleset, a firewall reload): pods' traffic to outside the pool leaves with pod addresses and its answers never come back",
		Fix:   "the agent rebuilds the table when it changes; if it stays missing restart the agent, and make the firewall leave table " + table + " alone"}}
}

// checkPodHosts judges every pod's host veth: proxy_arp on, its /32 route,
// and a PERMANENT neighbour entry for the pod. Healthy veths make one
// finding per check, broken ones one each.
func checkPodHosts(o Observations) []Finding {
	var fs []Finding
	bad := map[string]bool{}
	for _, v := range o.Veths {
		if v.ProxyARP != "1" {
			bad[CheckProxyARP] = true
			fs = append(fs, Finding{Check: CheckProxyARP, Severity: Fail, Subject: v.Name,
				Seen:  "net.ipv4.conf." + v.Name + ".proxy_arp = " + v.ProxyARP,
				Cause: "turned off by hand or by a tool: the pod's ARP for its gateway 169.254.1.1 goes unanswered once its neighbour entry expires or is deleted",
				Fix:   "sysctl -w net.ipv4.conf." + v.Name + ".proxy_arp=1 (the agent puts it back on its next full pass)"})
		}
		if len(v.PodIPs) == 0 {
			bad[CheckPodRoute] = true
			fs = append(fs, Finding{Check: CheckPodRoute, Severity: Fail, Subject: v.Name,
				Seen:  "no /32 route through " + v.Name,
				Cause: "the pod's route was deleted: nothing reaches the pod",
				Fix:   "the agent puts it back on its next pass; if not, delete and recreate the pod"})
		}
		for _, ip := range v.PodIPs {
			if slices.Contains(v.Permanent, ip) {
				continue
			}
			bad[CheckPodNeighbour] = true
			fs = append(fs, Finding{Check: CheckPodNeighbour, Severity: Fail, Subject: v.Name,
				Seen:  "no PERMANENT neighbour entry for " + ip.String() + " on " + v.Name,
				Cause: "the entry was deleted or replaced: the host ARPs for the pod, which pods of other CNIs answer but a restarted pod may not at once",
				Fix:   "the agent puts it back on its next pass; by hand: ip neigh replace " + ip.String() + " lladdr <pod MAC> dev " + v.Name + " nud permanent"})
		}
	}
	for _, c := range []string{CheckProxyARP, CheckPodRoute, CheckPodNeighbour} {
		if !bad[c] {
			fs = append(fs, Finding{Check: c, Severity: OK, Seen: fmt.Sprintf("%d pod veth(s) as wired", len(o.Veths))})
		}
	}
	return fs
}

// desiredRoute is the route node installs for m: via the peer's host IP
// on the uplink, or via its VTEP on the VXLAN device; ok is false when
// the status does not say enough to tell.
func desiredRoute(m status.Member, uplink, tunnel node.Link) (node.Route, bool) {
	block, err := netip.ParsePrefix(m.Block)
	if err != nil {
		return node.Route{}, false
	}
	switch node.Path(m.Path) {
	case node.PathDirect:
		host, err := netip.ParseAddr(m.HostIP)
		if err != nil || uplink.Index == 0 {
			return node.Route{}, false
		}
		return node.Route{Dst: block, Via: host, LinkIndex: uplink.Index}, true
	case node.PathVXLAN:
		if tunnel.Index == 0 {
			return node.Route{Dst: block, Via: node.VTEPAddr(block), OnLink: true}, true
		}
		return node.Route{Dst: block, Via: node.VTEPAddr(block), LinkIndex: tunnel.Index, OnLink: true}, true
	}
	return node.Route{}, false
}

// describeRoute reads like `ip route`, naming the two links doctor knows.
func describeRoute(r node.Route, uplink, tunnel node.Link) string {
	dev := fmt.Sprintf("ifindex %d", r.LinkIndex)
	switch {
	case r.LinkIndex == 0:
		dev = "no device"
	case r.LinkIndex == uplink.Index:
		dev = uplink.Name
	case r.LinkIndex == tunnel.Index:
		dev = tunnel.Name
	}
	s := fmt.Sprintf("%s via %s dev %s", r.Dst, r.Via, dev)
	if r.OnLink {
		s += " onlink"
	}
	return s
}

func checkPeerRoutes(o Observations) []Finding {
	var fs []Finding
	routed := map[netip.Prefix]bool{}
	for _, m := range o.Status.Members {
		if !m.Routed() {
			continue
		}
		block, err := netip.ParsePrefix(m.Block)
		if err != nil {
			continue
		}
		routed[block] = true
		want, known := desiredRoute(m, o.Uplink, o.Tunnel)
		fs = append(fs, judgePeerRoute(o, m, m.Name, block, m.Path, want, known))

		block6, err := netip.ParsePrefix(m.Block6)
		if err != nil {
			continue
		}
		subject := m.Name + " (IPv6)"
		if node.Path(m.Path6) == node.PathNone {
			// The agent routes this IPv6 block nowhere on purpose; the
			// pool6's unreachable route answers pods for it.
			fs = append(fs, Finding{Check: CheckPeerRoute, Severity: Warn, Subject: subject,
				Seen:  fmt.Sprintf("no route for %s: the agent chose no path: %s", block6, m.Path6Reason),
				Cause: "neither a direct IPv6 path nor VXLAN over IPv4 reaches this peer's IPv6 block: pods here cannot reach its pods over IPv6",
				Fix:   "give both hosts an IPv6 address on a shared network (--host-ip6), or allow VXLAN (--encapsulation)"})
			continue
		}
		routed[block6] = true
		want6, known6 := desiredRoute6(m, block6, o.Uplink, o.Tunnel)
		fs = append(fs, judgePeerRoute(o, m, subject, block6, m.Path6, want6, known6))
	}
	// Peers' IPv6 block routes are held against the status only when the
	// node has IPv6 pods (--pool6, or an IPv6 pool): an older agent names
	// no IPv6 block.
	_, ipv6 := podFamilies(o.Status)
	for _, r := range o.PeerRoutes {
		if r.Unicast() && (r.Dst.Addr().Is4() || ipv6) && !routed[r.Dst] {
			fs = append(fs, Finding{Check: CheckStaleRoute, Severity: Warn, Subject: r.Dst.String(),
				Seen:  describeRoute(r, o.Uplink, o.Tunnel) + ", for a block no routed member holds",
				Cause: "a peer left or its block moved while this agent was down, or the agent is about to withdraw it",
				Fix:   "the agent withdraws its own stale routes on its next pass; if it stays, ip route del " + r.Dst.String()})
		}
	}
	return fs
}

// judgePeerRoute holds the kernel's route for block, one of m's blocks
// (IPv4 or IPv6, reached over path), against want: what node installs.
func judgePeerRoute(o Observations, m status.Member, subject string, block netip.Prefix, path string, want node.Route, known bool) Finding {
	i := slices.IndexFunc(o.PeerRoutes, func(r node.Route) bool { return r.Dst == block && r.Unicast() })
	ipFlag := ""
	if block.Addr().Is6() {
		ipFlag = "-6 "
	}
	switch {
	case i < 0:
		return Finding{Check: CheckPeerRoute, Severity: Fail, Subject: subject,
			Seen:  fmt.Sprintf("no route for %s (proto %d); the agent's last pass says: %s", block, node.RouteProtocol, m.Route),
			Cause: "the route was deleted by hand or by another tool, or another route for the block (not Grapevine's) holds its place and the agent leaves it alone",
			Fix:   fmt.Sprintf("ip %sroute show %s shows what holds the slot: delete a route that is not proto %d; the agent puts its own back at once", ipFlag, block, node.RouteProtocol)}
	case known && !sameRoute(o.PeerRoutes[i], want):
		return Finding{Check: CheckPeerRoute, Severity: Fail, Subject: subject,
			Seen:  fmt.Sprintf("%s, want %s (path %s)", describeRoute(o.PeerRoutes[i], o.Uplink, o.Tunnel), describeRoute(want, o.Uplink, o.Tunnel), path),
			Cause: "the route was changed by hand, or the agent has not yet applied a path change",
			Fix:   "the agent replaces its own route on its next pass; if it stays, see its log"}
	case m.Route != node.PeerProgrammed:
		return Finding{Check: CheckPeerRoute, Severity: Warn, Subject: subject,
			Seen:  describeRoute(o.PeerRoutes[i], o.Uplink, o.Tunnel) + "; the agent's last pass says: " + m.Route,
			Cause: "the agent's last pass did not finish programming this peer",
			Fix:   "run doctor again after a pass; if it stays, see the agent's log"}
	}
	return Finding{Check: CheckPeerRoute, Severity: OK, Subject: subject, Seen: describeRoute(o.PeerRoutes[i], o.Uplink, o.Tunnel)}
}

// desiredRoute6 is the route node installs for block6, m's IPv6 block:
// via the peer's IPv6 host address on the uplink, or via the block's VTEP
// address on the VXLAN device (node's choosePath6); ok is false when the
// status does not say enough to tell.
func desiredRoute6(m status.Member, block6 netip.Prefix, uplink, tunnel node.Link) (node.Route, bool) {
	switch node.Path(m.Path6) {
	case node.PathDirect:
		host, err := netip.ParseAddr(m.HostIP6)
		if err != nil || uplink.Index == 0 {
			return node.Route{}, false
		}
		return node.Route{Dst: block6, Via: host, LinkIndex: uplink.Index}, true
	case node.PathVXLAN:
		return node.Route{Dst: block6, Via: node.VTEPAddr(block6), LinkIndex: tunnel.Index, OnLink: true}, true
	}
	return node.Route{}, false
}

// sameRoute compares what makes a peer route work: destination, next hop,
// device and onlink.
func sameRoute(have, want node.Route) bool {
	return have.Dst == want.Dst && have.Via == want.Via && have.OnLink == want.OnLink &&
		(want.LinkIndex == 0 || have.LinkIndex == want.LinkIndex)
}

func checkPeerPaths(o Observations) []Finding {
	var fs []Finding
	for _, m := range o.Status.Members {
		if !m.Routed() || m.Path == "" {
			continue
		}
		fs = append(fs, Finding{Check: CheckPeerPath, Severity: OK, Subject: m.Name, Seen: m.Path + ": " + m.PathReason})
	}
	return fs
}

func checkDataPaths(st status.Report) []Finding {
	var fs []Finding
	for _, m := range st.Members {
		if !m.Routed() {
			continue
		}
		f := Finding{Check: CheckPeerDataPath, Subject: m.Name}
		h := m.DataPathHealth
		switch {
		case m.DataPath == "":
			f.Severity, f.Seen = Warn, "not probed"
			f.Cause = "the agent runs with --probe-interval=0 or without CAP_NET_RAW: routes follow gossip alone"
			f.Fix = "give the agent CAP_NET_RAW and a nonzero --probe-interval"
			fs = append(fs, f)
			continue
		case h == nil || h.Requests == 0:
			f.Seen = "data path " + m.DataPath + ", no request resolved yet"
		default:
			f.Seen = fmt.Sprintf("data path %s, rtt p50 %gms p99 %gms, loss %.0f%% of %d requests over the last minute", m.DataPath, h.RTTp50ms, h.RTTp99ms, h.Loss*100, h.Requests)
		}
		switch {
		case m.DataPath == "down":
			f.Severity = Fail
			f.Cause = "the peer's host does not answer ICMP echo over the path pods use: the host is down, its link is cut, or a firewall drops the traffic"
			f.Fix = fmt.Sprintf("ping %s; check the link and the firewalls on both hosts (ICMP, and UDP 4789 on a VXLAN path)", m.HostIP)
		case h != nil && h.Loss >= lossFail:
			f.Severity = Fail
			f.Cause = "the path to the peer loses many packets: a bad link, a saturated uplink or a firewall that drops some"
			f.Fix = "check the link's error counters (ip -s link) and the switch; compare with other peers"
		case m.DataPath != "up" || h != nil && h.Loss > lossWarn:
			f.Severity = Warn
			f.Cause = "the peer has answered little or nothing yet, or the path loses some packets"
			f.Fix = "run doctor again in a minute; check the link if the loss stays"
		default:
			f.Severity = OK
		}
		fs = append(fs, f)
	}
	return fs
}

func checkPorts(ports []Port) []Finding {
	var fs []Finding
	for _, p := range ports {
		f := Finding{Check: p.Check, Subject: p.Peer, Severity: OK, Seen: "TCP " + p.Address + " accepts connections"}
		if p.Err != "" {
			f.Severity = Fail
			f.Seen = "TCP " + p.Address + ": " + p.Err
			f.Cause = "the peer's agent is not running or listens elsewhere, or a firewall (firewalld, ufw, iptables, a cloud security group) drops the port"
			f.Fix = "open TCP and UDP 7962 (gossip) and TCP 7963 (ledger) between the hosts, or the ports given by --port and --ledger-port; check the peer's agent"
		}
		fs = append(fs, f)
	}
	return fs
}
