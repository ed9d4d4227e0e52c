package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"

	"github.com/grapevine-net/grapevine/internal/netlinkdump"
	"github.com/grapevine-net/grapevine/node"
)

// LinuxHost reads the kernel of the calling process's network namespace:
// netlink through node's reader methods, /proc/sys, nftables over netlink,
// and iptables-legacy's own binary. It writes nothing.
type LinuxHost struct {
	// k is used for its read methods only.
	k *node.NetlinkKernel
}

// NewLinuxHost returns the reader of the current network namespace.
func NewLinuxHost() *LinuxHost { return &LinuxHost{k: node.NewNetlinkKernel()} }

func (h *LinuxHost) Sysctl(key string) (string, error)             { return h.k.Sysctl(key) }
func (h *LinuxHost) Link(name string) (node.Link, error)           { return h.k.Link(name) }
func (h *LinuxHost) Routes() ([]node.Route, error)                 { return h.k.Routes() }
func (h *LinuxHost) PodRoutes() ([]node.Route, error)              { return h.k.PodRoutes() }
func (h *LinuxHost) PodNeighbours() ([]node.PodNeighbour, error)   { return h.k.PodNeighbours() }
func (h *LinuxHost) IptablesForward() ([]node.ForwardChain, error) { return h.k.ForwardChains() }
func (h *LinuxHost) HostVeths(prefix string) ([]node.HostVeth, error) {
	return h.k.HostVeths(prefix)
}

// Links implements Host: every interface with its IPv4 addresses.
func (h *LinuxHost) Links() ([]node.Link, error) {
	links, err := netlinkdump.Retry(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	addrs, err := netlinkdump.Retry(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	out := make([]node.Link, 0, len(links))
	for _, l := range links {
		a := l.Attrs()
		link := node.Link{Name: a.Name, Index: a.Index, Up: a.Flags&net.FlagUp != 0}
		for _, addr := range addrs {
			if addr.LinkIndex != a.Index || addr.IPNet == nil {
				continue
			}
			ip, ok := netip.AddrFromSlice(addr.IP)
			ones, _ := addr.Mask.Size()
			if ok {
				link.Addrs = append(link.Addrs, netip.PrefixFrom(ip.Unmap(), ones))
			}
		}
		out = append(out, link)
	}
	return out, nil
}

// ForwardChains implements Host.
func (h *LinuxHost) ForwardChains() ([]Chain, error) {
	conn, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("open nftables: %w", err)
	}
	defer conn.CloseLasting()
	chains, err := conn.ListChains()
	if err != nil {
		return nil, fmt.Errorf("list nftables chains: %w", err)
	}
	var out []Chain
	for _, c := range chains {
		if c.Hooknum == nil || *c.Hooknum != *nftables.ChainHookForward || c.Policy == nil || c.Table == nil {
			continue
		}
		family := ""
		switch c.Table.Family {
		case nftables.TableFamilyIPv4:
			family = "ip"
		case nftables.TableFamilyINet:
			family = "inet"
		default:
			continue // IPv6 and bridge forwarding do not carry the pods' IPv4
		}
		policy := "accept"
		if *c.Policy == nftables.ChainPolicyDrop {
			policy = "drop"
		}
		out = append(out, Chain{Family: family, Table: c.Table.Name, Name: c.Name, Policy: policy})
	}
	return out, nil
}

// MasqueradeRules implements Host.
func (h *LinuxHost) MasqueradeRules() ([]string, error) {
	conn, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("open nftables: %w", err)
	}
	defer conn.CloseLasting()
	// An IPv4 pool's rule is in table ip, an IPv6 pool's in table ip6.
	var chains []*nftables.Chain
	for _, family := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		cs, err := conn.ListChainsOfTableFamily(family)
		if err != nil {
			return nil, fmt.Errorf("list nftables chains: %w", err)
		}
		chains = append(chains, cs...)
	}
	var comments []string
	for _, c := range chains {
		if c.Table == nil || c.Table.Name != node.NFTTable {
			continue
		}
		rules, err := conn.GetRules(c.Table, c)
		if err != nil {
			return nil, fmt.Errorf("list rules of table %s chain %s: %w", node.NFTTable, c.Name, err)
		}
		for _, r := range rules {
			if !masquerades(r.Exprs) {
				continue
			}
			comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			comments = append(comments, comment)
		}
	}
	return comments, nil
}

