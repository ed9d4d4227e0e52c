package netpol

import (
	"net/netip"
	"slices"
)

// TableName is the nftables table (family inet) netpol owns.
const TableName = "grapevine-policy"

// Protocol is an IP protocol number as the kernel sees it (meta l4proto).
type Protocol uint8

// The protocols a NetworkPolicy port may name.
const (
	ProtocolTCP  Protocol = 6
	ProtocolUDP  Protocol = 17
	ProtocolSCTP Protocol = 132
	// ProtocolICMPv6 is named by no policy; its neighbour discovery
	// messages pass every ruleset (see Packet.ICMPType).
	ProtocolICMPv6 Protocol = 58
)

// PortRange is an inclusive range of destination ports; a single port has
// First == Last.
type PortRange struct {
	First, Last uint16
}

// AddrRange is an inclusive range of addresses, both of one family (IPv4
// or IPv6).
type AddrRange struct {
	First, Last netip.Addr
}

// AddrSet is a named set of addresses. Ranges are sorted (IPv4 before
// IPv6), disjoint and not adjacent. The kernel holds it as up to two
// interval sets, one per family (ipv4_addr and ipv6_addr).
type AddrSet struct {
	Name   string
	Ranges []AddrRange
}

// Contains reports whether a is in the set.
func (s AddrSet) Contains(a netip.Addr) bool {
	_, found := slices.BinarySearchFunc(s.Ranges, a, func(r AddrRange, a netip.Addr) int {
		if r.Last.Less(a) {
			return -1
		}
		if a.Less(r.First) {
			return 1
		}
		return 0
	})
	return found
}

// VerdictKind is what a rule does with a packet it matches.
type VerdictKind uint8

const (
	// Accept ends the base chain's evaluation with accept; the packet
	// still has to pass the other base chain.
	Accept VerdictKind = iota + 1
	// Drop drops the packet.
	Drop
	// Jump runs another chain and continues after the rule if that chain
	// ends without a verdict.
	Jump
)

// Verdict is a rule's verdict; Chain names the chain of a Jump.
type Verdict struct {
	Kind  VerdictKind
	Chain string
}

// Rule matches packets by source and destination set, protocol and
// destination port, all optional, and gives them its verdict.
type Rule struct {
	// Src and Dst name AddrSets the packet's source and destination
	// must be in; "" matches any address.
	Src, Dst string
	// Protocol is 0 for any protocol.
	Protocol Protocol
	// Ports restricts the destination port; the zero value matches any
	// port. Only set together with Protocol.
	Ports   PortRange
	Verdict Verdict
}

// Chain is a regular (not base) chain of the table.
type Chain struct {
	Name  string
	Rules []Rule
}

// Ruleset is the desired content of table inet grapevine-policy. The table
// has two base chains at the forward hook, one for egress and one for
// ingress, each of which accepts established and related packets and
// ICMPv6 neighbour discovery, drops packets from (egress) or to (ingress) an
// Unknown address, and otherwise jumps by verdict map: Egress by the
// packet's source address, Ingress by its destination address, IPv4 and
// IPv6 alike. A pod isolated in a direction has an entry in that map
// leading to the chain of its policy group, which jumps to each of its
// policies' chains and drops what none of them accepted. A packet not in a
// map is accepted by that base chain.
type Ruleset struct {
	Sets   []AddrSet // sorted by name
	Chains []Chain   // the regular chains, each jumped to only by chains after it or by a map
	// Egress and Ingress map each address (IPv4 and IPv6) of a local pod
	// to the chain that decides its traffic in that direction.
	Egress  map[netip.Addr]string
	Ingress map[netip.Addr]string
	// Unknown are the addresses of this node's blocks (IPv4 and IPv6)
	// that no known pod holds (sorted, disjoint, IPv4 first): a new
	// pod's until the agent has its labels. No new connection from or to
	// them passes.
	Unknown []AddrRange
}

// Packet is what Allows decides about: the first packet of a new
// connection, IPv4 or IPv6.
type Packet struct {
	Src, Dst netip.Addr
	Protocol Protocol
	Port     uint16 // destination port
	// ICMPType is the ICMPv6 message type when Protocol is
	// ProtocolICMPv6.
	ICMPType uint8
}

// The ICMPv6 neighbour discovery messages (RFC 4861): router solicitation
// and advertisement, neighbour solicitation and advertisement, redirect.
// Pods resolve their gateway (fe80::ecee:eeff:feee:eeee) with them, so no
// ruleset blocks them.
const (
	icmpv6RouterSolicitation uint8 = 133
	icmpv6Redirect           uint8 = 137
)

// neighbourDiscovery reports whether p is an ICMPv6 neighbour discovery
// message.
func (p Packet) neighbourDiscovery() bool {
	return p.Src.Is6() && p.Protocol == ProtocolICMPv6 &&
		p.ICMPType >= icmpv6RouterSolicitation && p.ICMPType <= icmpv6Redirect
}

// Allows reports whether the kernel, given r, lets p through: both base
// chains must accept it. It is the model the netns tests hold the kernel
// to, and what the compiler's table tests check.
func (r Ruleset) Allows(p Packet) bool {
	if p.neighbourDiscovery() {
		return true
	}
	unknown := AddrSet{Ranges: r.Unknown}
	if unknown.Contains(p.Src) || unknown.Contains(p.Dst) {
		return false
	}
	sets := make(map[string]AddrSet, len(r.Sets))
	for _, s := range r.Sets {
		sets[s.Name] = s
	}
	chains := make(map[string]Chain, len(r.Chains))
	for _, c := range r.Chains {
		chains[c.Name] = c
	}
	if c, ok := r.Egress[p.Src]; ok && !r.runChain(chains, sets, c, p) {
		return false
	}
	if c, ok := r.Ingress[p.Dst]; ok && !r.runChain(chains, sets, c, p) {
		return false
	}
	return true
}

// runChain evaluates chain name as the jump from a base chain does and
// reports whether the packet is accepted (a chain that ends without a
// verdict returns to the base chain, whose policy is accept).
func (r Ruleset) runChain(chains map[string]Chain, sets map[string]AddrSet, name string, p Packet) bool {
	verdict, decided := evalChain(chains, sets, name, p, 0)
	return !decided || verdict == Accept
}

// evalChain returns the verdict of chain name, or decided false when the
// chain returns to its caller.
func evalChain(chains map[string]Chain, sets map[string]AddrSet, name string, p Packet, depth int) (VerdictKind, bool) {
	c, ok := chains[name]
	if !ok || depth > 16 {
		return Drop, true // the kernel would refuse such a ruleset
	}
	for _, rule := range c.Rules {
		if !rule.matches(sets, p) {
			continue
		}
		switch rule.Verdict.Kind {
		case Jump:
			if v, decided := evalChain(chains, sets, rule.Verdict.Chain, p, depth+1); decided {
				return v, true
			}
		default:
			return rule.Verdict.Kind, true
		}
	}
	return 0, false
}

func (rule Rule) matches(sets map[string]AddrSet, p Packet) bool {
	if rule.Src != "" && !sets[rule.Src].Contains(p.Src) {
		return false
	}
	if rule.Dst != "" && !sets[rule.Dst].Contains(p.Dst) {
		return false
	}
	if rule.Protocol != 0 && rule.Protocol != p.Protocol {
		return false
	}
	if rule.Ports != (PortRange{}) && (p.Port < rule.Ports.First || p.Port > rule.Ports.Last) {
		return false
	}
	return true
}
