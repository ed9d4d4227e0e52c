package netpol

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Input is what the ruleset is compiled from: the cluster's policies, pods
// and namespaces as the API server has them, and the name of this node,
// whose pods (spec.nodeName) are the ones enforced here. Pods of other nodes
// matter only as peers.
type Input struct {
	Policies   []*networkingv1.NetworkPolicy
	Pods       []*corev1.Pod
	Namespaces []*corev1.Namespace
	NodeName   string
	// Blocks are this node's pod blocks, of either family (none: not known
	// yet). Their addresses that no local pod in Pods holds are denied
	// both ways (Ruleset.Unknown): a pod whose address the API server does
	// not have yet could otherwise send and receive before its policies
	// are known.
	Blocks []netip.Prefix
}

// Compile turns in into the desired content of table inet grapevine-policy.
// It is pure. The ruleset is always complete and safe to apply: what cannot
// be compiled (an invalid selector, CIDR or port, which the API server
// normally refuses) matches nothing, so it never widens what a policy
// allows, and each such thing is returned as one problem for the log.
//
// Its size grows with policies and pods, never with their product: each
// policy rule's peers become one address set (rules with the same peers
// share it), each pod is one element of a verdict map per direction, and
// pods selected by the same policies share one group chain.
func Compile(in Input) (Ruleset, []error) {
	c := newCompiler(in)
	policies := slices.Clone(in.Policies)
	slices.SortFunc(policies, func(a, b *networkingv1.NetworkPolicy) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})

	// The policy chains each local pod's traffic runs through, by
	// direction; a pod present with no chains is isolated with nothing
	// allowed.
	ingress := make(map[netip.Addr][]string)
	egress := make(map[netip.Addr][]string)
	for i, pol := range policies {
		if pol == nil {
			continue
		}
		selected, err := c.selectLocal(pol)
		if err != nil {
			c.problem(pol, "pod selector", err)
			continue
		}
		if len(selected) == 0 {
			continue
		}
		isolatesIngress, isolatesEgress := policyTypes(pol.Spec)
		if isolatesIngress {
			var rules []Rule
			for j, r := range pol.Spec.Ingress {
				rules = append(rules, c.compileRule(pol, fmt.Sprintf("ingress rule %d", j), directionIngress, r.From, r.Ports, selected)...)
			}
			c.isolate(ingress, selected, fmt.Sprintf("p%d-in", i), rules)
		}
		if isolatesEgress {
			var rules []Rule
			for j, r := range pol.Spec.Egress {
				rules = append(rules, c.compileRule(pol, fmt.Sprintf("egress rule %d", j), directionEgress, r.To, r.Ports, selected)...)
			}
			c.isolate(egress, selected, fmt.Sprintf("p%d-eg", i), rules)
		}
	}
	c.out.Unknown = c.unknownLocal(in.Blocks)
	c.out.Egress = c.groups(egress, "eg")
	c.out.Ingress = c.groups(ingress, "in")
	slices.SortFunc(c.out.Sets, func(a, b AddrSet) int { return cmp.Compare(a.Name, b.Name) })
	return c.out, c.problems
}

type direction bool

const (
	directionIngress direction = true
	directionEgress  direction = false
)

// podInfo is a pod as a policy sees it: only pods with an address that are
// not on the host network and have not ended. addrs are its IPv4 and IPv6
// addresses (status.podIPs), sorted; each is enforced alike.
type podInfo struct {
	namespace string
	labels    labels.Set
	addrs     []netip.Addr
	local     bool
	pod       *corev1.Pod
}

type compiler struct {
	pods       []podInfo
	namespaces map[string]labels.Set
	setByKey   map[string]string // rangesKey -> set name
	// peerPods memoizes the pods a selector peer matches: policies
	// often repeat the same peers.
	peerPods map[string][]podInfo
	out      Ruleset
	problems []error
}

