package ipam

import (
	"fmt"
	"net/netip"
	"testing"
)

// BenchmarkAllocateRelease is one pod's ADD and DEL in the store beside 50
// other reservations, as on a busy node:
//
//	go test ./ipam -run '^$' -bench AllocateRelease -benchtime 300x
func BenchmarkAllocateRelease(b *testing.B) {
	cfg := Config{Network: "grapevine", RunDir: b.TempDir(), DataDir: b.TempDir()}
	a, err := Open(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	block := netip.MustParsePrefix("10.244.1.0/24")
	for i := range 50 {
		if _, _, err := a.Allocate(block, fmt.Sprintf("other-%d", i), "eth0"); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		if _, _, err := a.Allocate(block, "pod", "eth0"); err != nil {
			b.Fatal(err)
		}
		if err := a.Release("pod", "eth0"); err != nil {
			b.Fatal(err)
		}
	}
}
