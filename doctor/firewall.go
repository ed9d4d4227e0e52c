package doctor

import (
	"encoding/xml"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/grapevine-net/grapevine/status"
)

// firewalld and ufw are read from their files and from whether their
// tables are in the kernel, never over D-Bus: doctor needs no bus, no
// daemon's answer and no library of theirs. What they were told at run
// time only (firewall-cmd without --permanent, a zone NetworkManager sets
// on a connection) is not in the files; a port they block is then still
// seen by the peers' peer-*-port checks.

// HostFirewall is what doctor read of firewalld and ufw.
type HostFirewall struct {
	// FirewalldActive: nftables holds table inet firewalld (firewalld
	// runs with its nftables backend).
	FirewalldActive bool
	// FirewalldConf is /etc/firewalld/firewalld.conf.
	FirewalldConf string
	// FirewalldZones and FirewalldServices map a zone's or service's
	// name to its XML, /etc/firewalld's over /usr/lib/firewalld's.
	FirewalldZones, FirewalldServices map[string]string
	// UFWActive: ufw's chain ufw-user-input is in the kernel (nftables'
	// ip filter or iptables-legacy's).
	UFWActive bool
	// UFWConf, UFWDefaults and UFWUserRules are /etc/ufw/ufw.conf,
	// /etc/default/ufw and /etc/ufw/user.rules.
	UFWConf, UFWDefaults, UFWUserRules string
}

// portProto is a port a peer must reach on this host.
type portProto struct {
	Proto string // tcp, udp
	Port  int
	What  string
}

func (p portProto) String() string { return fmt.Sprintf("%s/%d (%s)", p.Proto, p.Port, p.What) }

// neededPorts are the ports peers reach this host on: gossip over TCP and
// UDP, the ledger over TCP, VXLAN over UDP unless encapsulation is off.
func neededPorts(st status.Report) []portProto {
	s := st.Settings
	ports := []portProto{{"tcp", s.GossipPort, "gossip"}, {"udp", s.GossipPort, "gossip"}, {"tcp", s.LedgerPort, "ledger"}}
	if st.Encapsulation != "never" {
		ports = append(ports, portProto{"udp", 4789, "VXLAN"})
	}
	return ports
}

// checkHostFirewall fails for each port an active firewalld or ufw does
// not open on --iface by its configuration.
func checkHostFirewall(o Observations) []Finding {
	needed := neededPorts(o.Status)
	iface := o.Status.Settings.Iface
	fw := o.Firewall
	var fs []Finding
	if fw.FirewalldActive {
		zone, blocked, unsure, err := firewalldBlocked(fw, iface, needed)
		switch {
		case err != nil:
			fs = append(fs, Finding{Check: CheckHostFirewall, Severity: Warn, Subject: "firewalld", Seen: "firewalld runs; its configuration could not be read: " + err.Error(),
				Cause: "doctor reads /etc/firewalld and /usr/lib/firewalld", Fix: "firewall-cmd --zone=<zone of " + iface + "> --list-all must show the ports " + portList(needed)})
		case len(blocked) > 0:
			sev, why := Fail, ""
			if unsure != "" {
				sev, why = Warn, "; "+unsure+", which doctor does not read, may open them"
			}
			var fix []string
			for _, p := range blocked {
				fix = append(fix, fmt.Sprintf("firewall-cmd --permanent --zone=%s --add-port=%d/%s", zone, p.Port, p.Proto))
			}
			fs = append(fs, Finding{Check: CheckHostFirewall, Severity: sev, Subject: "firewalld",
				Seen:  fmt.Sprintf("firewalld runs; zone %s (%s's) does not open %s%s", zone, iface, portList(blocked), why),
				Cause: "firewalld rejects what its zone does not allow: peers cannot reach this host's agent or its VXLAN packets are dropped",
				Fix:   strings.Join(fix, "; ") + "; firewall-cmd --reload"})
		default:
			fs = append(fs, Finding{Check: CheckHostFirewall, Severity: OK, Subject: "firewalld", Seen: fmt.Sprintf("firewalld runs; zone %s (%s's) opens %s", zone, iface, portList(needed))})
		}
	}
	if fw.UFWActive {
		enabled, blocked := ufwBlocked(fw, iface, needed)
		switch {
		case !enabled:
		case len(blocked) > 0:
			var fix []string
			for _, p := range blocked {
				fix = append(fix, fmt.Sprintf("ufw allow in on %s to any port %d proto %s", iface, p.Port, p.Proto))
			}
			fs = append(fs, Finding{Check: CheckHostFirewall, Severity: Fail, Subject: "ufw",
				Seen:  "ufw is enabled with incoming policy DROP or REJECT and no rule allowing " + portList(blocked),
				Cause: "ufw drops what no rule allows: peers cannot reach this host's agent or its VXLAN packets are dropped",
				Fix:   strings.Join(fix, "; ")})
		default:
			fs = append(fs, Finding{Check: CheckHostFirewall, Severity: OK, Subject: "ufw", Seen: "ufw is enabled and allows " + portList(needed)})
		}
	}
	if len(fs) == 0 {
		fs = append(fs, Finding{Check: CheckHostFirewall, Severity: OK, Seen: "neither firewalld nor ufw runs"})
	}
	return fs
}

func portList(ps []portProto) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.String())
	}
	return strings.Join(s, ", ")
}

