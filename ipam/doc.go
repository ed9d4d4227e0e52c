// Package ipam is grapevine-ipam: it hands out pod addresses from the block
// this node holds, persists them on disk under a file lock, and frees them.
//
// ipam learns the node's block only from the state file the agent writes
// (package node/nodestate); it never talks to the agent or the mesh.
package ipam
