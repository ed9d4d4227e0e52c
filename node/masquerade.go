package node

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// The masquerade lives in a table of its own so that rebuilding it never
// touches anyone else's rules:
//
//	table ip grapevine {
//		chain postrouting {
//			type nat hook postrouting priority srcnat; policy accept;
//			ip saddr <pool> ip daddr != <pool> masquerade comment "grapevine masquerade <pool>"
//		}
//	}
//
// and, on a dual-stack node, its twin for the IPv6 pool, table ip6
// grapevine with `ip6 saddr <pool6> ip6 daddr != <pool6> masquerade`. One
// table per family rather than one inet table keeps the IPv4 table exactly
// as it was before IPv6, so an agent upgraded in place rewrites nothing.
const nftChain = "postrouting"

// Family is an IP address family, for what Grapevine keeps per family.
type Family int

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "ipv6"
	}
	return "ipv4"
}

// nftFamily is the nftables family of f's masquerade table.
func (f Family) nftFamily() nftables.TableFamily {
	if f == IPv6 {
		return nftables.TableFamilyIPv6
	}
	return nftables.TableFamilyIPv4
}

// familyOf is the family of pool's address.
func familyOf(pool netip.Prefix) Family {
	if pool.Addr().Is4() {
		return IPv4
	}
	return IPv6
}

// checkMasqueradePool accepts an IPv4 or IPv6 network address.
func checkMasqueradePool(pool netip.Prefix) error {
	if !pool.IsValid() || pool.Addr().Is4In6() || pool.Masked() != pool {
		return fmt.Errorf("masquerade: pool %s is not an IPv4 or IPv6 network address", pool)
	}
	return nil
}

// masqueradeComment marks the rule with the pool it was built for, so an
// unchanged table is recognised without comparing expressions.
func masqueradeComment(pool netip.Prefix) string {
	return "grapevine masquerade " + pool.String()
}

// EnsureMasquerade implements Kernel. If the table of pool's family already
// holds exactly the rule for pool nothing is written; otherwise the table is
// deleted and rebuilt in one atomic batch.
func (k *NetlinkKernel) EnsureMasquerade(pool netip.Prefix) error {
	if err := checkMasqueradePool(pool); err != nil {
		return err
	}
	family := familyOf(pool)
	conn, err := k.nftables()
	if err != nil {
		return err
	}
	current, err := masqueradeIsCurrent(conn, pool)
	if err != nil {
		return fmt.Errorf("masquerade: read table %s %s: %w", family.nftName(), NFTTable, err)
	}
	if current {
		return nil
	}

	table := &nftables.Table{Family: family.nftFamily(), Name: NFTTable}
	// Add first so the delete cannot fail on a missing table; the kernel
	// applies the whole batch or none of it.
	conn.AddTable(table)
	conn.DelTable(table)
	conn.AddTable(table)
	chain := conn.AddChain(&nftables.Chain{
		Name:     nftChain,
		Table:    table,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	})
	conn.AddRule(&nftables.Rule{
		Table:    table,
		Chain:    chain,
		Exprs:    masqueradeExprs(pool),
		UserData: userdata.AppendString(nil, userdata.TypeComment, masqueradeComment(pool)),
	})
	if err := conn.Flush(); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("masquerade: kernel lacks nftables NAT support (nf_tables, nft_chain_nat, nft_masq): %w", err)
		}
		return fmt.Errorf("masquerade: write table %s %s: %w", family.nftName(), NFTTable, err)
	}
	return nil
}

// nftName is how nft(8) names f's table family.
func (f Family) nftName() string {
	if f == IPv6 {
		return "ip6"
	}
	return "ip"
}

// RemoveMasquerade implements Kernel.
func (k *NetlinkKernel) RemoveMasquerade(family Family) error {
	conn, err := k.nftables()
	if err != nil {
		return err
	}
	tables, err := conn.ListTablesOfFamily(family.nftFamily())
	if err != nil {
		return fmt.Errorf("masquerade: list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == NFTTable {
			conn.DelTable(t)
			if err := conn.Flush(); err != nil {
				return fmt.Errorf("masquerade: delete table %s %s: %w", family.nftName(), NFTTable, err)
			}
		}
	}
	return nil
}

// nftables returns a connection to k's namespace; without a namespace of its
// own, each request dials in the calling thread's.
func (k *NetlinkKernel) nftables() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if k.netns != nil {
		opts = append(opts, nftables.WithNetNSFd(int(k.netns.Fd())))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("masquerade: open nftables: %w", err)
	}
	return conn, nil
}

// masqueradeIsCurrent reports whether the grapevine table of pool's family
// holds exactly one chain, hooked as ours, with exactly the rule for pool.
func masqueradeIsCurrent(conn *nftables.Conn, pool netip.Prefix) (bool, error) {
	family := familyOf(pool).nftFamily()
	tables, err := conn.ListTablesOfFamily(family)
	if err != nil {
		return false, err
	}
	var table *nftables.Table
	for _, t := range tables {
		if t.Name == NFTTable {
			table = t
		}
	}
	if table == nil {
		return false, nil
	}
	chains, err := conn.ListChainsOfTableFamily(family)
	if err != nil {
		return false, err
	}
	var ours []*nftables.Chain
	for _, c := range chains {
		if c.Table.Name == NFTTable {
			ours = append(ours, c)
		}
	}
	if len(ours) != 1 {
		return false, nil
	}
	c := ours[0]
	if c.Name != nftChain || c.Type != nftables.ChainTypeNAT ||
		c.Hooknum == nil || *c.Hooknum != *nftables.ChainHookPostrouting ||
		c.Priority == nil || *c.Priority != *nftables.ChainPriorityNATSource ||
		(c.Policy != nil && *c.Policy != nftables.ChainPolicyAccept) {
		return false, nil
	}
	rules, err := conn.GetRules(table, c)
	if err != nil {
		return false, err
	}
	if len(rules) != 1 || len(rules[0].Exprs) != len(masqueradeExprs(pool)) {
		return false, nil
	}
	comment, _ := userdata.GetString(rules[0].UserData, userdata.TypeComment)
	return comment == masqueradeComment(pool), nil
}

// masqueradeExprs is `ip saddr <pool> ip daddr != <pool> masquerade`, or
// its ip6 twin for an IPv6 pool.
func masqueradeExprs(pool netip.Prefix) []expr.Any {
	mask := netipMask(pool)
	addr := pool.Addr().AsSlice()
	size := uint32(len(addr))
	// The addresses' offsets in the IPv4 header, or the IPv6 header's.
	saddrOffset, daddrOffset := uint32(12), uint32(16)
	if pool.Addr().Is6() {
		saddrOffset, daddrOffset = 8, 24
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: saddrOffset, Len: size},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: size, Mask: mask, Xor: make([]byte, size)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: daddrOffset, Len: size},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: size, Mask: mask, Xor: make([]byte, size)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: addr},
		&expr.Masq{},
	}
}

func netipMask(p netip.Prefix) []byte {
	mask := make([]byte, p.Addr().BitLen()/8)
	for i := range p.Bits() {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return mask
}
