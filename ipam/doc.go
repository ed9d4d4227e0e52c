// Package ipam is grapevine-ipam: it hands out pod addresses from the block
// this node holds, persists them on disk under a file lock, and frees them.
//
// Reservations live in containernetworking's host-local disk store (one file
// per address, named by the address and holding the container ID and
// interface name), so the on-disk format is one operators already know. The
// store's directory lock serialises concurrent plugin processes; a retried ADD
// for the same container ID and interface gets the address it already holds.
//
// The package serves two callers: the standalone grapevine-ipam binary (Funcs,
// for standard CNI IPAM delegation) and grapevine-cni, which calls Allocator
// in-process to spare an exec per pod.
//
// ipam learns the node's block only from the state file the agent writes
// (package node/nodestate); it never talks to the agent or the mesh.
package ipam
