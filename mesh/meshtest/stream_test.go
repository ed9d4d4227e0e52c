package meshtest

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

func echoServer(t *testing.T, h *StreamHost) net.Listener {
	t.Helper()
	l, err := h.Listen()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go io.Copy(c, c)
		}
	}()
	return l
}

func roundTrip(c net.Conn, msg string) error {
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return errors.New("echo differs: " + string(buf))
	}
	return nil
}

func TestStreamHostPartitionAndClose(t *testing.T) {
	n := NewNetwork()
	a := n.StreamHost(netip.MustParseAddrPort("10.1.0.1:7963"))
	b := n.StreamHost(netip.MustParseAddrPort("10.1.0.2:7963"))
	l := echoServer(t, b)
	defer l.Close()
	if _, err := a.Listen(); err != nil {
		t.Fatal(err)
	}
	if _, err := n.StreamHost(a.Addr()).Listen(); err == nil {
		t.Fatal("two listeners at one address")
	}

	ctx := context.Background()
	c, err := a.Dial(ctx, b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c, "hello"); err != nil {
		t.Fatal(err)
	}
	// Each host counts what it wrote: the dialler its message, the
	// listener its echo.
	if got, want := [2]int64{a.BytesSent(), b.BytesSent()}, [2]int64{5, 5}; got != want {
		t.Errorf("bytes sent by a and b: %v, want %v", got, want)
	}
	// Writes do not wait for the reader, as with a socket buffer.
	big := make([]byte, 1<<20)
	if _, err := c.Write(big); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, big); err != nil {
		t.Fatal(err)
	}

	n.Partition([]netip.Addr{a.Addr().Addr()}, []netip.Addr{b.Addr().Addr()})
	if err := roundTrip(c, "cut"); err == nil {
		t.Fatal("an open connection survived the partition")
	}
	if _, err := a.Dial(ctx, b.Addr()); err == nil {
		t.Fatal("dialled across a partition")
	}
	n.Heal()
	c, err = a.Dial(ctx, b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c, "healed"); err != nil {
		t.Fatal(err)
	}

	// A read deadline ends a wait for data that does not come.
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}
	c.SetReadDeadline(time.Time{})

	b.Close()
	if err := roundTrip(c, "crashed"); err == nil {
		t.Fatal("a connection to a closed host still works")
	}
	if _, err := a.Dial(ctx, b.Addr()); err == nil {
		t.Fatal("dialled a closed host")
	}
	if got := len(n.streamsWhere(func([2]netip.Addr) bool { return true })); got != 0 {
		t.Errorf("%d streams still tracked after every one closed", got)
	}
}
