package node

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// iptables-nft's chain is read and written over nftables netlink (see
// forward_nft.go); iptables-legacy, which has no netlink interface of its
// own, through its binary with go-iptables (as flannel does), and only
// where the binary is installed.

// ForwardChains implements ForwardKernel. Whether a backend holds a filter
// table is read without a binary, which would create the table by listing
// it: from nftables for iptables-nft, from ip_tables_names in procfs for
// iptables-legacy. A legacy filter table without the iptables-legacy
// binary (the agent's image has none) is listed as Unhandled.
func (k *NetlinkKernel) ForwardChains() ([]ForwardChain, error) {
	var chains []ForwardChain
	nft, err := k.nftForwardChain()
	if err != nil {
		return nil, err
	}
	if nft != nil {
		chains = append(chains, *nft)
	}
	legacyFilter, err := k.legacyFilter()
	if err != nil {
		return chains, err
	}
	if !legacyFilter {
		return chains, nil
	}
	if _, err := exec.LookPath(BackendLegacy); err != nil {
		return append(chains, ForwardChain{Backend: BackendLegacy, Unhandled: "iptables-legacy holds a filter table in this network namespace and no iptables-legacy binary is installed here, so the agent neither reads nor changes its FORWARD chain (if its policy is DROP, accept the pool there by hand)"}), nil
	}
	var out []string
	err = k.inNetns(func() error {
		ipt, err := newIptables(BackendLegacy)
		if err != nil {
			return err
		}
		out, err = ipt.List("filter", "FORWARD")
		return err
	})
	if err != nil {
		return chains, fmt.Errorf("forward: list %s filter FORWARD: %w", BackendLegacy, err)
	}
	return append(chains, ParseForwardChain(BackendLegacy, strings.Join(out, "\n"))), nil
}

// InsertForwardRule implements ForwardKernel.
func (k *NetlinkKernel) InsertForwardRule(r ForwardRule) error {
	if r.Backend == BackendNFT {
		return k.nftInsertForwardRule(r)
	}
	return k.inNetns(func() error {
		ipt, err := newIptables(r.Backend)
		if err != nil {
			return err
		}
		if err := ipt.Insert("filter", "FORWARD", 1, r.Spec...); err != nil {
			return fmt.Errorf("forward: insert %s: %w", r, err)
		}
		return nil
	})
}

// DeleteForwardRule implements ForwardKernel.
func (k *NetlinkKernel) DeleteForwardRule(r ForwardRule) error {
	if r.Backend == BackendNFT {
		return k.nftDeleteForwardRule(r)
	}
	return k.inNetns(func() error {
		ipt, err := newIptables(r.Backend)
		if err != nil {
			return err
		}
		if err := ipt.DeleteIfExists("filter", "FORWARD", r.Spec...); err != nil {
			return fmt.Errorf("forward: delete %s: %w", r, err)
		}
		return nil
	})
}

// nftFilterForward finds iptables-nft's base chain "ip filter FORWARD";
// nil, nil without one.
func nftFilterForward(conn *nftables.Conn) (*nftables.Chain, error) {
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, fmt.Errorf("forward: list nftables chains: %w", err)
	}
	for _, c := range chains {
		if c.Table != nil && c.Table.Name == "filter" && c.Name == "FORWARD" && c.Hooknum != nil {
			return c, nil
		}
	}
	return nil, nil
}

// nftForwardChain reads iptables-nft's filter FORWARD chain: its policy
// as iptables prints it and the agent's rules; nil without the chain.
func (k *NetlinkKernel) nftForwardChain() (*ForwardChain, error) {
	conn, err := k.nftables()
	if err != nil {
		return nil, err
	}
	chain, err := nftFilterForward(conn)
	if chain == nil || err != nil {
		return nil, err
	}
	fc := &ForwardChain{Backend: BackendNFT, Policy: "ACCEPT"}
	if chain.Policy != nil && *chain.Policy == nftables.ChainPolicyDrop {
		fc.Policy = "DROP"
	}
	rules, err := conn.GetRules(chain.Table, chain)
	if err != nil {
		return nil, fmt.Errorf("forward: list %s filter FORWARD: %w", BackendNFT, err)
	}
	for _, r := range rules {
		if spec, ours := nftForwardSpec(r.Exprs, r.UserData); ours {
			fc.Ours = append(fc.Ours, ForwardRule{Backend: BackendNFT, Spec: spec, Handle: r.Handle})
		}
	}
	return fc, nil
}

// nftInsertForwardRule inserts r at the head of iptables-nft's filter
// FORWARD chain; the chain is never created.
func (k *NetlinkKernel) nftInsertForwardRule(r ForwardRule) error {
	exprs, udata, err := nftForwardRule(r.Spec)
	if err != nil {
		return err
	}
	conn, err := k.nftables()
	if err != nil {
		return err
	}
	chain, err := nftFilterForward(conn)
	if err != nil {
		return err
	}
	if chain == nil {
		return fmt.Errorf("forward: insert %s: the chain is gone", r)
	}
	conn.InsertRule(&nftables.Rule{Table: chain.Table, Chain: chain, Exprs: exprs, UserData: udata})
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("forward: insert %s: %w", r, err)
	}
	return nil
}

// nftDeleteForwardRule deletes r, by its handle as listed (a rule of ours
// in an odd shape has no spec to find it by); a rule already gone is no
// error.
func (k *NetlinkKernel) nftDeleteForwardRule(r ForwardRule) error {
	conn, err := k.nftables()
	if err != nil {
		return err
	}
	chain, err := nftFilterForward(conn)
	if chain == nil || err != nil {
		return err
	}
	handle := r.Handle
	if handle == 0 {
		rules, err := conn.GetRules(chain.Table, chain)
		if err != nil {
			return fmt.Errorf("forward: delete %s: %w", r, err)
		}
		for _, rule := range rules {
			if spec, ours := nftForwardSpec(rule.Exprs, rule.UserData); ours && slices.Equal(spec, r.Spec) {
				handle = rule.Handle
				break
			}
		}
		if handle == 0 {
			return nil
		}
	}
	if err := conn.DelRule(&nftables.Rule{Table: chain.Table, Chain: chain, Handle: handle}); err != nil {
		return fmt.Errorf("forward: delete %s: %w", r, err)
	}
	if err := conn.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("forward: delete %s: %w", r, err)
	}
	return nil
}

// newIptables drives backend's binary (iptables-nft or iptables-legacy).
func newIptables(backend string) (*iptables.IPTables, error) {
	path, err := exec.LookPath(backend)
	if err != nil {
		return nil, fmt.Errorf("forward: %s holds a filter table but its binary is not installed: %w", backend, err)
	}
	ipt, err := iptables.New(iptables.Path(path))
	if err != nil {
		return nil, fmt.Errorf("forward: %s: %w", backend, err)
	}
	return ipt, nil
}

// legacyFilter reports whether iptables-legacy holds a filter table in
// k's namespace.
func (k *NetlinkKernel) legacyFilter() (bool, error) {
	var names []byte
	err := k.inNetns(func() error {
		var err error
		// thread-self: /proc/net is the namespace of the process's
		// first thread, not of the one inNetns moved.
		names, err = os.ReadFile("/proc/thread-self/net/ip_tables_names")
		return err
	})
	switch {
	case errors.Is(err, os.ErrNotExist):
		return false, nil // no ip_tables module: no legacy table
	case err != nil:
		return false, fmt.Errorf("forward: %w", err)
	}
	for _, n := range strings.Fields(string(names)) {
		if n == "filter" {
			return true, nil
		}
	}
	return false, nil
}
