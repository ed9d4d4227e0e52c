package mesh_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/mesh/meshtest"
)

// Issue 19, fault 5: keyless packets and streams at the gossip port are
// counted by the node they reach (and logged at a bounded rate).
func TestKeylessGossipCounted(t *testing.T) {
	c := newCluster(t, meshtest.Options{SecretKey: []byte("0123456789abcdef0123456789abcdef")})
	n, err := c.Start(meshtest.Spec{Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	intruder, err := c.Net.NewTransport(netip.AddrPortFrom(netip.MustParseAddr("10.9.9.9"), meshtest.GossipPort))
	if err != nil {
		t.Fatal(err)
	}
	defer intruder.Shutdown()
	target := memberlist.Address{Addr: n.Addr.String()}
	const packets = 200
	for range packets {
		if _, err := intruder.WriteToAddress([]byte("\x01garbage without the key"), target); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := intruder.DialAddressTimeout(target, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte("\x06garbage push/pull without the key"))
	conn.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var got float64
	if err := poll.Until(ctx, "the keyless packets to be counted", 10*time.Millisecond, func() error {
		if got = counter(t, n.Metrics, "grapevine_mesh_rejected_gossip_total", "decrypt"); got < packets+1-float64(n.Transport.Dropped()) {
			return fmt.Errorf("%v counted", got)
		}
		return nil
	}); err != nil {
		t.Fatalf("%v of %d keyless packets and 1 stream counted (%d dropped by the network)", got, packets, n.Transport.Dropped())
	}
}
