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
// Addresses of the node's block that no known pod holds (Input.Block less
// the local pods' addresses) are denied both ways, so a new pod is cut off
// until the agent knows its labels and address; package netpol/admit is how
// the CNI plugin hands the agent both during ADD and waits until the pod's
// policies are in force.
//
// Enforcement is at the forward hook, so it covers traffic between pods and
// between pods and the world, but not traffic between a pod and its own host
// (kubelet probes, the host's own services): that stays allowed, as the API
// allows for node-local traffic. Replies of allowed connections are always
// allowed (conntrack state established or related). Only IPv4 is enforced
// for now: IPv6 addresses of pods and IPv6 ipBlocks are ignored.
package netpol
