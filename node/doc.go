// Package node owns the kernel state of one host: the peer routes, direct
// (<block> via <peer host IP> dev <iface> proto 74) or, for a peer whose
// host IP is not on a network of the interface, over VXLAN (<block> via
// <peer VTEP> dev gv.vxlan onlink proto 74, with the device gv.vxlan and its
// neighbour and FDB entries), and the same for the peers' IPv6 blocks on a
// dual-stack node, direct via their IPv6 host addresses or over the same
// VXLAN device on the IPv4 underlay (see PeerPaths6); the
// blackhole for the node's own block, the
// unreachable route for the pool (and, on a dual-stack node, the same for
// its IPv6 block and pool, and IPv6 forwarding), IP forwarding, the
// outgoing masquerade for the pool (nftables table ip grapevine, and table
// ip6 grapevine for the IPv6 pool), the
// pool's two accept rules in iptables' filter FORWARD chain where that
// chain drops by policy (see PlanForwardAccept; only rules with its own
// comment are touched), the files the CNI plugin
// reads (node.json and the conflist), and the upkeep of the pods' host sides
// the plugin wired (each pod's /32 and /128 routes, PERMANENT neighbour entries and host
// veth settings), which it puts back when they are deleted or changed but
// never creates for a pod or deletes (see PodKernel). On an IPv6-only node
// (Desired.Pool is IPv6) the pool, the blocks and the host IPs are IPv6,
// routed as IPv4 ones are, directly or over VXLAN on the IPv6 underlay
// (VTEPMAC6), with IPv6 forwarding and masquerade alone.
//
// node never speaks gossip. It is handed a Desired state, chooses each
// peer's path (ChoosePath), turns the state into routes, a VXLAN device and
// its entries, diffs them against the kernel's with pure functions
// (DesiredRoutes, Diff, PlanTunnel, DiffTunnelEntries), and applies the
// difference through the small Kernel interface, so everything above the
// netlink calls runs against FakeKernel without privileges. Only routes
// carrying RouteProtocol and the device named TunnelName (when it is a VXLAN
// device) with what is on it are ever replaced or deleted; a route or device
// of anyone else's is left alone, even where it blocks one of ours. A pod's
// host side is known from the IPAM store's reservations, which it is handed
// as package ipam reads them (PodSpec), and the host veths' aliases, paired
// by DesiredPodHosts and compared with the kernel by PlanPodHosts, both
// pure. The alias format and the host veth's settings are the plugin's and
// node's alike (package internal/hostveth); node never writes the IPAM store.
package node
