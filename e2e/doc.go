// Package e2e holds grapevine's end-to-end scenarios: each test builds a lab
// of hosts in network namespaces (package e2e/lab), runs the real agent on
// every host and wires pods with the real CNI binaries through libcni, then
// checks what a user would: reachability, the kernel's routes and neighbours,
// and how the cluster behaves under crashes, restarts, partitions, churn and
// a host with the wrong gossip key. The tests need root; without it they skip.
package e2e
