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
const nftChain = "postrouting"

// masqueradeComment marks the rule with the pool it was built for, so an
// unchanged table is recognised without comparing expressions.
func masqueradeComment(pool netip.Prefix) string {
	return "grapevine masquerade " + pool.String()
}

// EnsureMasquerade implements Kernel. If the table already holds exactly the
// rule for pool nothing is written; otherwise the table is deleted and
// rebuilt in one atomic batch.
func (k *NetlinkKernel) EnsureMasquerade(pool netip.Prefix) error {
	if !pool.IsValid() || !pool.Addr().Is4() || pool.Masked() != pool {
		return fmt.Errorf("masquerade: pool %s is not an IPv4 network address", pool)
	}
	conn, err := k.nftables()
	if err != nil {
		return err
	}
	current, err := masqueradeIsCurrent(conn, pool)
	if err != nil {
		return fmt.Errorf("masquerade: read table ip %s: %w", NFTTable, err)
	}
	if current {
		return nil
	}

	table := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: NFTTable}
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
		return fmt.Errorf("masquerade: write table ip %s: %w", NFTTable, err)
	}
	return nil
}

// RemoveMasquerade implements Kernel.
func (k *NetlinkKernel) RemoveMasquerade() error {
	conn, err := k.nftables()
	if err != nil {
		return err
	}
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return fmt.Errorf("masquerade: list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == NFTTable {
			conn.DelTable(t)
			if err := conn.Flush(); err != nil {
				return fmt.Errorf("masquerade: delete table ip %s: %w", NFTTable, err)
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

// masqueradeIsCurrent reports whether table ip grapevine holds exactly one
// chain, hooked as ours, with exactly the rule for pool.
func masqueradeIsCurrent(conn *nftables.Conn, pool netip.Prefix) (bool, error) {
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyIPv4)
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
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
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

// masqueradeExprs is `ip saddr <pool> ip daddr != <pool> masquerade`.
func masqueradeExprs(pool netip.Prefix) []expr.Any {
	mask := netipMask(pool)
	addr := pool.Addr().AsSlice()
	const (
		saddrOffset = 12 // in the IPv4 header
		daddrOffset = 16
	)
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: saddrOffset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: daddrOffset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
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
