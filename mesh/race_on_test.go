//go:build race

package mesh_test

// raceEnabled: the race detector slows memberlist about tenfold, so the
// large simulations shrink to stay meaningful within the test timeout.
const raceEnabled = true
