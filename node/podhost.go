package node

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/grapevine-net/grapevine/internal/hostveth"
	"github.com/grapevine-net/grapevine/ipam"
)

// The host side of a pod, as the CNI plugin wires it:
//
//	<pod IP> dev <host veth> scope link
//	<pod IP> dev <host veth> lladdr <pod MAC> PERMANENT
//	net.ipv4.conf.<host veth>.proxy_arp=1 (and the rest of hostveth.Sysctls)
//
// and for a dual-stack pod also `<pod IPv6> dev <host veth> metric 1024`
// and its PERMANENT IPv6 neighbour entry.
//
// The agent keeps it that way: what each pod should have comes from the IPAM
// store (an address and the attachment holding it) and the host veths'
// aliases (the attachment each veth belongs to), so a route, entry or
// setting deleted or changed by hand is put back by the next pass. Nothing
// is ever deleted: a pod's host side goes with its veth, at the plugin's DEL.

// Reservation is one address of the IPAM store and the attachment holding
// it, as package ipam reads it (ipam.ReadReservations).
type Reservation = ipam.Reservation

// HostVeth is a host-side veth as the kernel shows it.
type HostVeth struct {
	Name  string
	Index int
	// Alias names the attachment the veth belongs to (hostveth.Alias).
	Alias string
	// PodMAC is the MAC of the veth's other end, the pod's interface;
	// zero when the kernel would not tell.
	PodMAC MAC
}

// PodNeighbour is a neighbour entry on the link with index LinkIndex.
type PodNeighbour struct {
	LinkIndex int
	Neighbour
}

// Sysctl is one setting under /proc/sys, by its path there
// (net/ipv4/conf/gv1234/proxy_arp).
type Sysctl = hostveth.Sysctl

// PodSpec is where the pods' host sides come from.
type PodSpec struct {
	// Network is the CNI network name, the first part of every alias the
	// plugin sets (NetworkName).
	Network string
	// Pool is the pod pool: a reservation outside it is never routed, so
	// a stray file in the store cannot route a host address to a pod.
	Pool netip.Prefix
	// Pool6 is the IPv6 pod pool on a dual-stack node: its reservations
	// are the pods' IPv6 addresses, whose host side is kept like the IPv4
	// one.
	Pool6        netip.Prefix
	Reservations []Reservation
	// Settle is how long the passes must have seen a host veth before its
	// pod's host side is repaired: a younger one may be one the plugin is
	// still wiring (ADD labels the veth before it routes the pod), and
	// writing before it would only race it.
	Settle time.Duration
}

// PodHost is one pod address and the host veth it is routed through.
type PodHost struct {
	Addr netip.Addr
	Veth HostVeth
}

// Errors of DesiredPodHosts, for a reservation left alone.
var (
	ErrOutsidePool   = errors.New("address is outside the pool")
	ErrAmbiguousVeth = errors.New("several host veths carry the attachment's alias")
)

// DesiredPodHosts pairs each reservation with the host veth carrying its
// attachment's alias. A reservation that names no attachment, or without a veth is not wired yet (an ADD
// under way) or no more (a DEL under way, or a pod that is gone): it has no
// host side to keep, and no error. A reservation outside the pool, or whose
// alias two veths carry, is left alone with an error. A veth of another
// network, or without a reservation (its address came from another IPAM
// plugin), is not one of these pods. It is a pure function; the result is
// sorted by address.
func DesiredPodHosts(spec PodSpec, veths []HostVeth) (pods []PodHost, problems []error) {
	byAlias := make(map[string][]HostVeth, len(veths))
	for _, v := range veths {
		if strings.HasPrefix(v.Alias, spec.Network+"/") {
			byAlias[v.Alias] = append(byAlias[v.Alias], v)
		}
	}
	for _, r := range spec.Reservations {
		alias := hostveth.Alias(spec.Network, r.ContainerID, r.IfName)
		found := byAlias[alias]
		switch {
		case r.ContainerID == "" || len(found) == 0:
			continue
		case !spec.Pool.Contains(r.Addr) && !(spec.Pool6.IsValid() && spec.Pool6.Contains(r.Addr)):
			pools := spec.Pool.String()
			if spec.Pool6.IsValid() {
				pools += " or " + spec.Pool6.String()
			}
			problems = append(problems, fmt.Errorf("pod %s (%s): %w %s", r.Addr, alias, ErrOutsidePool, pools))
		case len(found) > 1:
			names := make([]string, len(found))
			for i, v := range found {
				names[i] = v.Name
			}
			slices.Sort(names)
			problems = append(problems, fmt.Errorf("pod %s (%s): %w: %s", r.Addr, alias, ErrAmbiguousVeth, strings.Join(names, ", ")))
		default:
			pods = append(pods, PodHost{Addr: r.Addr, Veth: found[0]})
		}
	}
	slices.SortFunc(pods, func(a, b PodHost) int { return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Veth.Name, b.Veth.Name)) })
	return pods, problems
}

