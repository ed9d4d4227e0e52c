// Package ipam is grapevine-ipam: it hands out pod addresses from the block
// this node holds (and, on a dual-stack node, one more from its IPv6
// block; on an IPv6-only node the one block is IPv6), persists them on
// disk under a file lock, and frees them.
//
// Reservations keep containernetworking's host-local on-disk format (one file
// per address, named by the address and holding the container ID and
// interface name), so the format is one operators already know; unlike
// host-local, a reservation is written to a temporary file and linked
// into place, so a kill leaves it whole or absent. The store's directory lock
// serialises concurrent plugin processes; a retried ADD for the same
// container ID and interface gets the address it already holds, and release
// frees only reservations naming the caller's container ID and interface.
// CollectStale frees reservations whose attachment is gone, for the agent to
// call where runtimes never send GC; ReadReservations lists the store for
// the agent without its lock, so the format is read in one place.
//
// The package serves two callers: the standalone grapevine-ipam binary (Funcs,
// for standard CNI IPAM delegation) and grapevine-cni, which calls Allocator
// in-process to spare an exec per pod.
//
// ipam learns the node's block only from the state file the agent writes
// (package node/nodestate); it never talks to the agent or the mesh.
package ipam
