// Package node owns the kernel state of one host: the peer routes
// (<block> via <peer host IP> dev <iface> proto grapevine), the blackhole for
// the node's own block, IP forwarding, outgoing masquerade for the pool, and
// the files the CNI plugin reads (node.json and the conflist).
//
// node never speaks gossip. It is handed a Desired state, computes the
// difference to what the kernel holds with a pure function, and applies it
// through the small Kernel interface, so everything above the netlink calls
// can be tested with a fake kernel and no privileges.
package node
