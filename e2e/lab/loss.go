package lab

import (
	"fmt"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// lossTable is the nftables table that drops a share of what a host sends
// on its LAN link; it lives in the host's namespace only.
const lossTable = "grapevine-lab-loss"

// LoseOneIn makes the host drop each packet it sends on its LAN link (em1)
// with probability 1/n: its agent's gossip, ledger and probe traffic and
// its kernel's echo replies alike, as a lossy link would. A netem qdisc
// would do, but kernels without sch_netem are common; nftables' numgen is
// always there where the agent runs. n = 0 removes the loss.
func (h *Host) LoseOneIn(n uint32) error {
	var chain *FilterChain
	if n > 0 {
		chain = &FilterChain{Name: "out", Hook: nftables.ChainHookOutput, Policy: nftables.ChainPolicyAccept, Rules: [][]expr.Any{{
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname("em1")},
			&expr.Numgen{Register: 1, Modulus: n, Type: unix.NFT_NG_RANDOM},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 0, 0, 0}},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}}}
	}
	if err := h.SetFilterTable(lossTable, chain); err != nil {
		return fmt.Errorf("set packet loss 1/%d: %w", n, err)
	}
	return nil
}

// FilterChain is the one base chain of a filter table a test puts in a
// host's namespace: a lossy link, a host firewall, what Docker leaves
// behind.
type FilterChain struct {
	Name   string // "input", "forward", ...
	Hook   *nftables.ChainHook
	Policy nftables.ChainPolicy
	Rules  [][]expr.Any
}

// SetFilterTable replaces the inet table name in the host's namespace by
// one with chain, in one transaction; a nil chain removes the table.
func (h *Host) SetFilterTable(name string, chain *FilterChain) error {
	fd, err := os.Open(h.Namespace.Path())
	if err != nil {
		return fmt.Errorf("host %s: %w", h.Name, err)
	}
	defer fd.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(fd.Fd())))
	if err != nil {
		return fmt.Errorf("host %s: nftables: %w", h.Name, err)
	}
	table := &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
	// Replace whatever an earlier call left: add (a no-op if present), then
	// delete, in one batch.
	conn.AddTable(table)
	conn.DelTable(table)
	if chain != nil {
		conn.AddTable(table)
		policy := chain.Policy
		c := conn.AddChain(&nftables.Chain{Name: chain.Name, Table: table, Type: nftables.ChainTypeFilter,
			Hooknum: chain.Hook, Priority: nftables.ChainPriorityFilter, Policy: &policy})
		for _, r := range chain.Rules {
			conn.AddRule(&nftables.Rule{Table: table, Chain: c, Exprs: r})
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("host %s: table inet %s: %w", h.Name, name, err)
	}
	return nil
}

// ifname is an interface name as nftables compares it: IFNAMSIZ bytes,
// zero-padded.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}
