// Package plugin is the grapevine-cni CNI plugin: it wires a pod the way the
// routed L3 design needs (a veth pair; the pod side with a /32 and a default
// route via the link-local gateway 169.254.1.1; the host side with MAC
// ee:ee:ee:ee:ee:ee and proxy ARP; a /32 route and a permanent neighbour entry
// on the host) and implements ADD, DEL, CHECK, GC and STATUS (Funcs). When
// node.json carries an IPv6 block the pod gets the IPv6 twin on the same
// veth: a /128 (nodad), default via fe80::ecee:eeff:feee:eeee (the host
// veth's EUI-64 link-local, which the plugin adds on the host veth itself)
// with a PERMANENT neighbour entry, and on the host a /128 route and a
// PERMANENT entry; every command covers both families. On an IPv6-only
// node (node.json's one block is IPv6) the pod gets that IPv6 wiring alone.
//
// An attachment is (container ID, interface) and only its own requests
// change it. The host veth's name is derived from the pod's identity
// (HostVethName), so a retried ADD and a DEL find it without stored state;
// its link alias names the attachment, and ADD, DEL and GC touch a host veth
// only when its alias names the request's attachment (ADD takes a name
// derived from the container ID when another sandbox holds the pod's). A
// failed ADD undoes only what it made: a repeated ADD of a running
// attachment keeps the address and veth it had.
//
// Addresses come from package ipam in-process when the IPAM type is
// grapevine-ipam, and from any other IPAM plugin through standard
// delegation otherwise.
//
// plugin learns about the node only from the state file the agent writes
// (package node/nodestate). It talks to the policy enforcer
// (grapevine-policy) only when that file names its socket (network policy
// is on): ADD then tells the enforcer the new pod and returns only once the
// pod's policies are in force (package netpol/admit), and fails, undoing
// what it made, if the enforcer does not answer in time. It never talks to
// the mesh.
package plugin
