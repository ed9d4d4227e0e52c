package doctor

import "slices"

// Severity grades a finding.
type Severity string

const (
	// OK: the check passed; Seen says what it saw.
	OK Severity = "ok"
	// Warn: not broken now, but worth a look (some loss, a stale route).
	Warn Severity = "warn"
	// Fail: pods' traffic is or will be cut; doctor exits nonzero.
	Fail Severity = "fail"
)

// Check names, as findings carry them and docs/troubleshooting.md has a
// section for each.
const (
	CheckAgent          = "agent"
	CheckPeerRoute      = "peer-route"
	CheckStaleRoute     = "stale-route"
	CheckPeerPath       = "peer-path"
	CheckPeerDataPath   = "peer-data-path"
	CheckPathMTU        = "peer-path-mtu"
	CheckVXLAN          = "peer-vxlan"
	CheckGossipPort     = "peer-gossip-port"
	CheckLedgerPort     = "peer-ledger-port"
	CheckHostAddress    = "host-address"
	CheckIPForward      = "ip-forward"
	CheckRPFilter       = "rp-filter"
	CheckProxyARP       = "pod-proxy-arp"
	CheckPodRoute       = "pod-route"
	CheckPodNeighbour   = "pod-neighbour"
	CheckForwardPolicy  = "forward-policy"
	CheckMasquerade     = "masquerade"
	CheckLegacyIptables = "iptables-legacy"
	CheckConntrack      = "conntrack"
	CheckClock          = "clock-offset"
	CheckHostFirewall   = "host-firewall"
	CheckNetworkPolicy  = "network-policy"
)

// Finding is one check's verdict on one subject.
type Finding struct {
	Check    string   `json:"check"`
	Severity Severity `json:"severity"`
	// Subject is what was checked: a peer's name, an interface, a chain;
	// empty for the host as a whole.
	Subject string `json:"subject,omitempty"`
	// Seen is what doctor saw; Cause the likely reason and Fix what to do,
	// both empty for a passed check.
	Seen  string `json:"seen"`
	Cause string `json:"cause,omitempty"`
	Fix   string `json:"fix,omitempty"`
}

// Failed reports whether any finding failed.
func Failed(fs []Finding) bool {
	return slices.ContainsFunc(fs, func(f Finding) bool { return f.Severity == Fail })
}

// Summary is one host's findings as `grapevine doctor --all` gathers
// them: the warnings and failures in full, the passed checks counted.
type Summary struct {
	Host     string    `json:"host"`
	Passed   int       `json:"passed"`
	Warnings int       `json:"warnings"`
	Failed   int       `json:"failed"`
	Findings []Finding `json:"findings,omitempty"`
	// Err is why the host's findings could not be had (its agent did not
	// answer, refused, or runs without doctor).
	Err string `json:"error,omitempty"`
}

// Summarize counts fs and keeps the findings that are not OK.
func Summarize(host string, fs []Finding) Summary {
	s := Summary{Host: host}
	for _, f := range fs {
		switch f.Severity {
		case OK:
			s.Passed++
			continue
		case Warn:
			s.Warnings++
		case Fail:
			s.Failed++
		}
		s.Findings = append(s.Findings, f)
	}
	return s
}
