// Package node owns the kernel state of one host: the peer routes
// (<block> via <peer host IP> dev <iface> proto 74), the blackhole for the
// node's own block, IP forwarding, the outgoing masquerade for the pool
// (nftables table ip grapevine), and the files the CNI plugin reads
// (node.json and the conflist).
//
// node never speaks gossip. It is handed a Desired state, turns it into
// routes and diffs them against the kernel's with pure functions
// (DesiredRoutes, Diff), and applies the difference through the small Kernel
// interface, so everything above the netlink calls runs against FakeKernel
// without privileges. Only routes carrying RouteProtocol are ever replaced
// or deleted; a route of anyone else's is left alone, even where it blocks
// one of ours.
package node