func masquerades(exprs []expr.Any) bool {
	for _, e := range exprs {
		if _, ok := e.(*expr.Masq); ok {
			return true
		}
	}
	return false
}

// ErrNoLegacySave: iptables-legacy holds tables here, and doctor cannot
// read them without iptables-legacy-save (the agent's image has none).
var ErrNoLegacySave = errors.New("iptables-legacy-save is not installed")

// LegacyRuleset implements Host. It asks iptables-legacy only when this
// namespace already has one of its tables: listing one would create it,
// and doctor changes nothing.
func (h *LinuxHost) LegacyRuleset(ctx context.Context) (string, error) {
	names, err := os.ReadFile("/proc/net/ip_tables_names")
	if errors.Is(err, os.ErrNotExist) {
		return "", nil // no legacy iptables in this kernel
	}
	if err != nil {
		return "", fmt.Errorf("read /proc/net/ip_tables_names: %w", err)
	}
	if strings.TrimSpace(string(names)) == "" {
		return "", nil
	}
	bin, err := exec.LookPath("iptables-legacy-save")
	if err != nil {
		return "", fmt.Errorf("iptables-legacy holds tables %s but %w", strings.Join(strings.Fields(string(names)), ", "), ErrNoLegacySave)
	}
	out, err := exec.CommandContext(ctx, bin).Output()
	if err != nil {
		return "", fmt.Errorf("iptables-legacy-save: %w", err)
	}
	return string(out), nil
}

// Firewall implements Host. firewalld runs when nftables holds its table
// inet firewalld; ufw when its chain ufw-user-input is in nftables' ip
// filter (iptables-nft) or in /proc's list of iptables-legacy tables'
// filter with that chain (read with iptables-legacy-save, as
// LegacyRuleset does). Their files are read only then.
func (h *LinuxHost) Firewall() (HostFirewall, error) {
	var fw HostFirewall
	conn, err := nftables.New()
	if err != nil {
		return fw, fmt.Errorf("open nftables: %w", err)
	}
	defer conn.CloseLasting()
	chains, err := conn.ListChains()
	if err != nil {
		return fw, fmt.Errorf("list nftables chains: %w", err)
	}
	for _, c := range chains {
		switch {
		case c.Table == nil:
		case c.Table.Family == nftables.TableFamilyINet && c.Table.Name == "firewalld":
			fw.FirewalldActive = true
		case c.Table.Family == nftables.TableFamilyIPv4 && c.Table.Name == "filter" && c.Name == "ufw-user-input":
			fw.UFWActive = true
		}
	}
	if legacy, err := h.LegacyRuleset(context.Background()); err == nil && strings.Contains(legacy, ":ufw-user-input ") {
		fw.UFWActive = true
	}
	var errs []error
	read := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		return string(b)
	}
	// readDir maps each *.xml's name (without .xml) to its text, the
	// later directory's over the earlier's.
	readDir := func(dirs ...string) map[string]string {
		out := make(map[string]string)
		for _, dir := range dirs {
			entries, err := os.ReadDir(dir)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
			for _, e := range entries {
				if name, ok := strings.CutSuffix(e.Name(), ".xml"); ok && e.Type().IsRegular() {
					out[name] = read(filepath.Join(dir, e.Name()))
				}
			}
		}
		return out
	}
	if fw.FirewalldActive {
		fw.FirewalldConf = read("/etc/firewalld/firewalld.conf")
		fw.FirewalldZones = readDir("/usr/lib/firewalld/zones", "/etc/firewalld/zones")
		fw.FirewalldServices = readDir("/usr/lib/firewalld/services", "/etc/firewalld/services")
	}
	if fw.UFWActive {
		fw.UFWConf = read("/etc/ufw/ufw.conf")
		fw.UFWDefaults = read("/etc/default/ufw")
		fw.UFWUserRules = read("/etc/ufw/user.rules")
	}
	return fw, errors.Join(errs...)
}
