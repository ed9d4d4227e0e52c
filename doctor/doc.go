// Package doctor tells an operator what is wrong with Grapevine on one host
// and on its paths to the peers, and what to do about it. It owns the
// checks: it reads the agent's status (the status socket's JSON, a
// status.Report), the host's kernel state (sysctls, routes, neighbour
// entries, nftables and iptables-legacy), whether each peer's gossip and
// ledger ports accept a TCP connection, and whether the path pods use to
// each peer carries a don't-fragment echo request of the pod MTU, and turns
// what it saw into Findings, each naming its check, what was seen, the
// likely cause and the fix.
//
// doctor only reads: it never changes the kernel, the agent or a file, and
// repairs nothing (what the agent repairs by itself is the agent's
// business); towards the peers it only connects and pings. What it sees
// comes through the small Host and Network interfaces into an Observations
// value; Diagnose, which turns observations into findings, is pure.
package doctor