func newCompiler(in Input) *compiler {
	c := &compiler{
		namespaces: make(map[string]labels.Set, len(in.Namespaces)),
		setByKey:   make(map[string]string),
		peerPods:   make(map[string][]podInfo),
	}
	for _, ns := range in.Namespaces {
		if ns != nil {
			c.namespaces[ns.Name] = labels.Set(ns.Labels)
		}
	}
	for _, p := range in.Pods {
		if p == nil || p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		addrs := podAddrs(p)
		if len(addrs) == 0 {
			continue
		}
		c.pods = append(c.pods, podInfo{
			namespace: p.Namespace,
			labels:    labels.Set(p.Labels),
			addrs:     addrs,
			local:     in.NodeName != "" && p.Spec.NodeName == in.NodeName,
			pod:       p,
		})
	}
	// Sorted by address, so sets and groups come out the same for the
	// same input in any order.
	slices.SortFunc(c.pods, func(a, b podInfo) int { return a.addrs[0].Compare(b.addrs[0]) })
	return c
}

// unknownLocal is the blocks (IPv4 and IPv6, either may be zero) without
// the addresses of this node's known pods.
func (c *compiler) unknownLocal(nodeBlocks []netip.Prefix) []AddrRange {
	var blocks []AddrRange
	for _, b := range nodeBlocks {
		if b.IsValid() && !b.Addr().Is4In6() {
			blocks = append(blocks, prefixRange(b.Masked()))
		}
	}
	if len(blocks) == 0 {
		return nil
	}
	var known []AddrRange
	for _, p := range c.pods {
		if p.local {
			known = append(known, podRanges([]podInfo{p})...)
		}
	}
	return subtract(normalize(blocks), normalize(known))
}

// podAddrs are the pod's addresses (status.podIP and status.podIPs), IPv4
// and IPv6, sorted and without duplicates; none until it has one.
func podAddrs(p *corev1.Pod) []netip.Addr {
	ips := []string{p.Status.PodIP}
	for _, ip := range p.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	var addrs []netip.Addr
	for _, s := range ips {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			continue
		}
		// A mapped IPv4 address is the IPv4 address the kernel sees.
		addrs = append(addrs, a.Unmap())
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	return slices.Compact(addrs)
}

func (c *compiler) problem(pol *networkingv1.NetworkPolicy, where string, err error) {
	c.problems = append(c.problems, fmt.Errorf("network policy %s/%s, %s: %w (it matches nothing)", pol.Namespace, pol.Name, where, err))
}

// policyTypes says which directions pol isolates the pods it selects in:
// without policyTypes, ingress always and egress when it has egress rules.
func policyTypes(spec networkingv1.NetworkPolicySpec) (ingress, egress bool) {
	if len(spec.PolicyTypes) == 0 {
		return true, len(spec.Egress) > 0
	}
	for _, t := range spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		}
	}
	return ingress, egress
}

// selectLocal returns this node's pods that pol selects.
func (c *compiler) selectLocal(pol *networkingv1.NetworkPolicy) ([]podInfo, error) {
	sel, err := metav1.LabelSelectorAsSelector(&pol.Spec.PodSelector)
	if err != nil {
		return nil, err
	}
	var out []podInfo
	for _, p := range c.pods {
		if p.local && p.namespace == pol.Namespace && sel.Matches(p.labels) {
			out = append(out, p)
		}
	}
	return out, nil
}

// isolate records that selected pods are isolated by a policy whose rules
// in this direction are rules, in chain chainName.
func (c *compiler) isolate(byPod map[netip.Addr][]string, selected []podInfo, chainName string, rules []Rule) {
	if len(rules) > 0 {
		c.out.Chains = append(c.out.Chains, Chain{Name: chainName, Rules: rules})
	}
	for _, p := range selected {
		for _, addr := range p.addrs {
			chains := byPod[addr]
			if len(rules) > 0 {
				chains = append(chains, chainName)
			}
			byPod[addr] = chains
		}
	}
}

// groups adds one chain per distinct list of policy chains, which jumps to
// each and drops what none accepted, and returns the verdict map from pod
// address to its group's chain.
func (c *compiler) groups(byPod map[netip.Addr][]string, dir string) map[netip.Addr]string {
	if len(byPod) == 0 {
		return nil
	}
	keys := make(map[string][]string)
	for _, chains := range byPod {
		keys[strings.Join(chains, ",")] = chains
	}
	sorted := slices.Sorted(func(yield func(string) bool) {
		for k := range keys {
			if !yield(k) {
				return
			}
		}
	})
	names := make(map[string]string, len(sorted))
	for i, k := range sorted {
		name := fmt.Sprintf("%s-g%d", dir, i) // NFTKernel.Drops reads counters by this name (countsDrops)
		names[k] = name
		var rules []Rule
		for _, chain := range keys[k] {
			rules = append(rules, Rule{Verdict: Verdict{Kind: Jump, Chain: chain}})
		}
		rules = append(rules, Rule{Verdict: Verdict{Kind: Drop}})
		c.out.Chains = append(c.out.Chains, Chain{Name: name, Rules: rules})
	}
	vmap := make(map[netip.Addr]string, len(byPod))
	for addr, chains := range byPod {
		vmap[addr] = names[strings.Join(chains, ",")]
	}
	return vmap
}

