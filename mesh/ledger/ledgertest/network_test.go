package ledgertest

import (
	"context"
	"io"
	"net/netip"
	"testing"
	"time"
)

func TestBlockHeal(t *testing.T) {
	n := NewNetwork()
	a, b := netip.MustParseAddrPort("10.0.0.1:7963"), netip.MustParseAddrPort("10.0.0.2:7963")
	ln, err := n.Host(b).Listen()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := n.Host(b).Listen(); err == nil {
		t.Fatal("two listeners on one address")
	}
	accepted := make(chan netip.AddrPort, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- netip.MustParseAddrPort(c.RemoteAddr().String())
			go io.Copy(c, c) // echo
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := n.Host(a).Dial(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if from := <-accepted; from != a {
		t.Fatalf("listener sees %s, want the virtual source %s", from, a)
	}
	c.Write([]byte("x"))
	buf := make([]byte, 1)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}

	n.Block(a.Addr(), b.Addr())
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err == nil {
		t.Fatal("connection survived the partition")
	}
	if _, err := n.Host(a).Dial(ctx, b); err == nil {
		t.Fatal("dial across a partition")
	}
	if n.Reachable(b.Addr(), a.Addr()) {
		t.Fatal("block is not symmetric")
	}
	n.Heal()
	c2, err := n.Host(a).Dial(ctx, b)
	if err != nil {
		t.Fatalf("dial after heal: %v", err)
	}
	c2.Close()

	n.Isolate(b.Addr())
	if n.Reachable(a.Addr(), b.Addr()) {
		t.Fatal("isolated host reachable")
	}
	n.Heal()
	ln.Close()
	if _, err := n.Host(a).Dial(ctx, b); err == nil {
		t.Fatal("dial to a closed listener")
	}
}