// firewalldZone is the part of a zone's XML doctor reads.
type firewalldZone struct {
	Target     string          `xml:"target,attr"`
	Interfaces []firewalldName `xml:"interface"`
	Sources    []struct{}      `xml:"source"`
	Services   []firewalldName `xml:"service"`
	Ports      []firewalldPort `xml:"port"`
	RichRules  []struct{}      `xml:"rule"`
}

type firewalldName struct {
	Name string `xml:"name,attr"`
}

type firewalldPort struct {
	Protocol string `xml:"protocol,attr"`
	Port     string `xml:"port,attr"`
}

// firewalldBlocked returns the zone that applies to iface (the one naming
// it, else the default zone) and the needed ports it does not open, by
// target, ports and services. unsure names what doctor leaves unread that
// could open them (rich rules, zones bound to source addresses). It is
// pure.
func firewalldBlocked(fw HostFirewall, iface string, needed []portProto) (zone string, blocked []portProto, unsure string, err error) {
	zones := make(map[string]firewalldZone)
	var sourceZones []string
	for name, x := range fw.FirewalldZones {
		var z firewalldZone
		if err := xml.Unmarshal([]byte(x), &z); err != nil {
			return "", nil, "", fmt.Errorf("zone %s: %w", name, err)
		}
		zones[name] = z
		if len(z.Sources) > 0 {
			sourceZones = append(sourceZones, name)
		}
	}
	for name, z := range zones {
		if slices.Contains(z.Interfaces, firewalldName{iface}) {
			zone = name
		}
	}
	if zone == "" {
		zone = "public" // firewalld's default DefaultZone
		for line := range strings.Lines(fw.FirewalldConf) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "DefaultZone="); ok && strings.TrimSpace(v) != "" {
				zone = strings.TrimSpace(v)
			}
		}
	}
	z, ok := zones[zone]
	if !ok {
		return zone, nil, "", fmt.Errorf("zone %s has no file", zone)
	}
	if z.Target == "ACCEPT" {
		return zone, nil, "", nil
	}
	open := slices.Clone(z.Ports)
	for _, s := range z.Services {
		x, ok := fw.FirewalldServices[s.Name]
		if !ok {
			continue
		}
		var svc struct {
			Ports []firewalldPort `xml:"port"`
		}
		if err := xml.Unmarshal([]byte(x), &svc); err != nil {
			return zone, nil, "", fmt.Errorf("service %s: %w", s.Name, err)
		}
		open = append(open, svc.Ports...)
	}
	for _, p := range needed {
		if !slices.ContainsFunc(open, func(o firewalldPort) bool { return o.Protocol == p.Proto && portInRange(p.Port, o.Port, "-") }) {
			blocked = append(blocked, p)
		}
	}
	var unread []string
	if len(z.RichRules) > 0 {
		unread = append(unread, "zone "+zone+"'s rich rules")
	}
	slices.Sort(sourceZones)
	for _, n := range sourceZones {
		unread = append(unread, "zone "+n+" bound to source addresses")
	}
	return zone, blocked, strings.Join(unread, " and "), nil
}

// portInRange reports whether port is spec: one port, or a range with
// sep between its ends.
func portInRange(port int, spec, sep string) bool {
	lo, hi, isRange := strings.Cut(spec, sep)
	a, err := strconv.Atoi(strings.TrimSpace(lo))
	if err != nil {
		return false
	}
	b := a
	if isRange {
		if b, err = strconv.Atoi(strings.TrimSpace(hi)); err != nil {
			return false
		}
	}
	return a <= port && port <= b
}

// ufwBlocked reports whether ufw is enabled with an incoming policy that
// drops, and the needed ports no allow (or limit) rule of user.rules opens
// for traffic coming in on iface. It is pure.
func ufwBlocked(fw HostFirewall, iface string, needed []portProto) (enabled bool, blocked []portProto) {
	if shellValue(fw.UFWConf, "ENABLED") != "yes" {
		return false, nil
	}
	if p := shellValue(fw.UFWDefaults, "DEFAULT_INPUT_POLICY"); p == "ACCEPT" {
		return true, nil
	}
	// "### tuple ### allow tcp 7962 0.0.0.0/0 any 0.0.0.0/0 in[_<iface>]":
	// action, protocol, destination port(s), destination, source
	// port(s), source, direction.
	type rule struct{ proto, ports, dir string }
	var rules []rule
	for line := range strings.Lines(fw.UFWUserRules) {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "### tuple ### ")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 7 || (f[0] != "allow" && f[0] != "limit") {
			continue
		}
		rules = append(rules, rule{proto: f[1], ports: f[2], dir: f[6]})
	}
	for _, p := range needed {
		if !slices.ContainsFunc(rules, func(r rule) bool {
			if r.proto != "any" && r.proto != p.Proto || r.dir != "in" && r.dir != "in_"+iface {
				return false
			}
			if r.ports == "any" {
				return true
			}
			for _, spec := range strings.Split(r.ports, ",") {
				if portInRange(p.Port, spec, ":") {
					return true
				}
			}
			return false
		}) {
			blocked = append(blocked, p)
		}
	}
	return true, blocked
}

// shellValue is key's value in a file of KEY=value lines, quotes removed.
func shellValue(file, key string) string {
	v := ""
	for line := range strings.Lines(file) {
		if val, ok := strings.CutPrefix(strings.TrimSpace(line), key+"="); ok {
			v = strings.Trim(strings.TrimSpace(val), `"'`)
		}
	}
	return v
}
