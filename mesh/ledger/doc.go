// Package ledger owns the block ownership log: which node holds which block
// of the pod pool. The log is replicated with Raft (hashicorp/raft) among the
// agents themselves; a pure, deterministic state machine (State.Apply) assigns
// a block only when it is free, so no two nodes can ever hold one block.
//
// The package owns the raft node, its stores under the state directory
// (<dir>/raft.db and <dir>/snapshots), and its transport: one TCP listener
// shared by raft and the ledger's own RPCs (join, claim, release; and
// report, which a node answers itself with what Config.Report gives, JSON
// the ledger carries without reading: grapevine doctor --all), protected
// by mutual TLS with the one certificate every holder of the cluster's
// gossip key derives from it, and muxed by a hello that also states each
// side's cluster and node ID, so that two ledgers sharing the key refuse
// each other. The port admits gossip members before strangers (admission.go).
//
// A ledger is founded once (found.go): by one node at start (Config.Found),
// or at run time by Bootstrap, whose founders all start as voters in one
// identical first configuration; the first leader writes the Found entry,
// with a cluster ID recorded beforehand outside the ledger if there is one.
//
// A node whose stored ledger has another pool or block size than it is
// configured with is refused at Open, before raft runs (layout.go).
// Recover makes one node the only voter of a new ledger, under a new
// cluster ID, for a ledger that lost a majority of its voters for good.
//
// Up to Config.Voters agents vote; the others are non-voters with a full
// local copy, so reads are local. The leader alone runs autopilot (adds,
// promotes, replaces and removes members from gossip's view, never below a
// quorum) and moves blocks. It does so under the lease rule (lease.go): a
// committed claim grants its node a lease of Config.Lease from when the
// node sent it; the leader reclaims a block whose owner gossip shows not
// alive, and releases one (an operator's or a deleted Node's request), only
// once that lease plus LeaseMargin has passed on its own monotonic clock
// since its last grant, or since it took office. A Claim returns once this
// node's replica has applied the entry that granted it.
//
// It must not touch the kernel (routes, links, addresses) and does not speak
// gossip: membership arrives through SetPeers from the mesh, which owns
// memberlist.
package ledger