// PodRoute is the host's route to pod: `<addr>/32 dev <veth>`, or
// `<addr>/128 dev <veth> metric 1024` (the metric the kernel gives the
// plugin's IPv6 route).
func (p PodHost) Route() Route {
	r := Route{Dst: netip.PrefixFrom(p.Addr, p.Addr.BitLen()), LinkIndex: p.Veth.Index}
	if p.Addr.Is6() {
		r.Metric = IPv6DefaultMetric
	}
	return r
}

// PodHostPlan is the writes that bring the pods' host sides back.
type PodHostPlan struct {
	Routes     []Route
	Neighbours []PodNeighbour
	Sysctls    []Sysctl
}

// ErrPodMACUnknown means a pod's neighbour entry is missing or wrong and
// the kernel would not tell the pod side's MAC to put it back.
var ErrPodMACUnknown = errors.New("the pod side's MAC is unknown")

// PlanPodHosts compares the pods' host sides with the kernel's: routes are
// the main table's /32 and /128 routes (PodRoutes), neighs the neighbour
// entries, sysctls the current values of the pods' hostveth.Sysctls (an
// optional one the kernel lacks is absent). A pod's route is right when the
// slot with its metric (0, IPv6DefaultMetric for IPv6) leads to its veth
// with no gateway; its neighbour entry
// when it is PERMANENT on its veth with the pod side's MAC. A pod whose
// entry needs writing but whose MAC is unknown gets an error instead. It is
// a pure function.
func PlanPodHosts(pods []PodHost, routes []Route, neighs []PodNeighbour, sysctls map[string]string) (PodHostPlan, []error) {
	var plan PodHostPlan
	var problems []error
	have := make(map[routeKey]Route, len(routes))
	for _, r := range routes {
		have[r.key()] = r
	}
	type neighKey struct {
		link int
		ip   netip.Addr
	}
	entries := make(map[neighKey]Neighbour, len(neighs))
	for _, n := range neighs {
		entries[neighKey{n.LinkIndex, n.IP}] = n.Neighbour
	}
	sysctlsDone := make(map[string]bool)
	for _, p := range pods {
		want := p.Route()
		if cur, ok := have[want.key()]; !ok || cur != want {
			plan.Routes = append(plan.Routes, want)
		}
		cur, ok := entries[neighKey{p.Veth.Index, p.Addr}]
		switch {
		case p.Veth.PodMAC == MAC{}:
			if !ok || !cur.Permanent {
				problems = append(problems, fmt.Errorf("pod %s: neighbour entry on %s not restored: %w", p.Addr, p.Veth.Name, ErrPodMACUnknown))
			}
		case !ok || !cur.Permanent || cur.MAC != p.Veth.PodMAC:
			plan.Neighbours = append(plan.Neighbours, PodNeighbour{p.Veth.Index, Neighbour{IP: p.Addr, MAC: p.Veth.PodMAC, Permanent: true}})
		}
		if sysctlsDone[p.Veth.Name] {
			continue
		}
		sysctlsDone[p.Veth.Name] = true
		for _, s := range hostveth.Sysctls(p.Veth.Name) {
			v, ok := sysctls[s.Key]
			if (ok || !s.Optional) && v != s.Value {
				plan.Sysctls = append(plan.Sysctls, s)
			}
		}
	}
	return plan, problems
}
