package netpol

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The table NFTKernel writes, with the Ruleset's chains and sets and these
// base chains and verdict maps (nft syntax; the two base chains' order does
// not matter, a packet must pass both). Every set and map comes once per
// family, the IPv6 one named with the suffix -v6; a Ruleset's set s0 is
// s0 (ipv4_addr) and s0-v6 (ipv6_addr), each only when it has addresses of
// that family, and a rule that looks up a set is written once per family
// its sets have:
//
//	table inet grapevine-policy {
//		map egress-pods { type ipv4_addr : verdict; elements = { <pod> : jump eg-g0, ... } }
//		map egress-pods-v6 { type ipv6_addr : verdict; ... }
//		map ingress-pods { type ipv4_addr : verdict; elements = { <pod> : jump in-g0, ... } }
//		map ingress-pods-v6 { type ipv6_addr : verdict; ... }
//		set unknown-pods { type ipv4_addr; flags interval; elements = { <block without known pods> } }
//		set unknown-pods-v6 { type ipv6_addr; flags interval; elements = { <IPv6 block without known pods> } }
//		chain egress {
//			type filter hook forward priority filter; policy accept;
//			ct state established,related accept
//			meta nfproto ipv6 meta l4proto ipv6-icmp icmpv6 type 133-137 accept
//			meta nfproto ipv4 ip saddr @unknown-pods counter drop
//			meta nfproto ipv4 ip saddr vmap @egress-pods
//			meta nfproto ipv6 ip6 saddr @unknown-pods-v6 counter drop
//			meta nfproto ipv6 ip6 saddr vmap @egress-pods-v6
//		}
//		chain ingress {
//			type filter hook forward priority filter + 1; policy accept;
//			(the same with daddr and @ingress-pods, @ingress-pods-v6)
//		}
//	}
const (
	egressChain   = "egress"
	ingressChain  = "ingress"
	egressPodsMap = "egress-pods"
	ingressMap    = "ingress-pods"
	unknownSet    = "unknown-pods"
)

// family is what the table's sets and rules need to know of IPv4 or IPv6.
type family struct {
	v6      bool
	nfproto byte
	keyType nftables.SetDatatype
	// saddr and daddr are the offsets of the addresses in the network
	// header, addrLen their length.
	saddr, daddr, addrLen uint32
	// suffix ends the names of the family's sets and maps.
	suffix string
}

var families = [...]family{
	{v6: false, nfproto: unix.NFPROTO_IPV4, keyType: nftables.TypeIPAddr, saddr: 12, daddr: 16, addrLen: 4, suffix: ""},
	{v6: true, nfproto: unix.NFPROTO_IPV6, keyType: nftables.TypeIP6Addr, saddr: 8, daddr: 24, addrLen: 16, suffix: "-v6"},
}

// match is `meta nfproto ipv4` or `meta nfproto ipv6`: in an inet table, an
// address load is only meaningful after it.
func (f family) match() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.nfproto}},
	}
}

// loadAddr loads the source (daddr false) or destination address.
func (f family) loadAddr(daddr bool) *expr.Payload {
	offset := f.saddr
	if daddr {
		offset = f.daddr
	}
	return &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: f.addrLen}
}

// elementsPerMessage bounds the elements of one netlink message: its
// element list is one attribute, whose length field has 16 bits.
const elementsPerMessage = 512

// NFTKernel is the Kernel on nftables netlink.
type NFTKernel struct {
	netns ns.NetNS // nil: the calling thread's namespace
}

var _ Kernel = (*NFTKernel)(nil)

// NewNFTKernel returns the Kernel of the agent's own namespace.
func NewNFTKernel() *NFTKernel { return &NFTKernel{} }

// NewNFTKernelAt returns a Kernel for the namespace bound at path (e.g.
// /run/netns/NAME), usable from any goroutine.
func NewNFTKernelAt(path string) (*NFTKernel, error) {
	target, err := ns.GetNS(path)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	return &NFTKernel{netns: target}, nil
}

// Close releases the namespace NewNFTKernelAt opened.
func (k *NFTKernel) Close() error {
	if k.netns == nil {
		return nil
	}
	return k.netns.Close()
}

