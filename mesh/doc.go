// Package mesh owns cluster membership and block ownership: it runs the SWIM
// gossip (hashicorp/memberlist), carries each node's block and host address in
// member metadata and in a replicated claim table, and decides by majority vote
// which node holds which block of the pod pool.
//
// mesh never touches the kernel. Its output is a View: which block this node
// holds, whether it is ready, and every member's state, block and host IP. The
// agent turns a View into routes through package node.
package mesh
