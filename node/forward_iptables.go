package node

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	"github.com/google/nftables"
)

// The rules are written by the iptables binaries through go-iptables (as
// flannel does) rather than as nftables expressions of our own: a rule in
// iptables-nft's chain must be in the very encoding iptables-nft reads back
// (xtables matches, its own comment form), or `iptables -S` and Docker's
// rewrites of the chain break on it; and the same code serves
// iptables-legacy, which has no netlink interface of its own.

// ForwardChains implements ForwardKernel. Whether a backend holds a filter
// table is read without its binary, which would create the table by
// listing it: from nftables for iptables-nft, from
// ip_tables_names in procfs for iptables-legacy.
//
// Without the backend's binary (the agent's image has none) a chain whose
// policy is known not to drop needs nothing and is listed without rules;
// any other is an error.
func (k *NetlinkKernel) ForwardChains() ([]ForwardChain, error) {
	var backends []string
	var chains []ForwardChain
	var errs []error
	nftFilter, nftPolicy, err := k.nftFilterForward()
	if err != nil {
		return nil, err
	}
	if nftFilter {
		if _, err := exec.LookPath(BackendNFT); err != nil && nftPolicy != "DROP" {
			chains = append(chains, ForwardChain{Backend: BackendNFT, Policy: nftPolicy})
		} else {
			backends = append(backends, BackendNFT)
		}
	}
	legacyFilter, err := k.legacyFilter()
	if err != nil {
		return nil, err
	}
	if legacyFilter {
		backends = append(backends, BackendLegacy)
	}
	for _, b := range backends {
		var out []string
		err := k.inNetns(func() error {
			ipt, err := newIptables(b)
			if err != nil {
				return err
			}
			out, err = ipt.List("filter", "FORWARD")
			return err
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("forward: list %s filter FORWARD: %w", b, err))
			continue
		}
		chains = append(chains, ParseForwardChain(b, strings.Join(out, "\n")))
	}
	return chains, errors.Join(errs...)
}

// InsertForwardRule implements ForwardKernel.
func (k *NetlinkKernel) InsertForwardRule(r ForwardRule) error {
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

// nftFilterForward reports whether nftables holds iptables-nft's chain
// "ip filter FORWARD", and its policy as iptables prints it.
func (k *NetlinkKernel) nftFilterForward() (bool, string, error) {
	conn, err := k.nftables()
	if err != nil {
		return false, "", err
	}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return false, "", fmt.Errorf("forward: list nftables chains: %w", err)
	}
	for _, c := range chains {
		if c.Table.Name == "filter" && c.Name == "FORWARD" && c.Hooknum != nil {
			policy := "ACCEPT"
			if c.Policy != nil && *c.Policy == nftables.ChainPolicyDrop {
				policy = "DROP"
			}
			return true, policy, nil
		}
	}
	return false, "", nil
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
