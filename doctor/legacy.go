package doctor

import (
	"net/netip"
	"strings"
)

// LegacyState is what iptables-legacy holds in this network namespace,
// from iptables-legacy-save's output.
type LegacyState struct {
	// ForwardPolicy is the filter table's FORWARD policy (ACCEPT, DROP);
	// "" without a filter table.
	ForwardPolicy string
	// Rules counts the rules of every table.
	Rules int
	// NATPostrouting are the nat table's POSTROUTING rules as printed.
	NATPostrouting []string
}

// parseLegacySave reads iptables-legacy-save's output.
func parseLegacySave(out string) LegacyState {
	var s LegacyState
	table := ""
	for line := range strings.Lines(out) {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case table == "filter" && strings.HasPrefix(line, ":FORWARD "):
			if f := strings.Fields(line); len(f) >= 2 {
				s.ForwardPolicy = f[1]
			}
		case strings.HasPrefix(line, "-A "):
			s.Rules++
			if table == "nat" && strings.HasPrefix(line, "-A POSTROUTING ") {
				s.NATPostrouting = append(s.NATPostrouting, line)
			}
		}
	}
	return s
}

// natCatchesPodToPod reports whether a nat POSTROUTING rule (as
// iptables-legacy-save prints it) rewrites the source of packets from the
// pool to the pool leaving by uplink: pod-to-pod traffic between hosts,
// which must keep the pods' addresses. A rule it cannot read (a match it
// does not know narrows it, say) counts only on what it can read.
func natCatchesPodToPod(rule string, pool netip.Prefix, uplink string) bool {
	f := strings.Fields(rule)
	target := ""
	matches := true
	for i := 0; i < len(f); i++ {
		negated := false
		if f[i] == "!" && i+1 < len(f) {
			negated = true
			i++
		}
		arg := ""
		if i+1 < len(f) {
			arg = f[i+1]
		}
		switch f[i] {
		case "-j":
			target = arg
		case "-s", "--source", "-d", "--destination":
			p, err := netip.ParsePrefix(arg)
			if err != nil {
				if a, aerr := netip.ParseAddr(arg); aerr == nil {
					p, err = netip.PrefixFrom(a, a.BitLen()), nil
				}
			}
			if err != nil {
				continue
			}
			// Pod traffic matches "-s X" if X overlaps the pool; it
			// escapes "! -s X" only if X covers the whole pool.
			if negated && p.Bits() <= pool.Bits() && p.Contains(pool.Addr()) || !negated && !p.Overlaps(pool) {
				matches = false
			}
		case "-o", "--out-interface":
			// A trailing + matches every interface with that prefix.
			leavesByUplink := arg == uplink || strings.HasSuffix(arg, "+") && strings.HasPrefix(uplink, strings.TrimSuffix(arg, "+"))
			if leavesByUplink == negated {
				matches = false
			}
		default:
			continue
		}
		i++ // past the option's argument
	}
	return matches && (target == "MASQUERADE" || target == "SNAT")
}
