package node

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// A FORWARD policy of DROP in iptables' filter table (Docker sets one)
// drops every forwarded packet no rule of that very chain accepts, and pod
// traffic between hosts is forwarded. An accept in table ip grapevine
// would not help: a packet must pass every base chain at the hook, so only
// a rule in that chain can let it through. The agent therefore inserts,
// at the head of the chain, one rule accepting what comes from the pool
// and one accepting what goes to it, each carrying a comment of its own
// (ForwardComment) so that it is only ever its own rules it replaces or
// deletes, as flannel and Calico do. It does so only where such a chain
// exists with policy DROP: the filter table is never created.

// Iptables backends whose filter table may hold a FORWARD chain.
const (
	// BackendNFT is iptables-nft: the chain lives in nftables as
	// "ip filter FORWARD".
	BackendNFT = "iptables-nft"
	// BackendLegacy is iptables-legacy (x_tables).
	BackendLegacy = "iptables-legacy"
)

// ForwardChain is one backend's filter FORWARD chain as the kernel holds
// it.
type ForwardChain struct {
	Backend string
	// Policy is the chain's policy as iptables prints it (ACCEPT, DROP).
	Policy string
	// Ours are the chain's rules that carry a comment beginning with
	// forwardCommentPrefix, each as iptables -S prints it after
	// "-A FORWARD", quotes removed.
	Ours []ForwardRule
	// Unhandled is why the agent can neither read nor change the chain
	// (iptables-legacy holds a filter table, and its binary is not
	// installed); Policy and Ours are then unknown.
	Unhandled string
}

// ForwardRule is a rule of a backend's filter FORWARD chain, as the
// arguments that follow "-A FORWARD" (or -I, -D).
type ForwardRule struct {
	Backend string
	Spec    []string
	// Handle is the nftables rule handle of a rule of iptables-nft's
	// chain as listed; 0 for a rule to insert, or one of iptables-legacy.
	Handle uint64
}

func (r ForwardRule) String() string {
	return r.Backend + " filter FORWARD " + strings.Join(r.Spec, " ")
}

// ForwardKernel is the filter tables' FORWARD chains.
type ForwardKernel interface {
	// ForwardChains lists each backend's filter FORWARD chain that
	// exists; a backend without a filter table is left out, one whose
	// chain cannot be read is listed as Unhandled, and listing never
	// creates a table.
	ForwardChains() ([]ForwardChain, error)
	// InsertForwardRule inserts r at the head of its backend's chain.
	InsertForwardRule(r ForwardRule) error
	// DeleteForwardRule deletes r from its backend's chain.
	DeleteForwardRule(r ForwardRule) error
}

// forwardCommentPrefix begins the comment of every rule the agent adds.
const forwardCommentPrefix = "grapevine-accept-"

// ForwardComment is the comment of the rule accepting the pool as source
// ("src") or destination ("dst"): the pool is in it, so a reader of the
// chain (doctor, an operator) knows what the rule is for.
func ForwardComment(dir string, pool netip.Prefix) string {
	return forwardCommentPrefix + dir + "-" + pool.String()
}

// ForwardAcceptSpecs are the two rules accepting pool, source first.
func ForwardAcceptSpecs(pool netip.Prefix) [][]string {
	return [][]string{
		{"-s", pool.String(), "-m", "comment", "--comment", ForwardComment("src", pool), "-j", "ACCEPT"},
		{"-d", pool.String(), "-m", "comment", "--comment", ForwardComment("dst", pool), "-j", "ACCEPT"},
	}
}

// IsOurForwardRule reports whether a rule as iptables -S prints it
// (quotes removed or not) carries one of the agent's comments.
func IsOurForwardRule(spec []string) bool {
	i := slices.Index(spec, "--comment")
	return i >= 0 && i+1 < len(spec) && strings.HasPrefix(strings.Trim(spec[i+1], `"`), forwardCommentPrefix)
}

// ForwardVerdict is what PlanForwardAccept decided for one chain.
type ForwardVerdict struct {
	Backend, Policy string
	// Accepting: the chain drops by policy and is to hold the pool's
	// accept rules.
	Accepting bool
	// Unhandled is the chain's ForwardChain.Unhandled.
	Unhandled string
}

func (v ForwardVerdict) String() string {
	switch {
	case v.Unhandled != "":
		return fmt.Sprintf("%s filter FORWARD not handled: %s", v.Backend, v.Unhandled)
	case v.Accepting:
		return fmt.Sprintf("%s filter FORWARD policy %s: the pool is accepted by the agent's rules (%s)", v.Backend, v.Policy, forwardWriter(v.Backend))
	}
	return fmt.Sprintf("%s filter FORWARD policy %s: nothing to add", v.Backend, v.Policy)
}

// forwardWriter says how the agent writes a backend's rules.
func forwardWriter(backend string) string {
	if backend == BackendNFT {
		return "written over nftables netlink"
	}
	return "written by the " + backend + " binary"
}

// PlanForwardAccept decides the agent's rules in each chain: a chain with
// policy DROP gets the pool's two accept rules (when pool is valid); every
// other rule of ours (another pool's, a chain whose policy is no longer
// DROP) goes. Rules present as desired are left alone; an unhandled chain
// is left alone too. It is pure.
func PlanForwardAccept(pool netip.Prefix, chains []ForwardChain) (insert, del []ForwardRule, verdicts []ForwardVerdict) {
	for _, c := range chains {
		if c.Unhandled != "" {
			verdicts = append(verdicts, ForwardVerdict{Backend: c.Backend, Unhandled: c.Unhandled})
			continue
		}
		accepting := strings.EqualFold(c.Policy, "DROP") && pool.IsValid()
		verdicts = append(verdicts, ForwardVerdict{Backend: c.Backend, Policy: c.Policy, Accepting: accepting})
		var want [][]string
		if accepting {
			want = ForwardAcceptSpecs(pool)
		}
		for _, spec := range want {
			if !slices.ContainsFunc(c.Ours, func(r ForwardRule) bool { return slices.Equal(r.Spec, spec) }) {
				insert = append(insert, ForwardRule{Backend: c.Backend, Spec: spec})
			}
		}
		seen := make(map[string]bool)
		for _, r := range c.Ours {
			key := strings.Join(r.Spec, " ")
			// A rule of ours twice over (inserted by hand, say) goes
			// but once.
			if seen[key] || !slices.ContainsFunc(want, func(s []string) bool { return slices.Equal(r.Spec, s) }) {
				del = append(del, r)
			}
			seen[key] = true
		}
	}
	return insert, del, verdicts
}

// ParseForwardChain reads `iptables -S FORWARD` (of the filter table): the
// policy and the agent's rules.
func ParseForwardChain(backend, out string) ForwardChain {
	c := ForwardChain{Backend: backend}
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[0] == "-P" && f[1] == "FORWARD":
			c.Policy = f[2]
		case len(f) > 2 && f[0] == "-A" && f[1] == "FORWARD" && IsOurForwardRule(f[2:]):
			spec := make([]string, 0, len(f)-2)
			for _, a := range f[2:] {
				spec = append(spec, strings.Trim(a, `"`))
			}
			c.Ours = append(c.Ours, ForwardRule{Backend: backend, Spec: spec})
		}
	}
	return c
}
