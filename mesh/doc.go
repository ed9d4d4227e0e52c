// Package mesh owns cluster membership and block ownership: it runs the SWIM
// gossip (hashicorp/memberlist), carries each node's block and host address in
// member metadata and in a replicated claim table, and decides by majority vote
// which node holds which block of the pod pool.
//
// mesh never touches the kernel. Its output is a View: which block this node
// holds, whether it is ready, and every member's state, block and host IP. The
// agent turns a View into routes through package node.
//
// # Metadata
//
// Each member advertises a 32-byte, versioned value (see Meta): its host IP,
// the pool layout it runs with, and its claim (block, claim time, generation).
// A live member's metadata is authoritative for its current claim. Every value
// is validated on receipt (DecodeMeta); an invalid one is counted and logged,
// and the member gets no route and no vote.
//
// # Claim table
//
// Every node keeps one Record per node name, including tombstones of dead and
// departed nodes, so their blocks stay reserved for ReclaimAfter even after
// memberlist forgot them. Records merge by a total order (generation first),
// so any two nodes that saw the same records hold the same table. The table
// travels whole in memberlist's push/pull and record by record in broadcasts;
// a new claim is also sent straight to every live member, a restarted node
// exchanges full state with its live peers, and every node gossips its own
// record again every 10 s so that one lost message cannot hide a block until
// the next push/pull.
//
// # Claiming a block
//
// A node without a block picks a free one (rendezvous hashing spreads
// simultaneous claimants) and asks its electorate to vote: every live member
// plus the owners of unreleased claims that are alive or died less than
// ReclaimAfter ago. A voter grants, and promises the block to the claimant
// for a few seconds, only if the block is free in its table, it promised the
// block to nobody else, and the claimant's electorate includes every member
// the voter counts (otherwise it names the missing ones and the claimant asks
// again with them). The claim needs a majority of the electorate and no
// refusal among those who answered; it is saved to <StateDir>/block.json
// before it is advertised. Counting recently dead owners keeps the minority
// side of a partition from claiming; a restarted node takes its saved block
// back without a vote unless the table says it was released or reclaimed.
//
// Should two live members still advertise one block (a cloned VM), every node
// picks the same winner: the older claim, then the smaller name. The loser
// withdraws, claims a new block and reports itself degraded.
package mesh
