// Package enforce runs Kubernetes NetworkPolicy enforcement on one node, in
// its own process (cmd/grapevine-policy) beside the agent, as a second
// container of the DaemonSet. It owns:
//
//   - client-go's shared informers of Pods, Namespaces and NetworkPolicies
//     (REST clients that know only those kinds), and what they cache;
//   - table inet grapevine-policy, written only through package netpol
//     (netpol.Compile, then netpol.Kernel in one transaction per change);
//   - the admission socket of package netpol/admit, on which the CNI plugin
//     tells it each new pod and waits until the pod's policies are in force,
//     and on which the agent and `grapevine doctor` ask for its status.
//
// It must not touch routes, links, the agent's nftables table, the ledger
// or gossip, and it never writes node.json: it reads it, as the plugin
// does, for the node's blocks, whose addresses no known pod holds are
// denied. The agent names the admission socket in node.json when it is
// started with --policy-socket; this package never talks to the agent.
//
// The agent does not import this package: client-go's package init and
// text would cost every agent, Kubernetes or not, about 10 MB of memory.
package enforce
