// Package ledger owns the block ownership log: which node holds which block
// of the pod pool. The log is replicated with Raft (hashicorp/raft) among the
// agents themselves; a pure, deterministic state machine (State.Apply) assigns
// a block only when it is free, so no two nodes can ever hold one block.
//
// The package owns the raft node, its stores under the state directory, and
// its transport: one TCP listener shared by raft and the ledger's own RPCs
// (join, claim, release), authenticated and encrypted with mutual TLS derived
// from the cluster's gossip key.
//
// It must not touch the kernel (routes, links, addresses) and does not speak
// gossip: membership arrives through SetPeers from the mesh, which owns
// memberlist. Every duration it measures is on this host's monotonic clock;
// no decision compares the clocks of two hosts.
package ledger
