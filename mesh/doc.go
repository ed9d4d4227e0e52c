// Package mesh owns cluster membership and ties it to block ownership: it
// runs the SWIM gossip (hashicorp/memberlist) for peers, failure detection
// and each node's host address and identity, and runs this node's replica
// of the block ledger (package ledger, Raft among the agents), which alone
// decides which node holds which block of the pod pool.
//
// mesh never touches the kernel. Its output is a View: which block this node
// holds, whether it may hand out addresses from it, and every member's
// state, host IP and the block to route to it. The agent turns a View into
// routes through package node.
//
// Files by concern: config.go (Config), meta.go (the metadata codec),
// delegate.go and members.go (memberlist callbacks, gossip's view handed to
// the ledger), join.go (seeds and reconnecting), found.go (founding, a
// ledger foreign to the cluster), ownership.go (joining the ledger,
// claiming, fencing, the restart rule), state.go (block.json),
// view.go (View), metrics.go.
//
// # Metadata
//
// memberlist knows each node by its persistent random node ID, never by
// its name: two hosts with one name are two members (a name conflict,
// View.NameConflicts), not one displacing the other. Each member
// advertises a versioned value of at most 333 bytes (see Meta): its name,
// its host IP (and IPv6 host address, when it has an IPv6 pool), its node ID (the one it gossips under), the ledger it
// belongs to (cluster ID) and the ledger's port, the pool layout, its
// block, a leaving flag, whether its ledger has state (founding under way)
// and its bootstrap-expect. Every value is validated on receipt
// (DecodeMeta); an invalid one is counted and logged, and the member gets
// no route. Metadata carries no claim: the advertised block only has to
// match the ledger.
//
// The pool is IPv4, or IPv6 in an IPv6-only cluster: then the host IPs
// gossip, the ledger and the routes use are IPv6 (Config.AdvertiseAddr),
// and the metadata is version 4, whose addresses are 16 bytes; an IPv4
// pool's agents write version 3 as before (see metaVersion6).
//
// # Routes follow the ledger
//
// A member is routed a block only when the ledger assigns that block to
// the node ID the member advertises, under the member's name and at the
// host IP it advertises, the member advertises that very block, and
// memberlist sees the member alive or suspect.
// A block therefore appears at most once in a View, and no metadata, hostile
// or confused, can move a route. Members of another ledger (founded
// separately with the same gossip key) are listed as foreign and never
// routed. A member that crashed or left keeps no Block, but its Held block
// (the ledger's assignment, until released or reclaimed) lets the agent
// keep its route while its host still answers; the ledger's leader frees a
// dead owner's block only after the owner's lease has ended (package
// ledger).
//
// # Founding and joining
//
// Founding cannot fork (found.go). A node with Config.Found (no seeds)
// founds a new single-voter ledger unless a member it reached belongs to
// one. With Config.BootstrapExpect N, once N nodes with the same N and no
// ledger state meet, each starts the same ledger with all of them as
// voters. With Config.LedgerRecord (the Kubernetes API), a node without
// ledger state founds only if it created the record, listing itself and
// the members that found through the record and have no ledger as the
// first voters, or if the record lists it; otherwise it joins the
// recorded ledger. Every other node waits, not ready, saying why,
// until it reaches a member of a ledger and is added to it. A node whose
// ledger is not the cluster's (not the recorded one; or it is alone in its
// ledger among members of another, see foreignLedger) hands out no
// addresses until an operator resets its ledger state (ResetLedger).
//
// # Fencing and restarts
//
// A node is Ready (may hand out addresses from its block) only while its
// lease holds on the host clock (package hostclock): the View carries the
// lease's end, which the agent hands to the CNI plugin in node.json, so the
// plugin stops handing out addresses when it ends even if the agent hangs.
// The ownership loop renews the lease every quarter of it by claiming again.
// A node whose block the ledger no longer assigns to it drops it from its
// View (the plugin then refuses new pods), reports itself degraded, and
// claims anew. A restarted node uses its saved block at once only while
// the lease saved with it holds (see restorable); otherwise after the
// ledger confirms it.
//
// # Reports
//
// Mesh.Report asks a member for its report (Config.Report: grapevine
// doctor's findings, which the agent makes; mesh carries them as opaque
// JSON over the ledger's authenticated connection and never reads them).
package mesh