// conn opens a connection whose socket buffers hold a batch of about
// batchBytes and the acknowledgements of its messages: the library sends a
// whole batch in one sendmsg, which the default buffer refuses beyond a few
// hundred kilobytes.
func (k *NFTKernel) conn(batchBytes int) (*nftables.Conn, error) {
	buffer := max(batchBytes, 1<<20)
	opts := []nftables.ConnOption{nftables.WithSockOptions(func(c *netlink.Conn) error {
		raw, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var sockErr error
		if err := raw.Control(func(fd uintptr) {
			// FORCE: the agent has CAP_NET_ADMIN, and net.core.wmem_max
			// is the host's to set, not ours.
			sockErr = errors.Join(
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, buffer),
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, buffer))
		}); err != nil {
			return err
		}
		return sockErr
	})}
	if k.netns != nil {
		opts = append(opts, nftables.WithNetNSFd(int(k.netns.Fd())))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("network policy: open nftables: %w", err)
	}
	return conn, nil
}

func table() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
}

// Apply implements Kernel: one batch deletes the table and builds it anew.
func (k *NFTKernel) Apply(rs Ruleset) error {
	conn, err := k.conn(batchBytes(rs))
	if err != nil {
		return err
	}
	t := table()
	// Add first so the delete cannot fail on a missing table; the kernel
	// applies the whole batch or none of it.
	conn.AddTable(t)
	conn.DelTable(t)
	conn.AddTable(t)

	// Chains before anything that jumps to them.
	chains := make(map[string]*nftables.Chain, len(rs.Chains))
	for _, c := range rs.Chains {
		chains[c.Name] = conn.AddChain(&nftables.Chain{Name: c.Name, Table: t})
	}
	// sets has each Ruleset set's kernel set per family by kernel name;
	// nil where the set has no address of that family.
	sets := make(map[string]*nftables.Set, 2*len(rs.Sets))
	for _, s := range rs.Sets {
		for _, f := range families {
			ranges := ofFamily(s.Ranges, f.v6)
			name := s.Name + f.suffix
			sets[name] = nil
			if len(ranges) == 0 {
				continue
			}
			set := &nftables.Set{Table: t, Name: name, KeyType: f.keyType, Interval: true}
			if err := addSet(conn, set, intervalElements(ranges)); err != nil {
				return fmt.Errorf("network policy: set %s: %w", name, err)
			}
			sets[name] = set
		}
	}
	for _, c := range rs.Chains {
		for i, r := range c.Rules {
			perFamily, err := ruleExprs(r, sets)
			if err != nil {
				return fmt.Errorf("network policy: chain %s rule %d: %w", c.Name, i, err)
			}
			for _, exprs := range perFamily {
				conn.AddRule(&nftables.Rule{Table: t, Chain: chains[c.Name], Exprs: exprs})
			}
		}
	}
	var unknown [len(families)]*nftables.Set
	for i, f := range families {
		unknown[i] = &nftables.Set{Table: t, Name: unknownSet + f.suffix, KeyType: f.keyType, Interval: true}
		if err := addSet(conn, unknown[i], intervalElements(ofFamily(rs.Unknown, f.v6))); err != nil {
			return fmt.Errorf("network policy: set %s: %w", unknown[i].Name, err)
		}
	}
	for _, base := range []struct {
		chain, vmap string
		byPod       map[netip.Addr]string
		daddr       bool
		priority    nftables.ChainPriority
	}{
		{egressChain, egressPodsMap, rs.Egress, false, 0},
		{ingressChain, ingressMap, rs.Ingress, true, 1},
	} {
		chain := conn.AddChain(&nftables.Chain{
			Name: base.chain, Table: t,
			Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward,
			Priority: nftables.ChainPriorityRef(base.priority),
		})
		conn.AddRule(&nftables.Rule{Table: t, Chain: chain, Exprs: establishedExprs()})
		conn.AddRule(&nftables.Rule{Table: t, Chain: chain, Exprs: neighbourDiscoveryExprs()})
		for i, f := range families {
			vmap := &nftables.Set{Table: t, Name: base.vmap + f.suffix, KeyType: f.keyType, DataType: nftables.TypeVerdict, IsMap: true}
			if err := addSet(conn, vmap, verdictElements(base.byPod, chains, f.v6)); err != nil {
				return fmt.Errorf("network policy: map %s: %w", vmap.Name, err)
			}
			conn.AddRule(&nftables.Rule{Table: t, Chain: chain, Exprs: append(f.match(),
				f.loadAddr(base.daddr),
				&expr.Lookup{SourceRegister: 1, SetName: unknown[i].Name, SetID: unknown[i].ID},
				&expr.Counter{},
				&expr.Verdict{Kind: expr.VerdictDrop},
			)})
			conn.AddRule(&nftables.Rule{Table: t, Chain: chain, Exprs: append(f.match(),
				f.loadAddr(base.daddr),
				&expr.Lookup{SourceRegister: 1, SetName: vmap.Name, SetID: vmap.ID, IsDestRegSet: true, DestRegister: 0},
			)})
		}
	}
	if err := conn.Flush(); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("network policy: write table inet %s: %w: %w", TableName, ErrNoNFTables, err)
		}
		return fmt.Errorf("network policy: write table inet %s: %w", TableName, err)
	}
	return nil
}

