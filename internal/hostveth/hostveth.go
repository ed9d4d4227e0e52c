// Package hostveth is what the CNI plugin, which wires each pod's host veth,
// and the agent, which keeps that host side and frees the addresses of pods
// that are gone, must agree on: the alias naming the attachment a host veth
// belongs to, and the settings every host veth gets. It has one home so the
// two cannot drift apart; it touches nothing itself.
package hostveth

import (
	"strings"

	"github.com/containernetworking/cni/pkg/types"
)

// Sysctl is one per-interface setting under /proc/sys, by its path there
// (net/ipv4/conf/gv1234/proxy_arp).
type Sysctl struct {
	Key, Value string
	// Optional settings are skipped where the kernel lacks them (IPv6
	// disabled).
	Optional bool
}

// Sysctls are the settings of the host veth name: answer ARP for the
// gateway address by proxy at once, route what the pod sends, and ignore
// router advertisements (the host veth has no business configuring IPv6
// from a pod).
func Sysctls(name string) []Sysctl {
	return []Sysctl{
		{Key: "net/ipv4/conf/" + name + "/proxy_arp", Value: "1"},
		{Key: "net/ipv4/neigh/" + name + "/proxy_delay", Value: "0"},
		{Key: "net/ipv4/conf/" + name + "/forwarding", Value: "1"},
		{Key: "net/ipv6/conf/" + name + "/accept_ra", Value: "0", Optional: true},
	}
}

// Alias is the link alias (IFLA_IFALIAS) of the host veth of the attachment
// (containerID, ifName) on network: <network>/<container ID>/<ifname>. A pod
// recreated under the same name gets the same veth name but a new container
// ID, so the alias, not the name, says whose a veth is.
func Alias(network, containerID, ifName string) string {
	return network + "/" + containerID + "/" + ifName
}

// ParseAlias is the attachment alias names on network; ok is false for an
// alias of another network or none.
func ParseAlias(network, alias string) (containerID, ifName string, ok bool) {
	rest, ok := strings.CutPrefix(alias, network+"/")
	if !ok {
		return "", "", false
	}
	// Container IDs hold no slash; interface names may not either.
	containerID, ifName, ok = strings.Cut(rest, "/")
	if !ok || containerID == "" || ifName == "" {
		return "", "", false
	}
	return containerID, ifName, true
}

// Attachments returns whether an attachment of network has a host veth among
// those carrying aliases: the predicate ipam.CollectStale needs to free the
// addresses of attachments whose pods are gone. An attachment with no
// interface name (host-local's legacy reservations) has one if any
// interface of its container does. It is pure.
func Attachments(network string, aliases []string) func(types.GCAttachment) bool {
	present := make(map[types.GCAttachment]bool, 2*len(aliases))
	for _, alias := range aliases {
		containerID, ifName, ok := ParseAlias(network, alias)
		if !ok {
			continue
		}
		present[types.GCAttachment{ContainerID: containerID, IfName: ifName}] = true
		present[types.GCAttachment{ContainerID: containerID}] = true
	}
	return func(a types.GCAttachment) bool { return present[a] }
}
