// Package bench measures Grapevine beside its peers and says whether each
// figure meets its target: per-pod CNI setup against the reference ptp and
// host-local plugins, convergence and resource use of the real agent in a
// lab of network namespaces, meshes of 64 to 1,000 nodes simulated in one
// process with their timers dilated, route programming, and the pod data
// path against the bare host path.
//
// Every figure in a Report is measured by the run that produces it; the
// only constants are targets and the published anchors of other systems,
// which are labelled as such. Where both sides are measured, samples of the
// two alternate so machine drift falls on both alike. Everything is created
// inside network namespaces named "gvb" (or the lab's "gvl") plus a random
// run id, and removed again, also when the context is cancelled.
package bench