// Remove implements Kernel.
func (k *NFTKernel) Remove() error {
	conn, err := k.conn(0)
	if err != nil {
		return err
	}
	t := table()
	conn.AddTable(t)
	conn.DelTable(t)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("network policy: delete table inet %s: %w", TableName, err)
	}
	return nil
}

// Drops implements Kernel: it sums the counters of the table's drop rules,
// those of the base chains (unknown addresses) apart from those of the
// policy groups' chains. A missing table has dropped nothing.
func (k *NFTKernel) Drops() (Drops, error) {
	conn, err := k.conn(0)
	if err != nil {
		return Drops{}, err
	}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return Drops{}, fmt.Errorf("network policy: list chains: %w", err)
	}
	var d Drops
	for _, c := range chains {
		// Only the base chains and the groups' chains count drops.
		if c.Table == nil || c.Table.Name != TableName || !countsDrops(c.Name) {
			continue
		}
		rules, err := conn.GetRules(table(), c)
		if errors.Is(err, unix.ENOENT) {
			continue // deleted since it was listed
		}
		if err != nil {
			return Drops{}, fmt.Errorf("network policy: list rules of chain %s: %w", c.Name, err)
		}
		for _, r := range rules {
			for _, e := range r.Exprs {
				counter, ok := e.(*expr.Counter)
				if !ok {
					continue
				}
				if c.Name == egressChain || c.Name == ingressChain {
					d.UnknownPackets += counter.Packets
				} else {
					d.PolicyPackets += counter.Packets
				}
			}
		}
	}
	return d, nil
}

// countsDrops reports whether chain name has counted drop rules: the base
// chains (unknown addresses) and the policy groups' chains (see groups),
// not the policies' own chains, which only accept.
func countsDrops(name string) bool {
	return name == egressChain || name == ingressChain || strings.HasPrefix(name, "in-g") || strings.HasPrefix(name, "eg-g")
}

// batchBytes estimates the netlink batch for rs, generously: an interval
// element takes two entries of about 40 bytes, a map element about 80, a
// rule at most about 300, and each message's acknowledgement some more.
func batchBytes(rs Ruleset) int {
	n := 64 << 10
	for _, s := range rs.Sets {
		n += 256 + 2*64*len(s.Ranges)
	}
	for _, c := range rs.Chains {
		n += 256 + 512*len(c.Rules)
	}
	n += 128*(len(rs.Egress)+len(rs.Ingress)) + 2*64*len(rs.Unknown)
	return 2 * n
}

func addSet(conn *nftables.Conn, set *nftables.Set, elements []nftables.SetElement) error {
	if err := conn.AddSet(set, nil); err != nil {
		return err
	}
	for chunk := range slices.Chunk(elements, elementsPerMessage) {
		if err := conn.SetAddElements(set, chunk); err != nil {
			return err
		}
	}
	return nil
}

// intervalElements are an interval set's elements for rs: each range's
// first address, and the address after its last as an interval end (none
// after 255.255.255.255, where the kernel's interval ends anyway).
func intervalElements(rs []AddrRange) []nftables.SetElement {
	els := make([]nftables.SetElement, 0, 2*len(rs))
	for _, r := range rs {
		els = append(els, nftables.SetElement{Key: r.First.AsSlice()})
		if next := r.Last.Next(); next.IsValid() {
			els = append(els, nftables.SetElement{Key: next.AsSlice(), IntervalEnd: true})
		}
	}
	return els
}