// set returns the name of the set holding exactly rs (normalized), adding
// it on first use.
func (c *compiler) set(rs []AddrRange) string {
	key := rangesKey(rs)
	if name, ok := c.setByKey[key]; ok {
		return name
	}
	name := fmt.Sprintf("s%d", len(c.setByKey))
	c.setByKey[key] = name
	c.out.Sets = append(c.out.Sets, AddrSet{Name: name, Ranges: rs})
	return name
}

func podRanges(pods []podInfo) []AddrRange {
	rs := make([]AddrRange, 0, len(pods))
	for _, p := range pods {
		for _, a := range p.addrs {
			rs = append(rs, AddrRange{First: a, Last: a})
		}
	}
	return normalize(rs)
}

// compileRule turns one ingress or egress rule of pol into rules that
// accept what it allows: its peers (any when peers is empty) as source
// (ingress) or destination (egress), and each of its ports. A named port is
// resolved on the destination pod: the selected pod for ingress, the peer
// pod for egress, so it becomes one rule per port number with the set of
// pods that use that number.
func (c *compiler) compileRule(pol *networkingv1.NetworkPolicy, where string, dir direction, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort, selected []podInfo) []Rule {
	anyPeer := len(peers) == 0
	var peerPods []podInfo
	var peerRanges []AddrRange
	for k, peer := range peers {
		pods, ranges, err := c.peer(pol, peer)
		if err != nil {
			c.problem(pol, fmt.Sprintf("%s, peer %d", where, k), err)
			continue
		}
		peerPods = append(peerPods, pods...)
		peerRanges = append(peerRanges, ranges...)
	}
	peerRanges = normalize(append(peerRanges, podRanges(peerPods)...))
	if !anyPeer && len(peerRanges) == 0 {
		return nil // no peer exists (yet): the rule allows nothing
	}
	peerSet := ""
	if !anyPeer {
		peerSet = c.set(peerRanges)
	}
	withPeer := func(r Rule) Rule {
		if dir == directionIngress {
			r.Src = peerSet
		} else {
			r.Dst = peerSet
		}
		r.Verdict = Verdict{Kind: Accept}
		return r
	}
	if len(ports) == 0 {
		return []Rule{withPeer(Rule{})}
	}

	var rules []Rule
	for k, port := range ports {
		proto, err := protocolOf(port.Protocol)
		if err != nil {
			c.problem(pol, fmt.Sprintf("%s, port %d", where, k), err)
			continue
		}
		switch {
		case port.Port == nil:
			rules = append(rules, withPeer(Rule{Protocol: proto}))
		case port.Port.Type == intstr.Int:
			r, err := portRange(port)
			if err != nil {
				c.problem(pol, fmt.Sprintf("%s, port %d", where, k), err)
				continue
			}
			rules = append(rules, withPeer(Rule{Protocol: proto, Ports: r}))
		default:
			name := port.Port.StrVal
			if dir == directionIngress {
				for _, g := range byNamedPort(selected, name, proto) {
					r := withPeer(Rule{Protocol: proto, Ports: PortRange{g.port, g.port}})
					r.Dst = c.set(podRanges(g.pods))
					rules = append(rules, r)
				}
				continue
			}
			// Egress: the peers' own ports; an ipBlock has none.
			dests := peerPods
			if anyPeer {
				dests = c.pods
			}
			for _, g := range byNamedPort(dests, name, proto) {
				rules = append(rules, Rule{
					Dst:      c.set(podRanges(g.pods)),
					Protocol: proto,
					Ports:    PortRange{g.port, g.port},
					Verdict:  Verdict{Kind: Accept},
				})
			}
		}
	}
	return rules
}

// peer returns the pods a podSelector/namespaceSelector peer matches, or
// the address ranges of an ipBlock peer.
func (c *compiler) peer(pol *networkingv1.NetworkPolicy, peer networkingv1.NetworkPolicyPeer) ([]podInfo, []AddrRange, error) {
	if b := peer.IPBlock; b != nil {
		cidr, err := netip.ParsePrefix(b.CIDR)
		if err != nil {
			return nil, nil, fmt.Errorf("ipBlock cidr: %w", err)
		}
		var except []AddrRange
		for _, e := range b.Except {
			p, err := netip.ParsePrefix(e)
			if err != nil {
				return nil, nil, fmt.Errorf("ipBlock except: %w", err)
			}
			// An except of the other family cuts nothing out of cidr.
			except = append(except, prefixRange(p))
		}
		return nil, subtract([]AddrRange{prefixRange(cidr)}, normalize(except)), nil
	}
	podSel := labels.Everything()
	if peer.PodSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
		if err != nil {
			return nil, nil, fmt.Errorf("podSelector: %w", err)
		}
		podSel = s
	}
	inNamespace := func(ns string) bool { return ns == pol.Namespace }
	if peer.NamespaceSelector != nil {
		nsSel, err := metav1.LabelSelectorAsSelector(peer.NamespaceSelector)
		if err != nil {
			return nil, nil, fmt.Errorf("namespaceSelector: %w", err)
		}
		inNamespace = func(ns string) bool {
			l, known := c.namespaces[ns]
			return known && nsSel.Matches(l)
		}
	}
	key := podSel.String() + "\x00" + pol.Namespace
	if peer.NamespaceSelector != nil {
		key = podSel.String() + "\x00\x00" + peer.NamespaceSelector.String()
	}
	if pods, ok := c.peerPods[key]; ok {
		return pods, nil, nil
	}
	var pods []podInfo
	for _, p := range c.pods {
		if inNamespace(p.namespace) && podSel.Matches(p.labels) {
			pods = append(pods, p)
		}
	}
	c.peerPods[key] = pods
	return pods, nil, nil
}

func protocolOf(p *corev1.Protocol) (Protocol, error) {
	if p == nil {
		return ProtocolTCP, nil
	}
	switch *p {
	case corev1.ProtocolTCP:
		return ProtocolTCP, nil
	case corev1.ProtocolUDP:
		return ProtocolUDP, nil
	case corev1.ProtocolSCTP:
		return ProtocolSCTP, nil
	}
	return 0, fmt.Errorf("protocol %q is not TCP, UDP or SCTP", *p)
}

// portRange is a numeric port with its optional endPort.
func portRange(port networkingv1.NetworkPolicyPort) (PortRange, error) {
	first := port.Port.IntVal
	last := first
	if port.EndPort != nil {
		last = *port.EndPort
	}
	if first < 1 || first > 65535 || last < first || last > 65535 {
		return PortRange{}, fmt.Errorf("port %d, endPort %d is not a range within 1-65535", first, last)
	}
	return PortRange{First: uint16(first), Last: uint16(last)}, nil
}

type namedPortGroup struct {
	port uint16
	pods []podInfo
}

// byNamedPort groups pods by the number their containers give the port
// named name for proto; pods without such a port are left out.
func byNamedPort(pods []podInfo, name string, proto Protocol) []namedPortGroup {
	byPort := make(map[uint16][]podInfo)
	for _, p := range pods {
		if n, ok := resolveNamedPort(p.pod, name, proto); ok {
			byPort[n] = append(byPort[n], p)
		}
	}
	var out []namedPortGroup
	for port, ps := range byPort {
		out = append(out, namedPortGroup{port: port, pods: ps})
	}
	slices.SortFunc(out, func(a, b namedPortGroup) int { return cmp.Compare(a.port, b.port) })
	return out
}

func resolveNamedPort(p *corev1.Pod, name string, proto Protocol) (uint16, bool) {
	for _, ctr := range p.Spec.Containers {
		for _, cp := range ctr.Ports {
			protocol := cp.Protocol
			if protocol == "" {
				protocol = corev1.ProtocolTCP // the API's default
			}
			cproto, err := protocolOf(&protocol)
			if err == nil && cp.Name == name && cproto == proto && cp.ContainerPort > 0 && cp.ContainerPort <= 65535 {
				return uint16(cp.ContainerPort), true
			}
		}
	}
	return 0, false
}
