// Package netpol owns Kubernetes NetworkPolicy (networking.k8s.io/v1) on one
// host for the host's own pods: it compiles the policies, the cluster's pods
// and namespaces into the desired state of one nftables table of its own,
// "inet grapevine-policy" (sets of peer addresses, verdict maps keyed by pod
// address, chains per policy), and applies that state in one atomic
// transaction through the small Kernel interface.
//
// Compile is a pure function; Ruleset.Allows models what the kernel does
// with a compiled ruleset, so the compiler's table tests speak of packets
// rather than of chains. NFTKernel is the only code that writes to the
// kernel, and it writes only table inet grapevine-policy: it never touches
// another nftables table (not even node's "ip grapevine"), iptables, routes
// or links, and netpol never speaks gossip or reads the ledger.
//
// IPv4 and IPv6 are enforced alike in the one inet table: every address of
// a pod (status.podIPs) has its entry in the verdict maps and is a member
// of the peer sets, which the kernel holds once per family (ipv4_addr and
// ipv6_addr sets and maps, the IPv6 ones named with the suffix -v6); an
// ipBlock allows only addresses of its own family. ICMPv6 neighbour
// discovery (types 133-137) is accepted before any drop: pods resolve
// their gateway fe80::ecee:eeff:feee:eeee with it.
//
// Addresses of the node's blocks that no known pod holds (Input.Blocks, of
// either family, less the local pods' addresses) are denied both ways, so a
// new pod is cut off
// until the agent knows its labels and address; package netpol/admit is how
// the CNI plugin hands the agent both during ADD and waits until the pod's
// policies are in force.
//
// Enforcement is at the forward hook, so it covers traffic between pods and
// between pods and the world, but not traffic between a pod and its own host
// (kubelet probes, the host's own services): that stays allowed, as the API
// allows for node-local traffic. Replies of allowed connections are always
// allowed (conntrack state established or related).
package netpol