// verdictElements are the elements of a verdict map of family v6 (IPv6 or
// IPv4) for the addresses of that family in byPod.
func verdictElements(byPod map[netip.Addr]string, chains map[string]*nftables.Chain, v6 bool) []nftables.SetElement {
	addrs := make([]netip.Addr, 0, len(byPod))
	for a := range byPod {
		if a.Is6() == v6 {
			addrs = append(addrs, a)
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	els := make([]nftables.SetElement, 0, len(addrs))
	for _, a := range addrs {
		if _, ok := chains[byPod[a]]; !ok || a.Is4In6() || a.Zone() != "" {
			continue // Compile never makes one; the kernel would refuse the batch
		}
		els = append(els, nftables.SetElement{Key: a.AsSlice(), VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: byPod[a]}})
	}
	return els
}

const dportOffset = 2 // in the TCP, UDP and SCTP headers alike

// establishedExprs is `ct state established,related accept`.
func establishedExprs() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: nativeUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: nativeUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: nativeUint32(0)},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
}

// neighbourDiscoveryExprs is `meta nfproto ipv6 meta l4proto ipv6-icmp
// icmpv6 type 133-137 accept`: router and neighbour solicitation and
// advertisement and redirect pass before any drop (Packet.neighbourDiscovery).
func neighbourDiscoveryExprs() []expr.Any {
	return append(families[1].match(),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(ProtocolICMPv6)}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: []byte{icmpv6RouterSolicitation}, ToData: []byte{icmpv6Redirect}},
		&expr.Verdict{Kind: expr.VerdictAccept},
	)
}

// ruleExprs is r in nftables expressions, e.g. `meta nfproto ipv4 ip saddr
// @s0 meta l4proto tcp th dport 80-90 accept`: one rule per family when r
// looks up sets (none for a family some set of r lacks, which would match
// nothing), else one rule for both. sets is Apply's map by kernel name.
func ruleExprs(r Rule, sets map[string]*nftables.Set) ([][]expr.Any, error) {
	tail, err := ruleTail(r)
	if err != nil {
		return nil, err
	}
	if r.Src == "" && r.Dst == "" {
		return [][]expr.Any{tail}, nil
	}
	var out [][]expr.Any
families:
	for _, f := range families {
		exprs := f.match()
		for _, m := range []struct {
			set   string
			daddr bool
		}{{r.Src, false}, {r.Dst, true}} {
			if m.set == "" {
				continue
			}
			set, ok := sets[m.set+f.suffix]
			if !ok {
				return nil, fmt.Errorf("set %s is not in the ruleset", m.set)
			}
			if set == nil {
				continue families
			}
			exprs = append(exprs, f.loadAddr(m.daddr), &expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID})
		}
		out = append(out, append(exprs, tail...))
	}
	return out, nil
}

// ruleTail is r's protocol and port match and its verdict.
func ruleTail(r Rule) ([]expr.Any, error) {
	var exprs []expr.Any
	if r.Protocol != 0 {
		exprs = append(exprs,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(r.Protocol)}})
	}
	if r.Ports != (PortRange{}) {
		if r.Protocol == 0 {
			return nil, errors.New("ports without a protocol")
		}
		exprs = append(exprs, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: dportOffset, Len: 2})
		if r.Ports.First == r.Ports.Last {
			exprs = append(exprs, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: bigEndian16(r.Ports.First)})
		} else {
			exprs = append(exprs, &expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: bigEndian16(r.Ports.First), ToData: bigEndian16(r.Ports.Last)})
		}
	}
	switch r.Verdict.Kind {
	case Accept:
		exprs = append(exprs, &expr.Verdict{Kind: expr.VerdictAccept})
	case Drop:
		// Counted, so that drops can be reported without logging packets.
		exprs = append(exprs, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
	case Jump:
		exprs = append(exprs, &expr.Verdict{Kind: expr.VerdictJump, Chain: r.Verdict.Chain})
	default:
		return nil, fmt.Errorf("verdict kind %d", r.Verdict.Kind)
	}
	return exprs, nil
}

func bigEndian16(v uint16) []byte { return []byte{byte(v >> 8), byte(v)} }

// nativeUint32 is v as the kernel's conntrack state register holds it.
func nativeUint32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }
