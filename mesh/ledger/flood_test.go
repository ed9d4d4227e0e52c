package ledger

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/mesh/ledger/ledgertest"
)

// flood holds idle connections against a ledger port, as a host without
// the key can: TCP only, never a TLS byte, each re-opened soon after the
// listener drops it, until the test ends.
type flood struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startFlood(t *testing.T, network *ledgertest.Network, target netip.AddrPort, sources []netip.Addr, perSource int) *flood {
	ctx, cancel := context.WithCancel(context.Background())
	f := &flood{cancel: cancel}
	for i, src := range sources {
		host := network.Host(netip.AddrPortFrom(src, uint16(40000+i)))
		for range perSource {
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				for ctx.Err() == nil {
					if c, err := host.Dial(ctx, target); err == nil {
						stop := context.AfterFunc(ctx, func() { c.Close() })
						c.Read(make([]byte, 1)) // until the listener drops it
						stop()
						c.Close()
					}
					select {
					case <-ctx.Done():
					case <-time.After(100 * time.Millisecond):
					}
				}
			}()
		}
	}
	t.Cleanup(f.stop)
	return f
}

func (f *flood) stop() {
	f.cancel()
	f.wg.Wait()
}

// lockedBuffer collects a logger's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func addrs(prefix string, n int) []netip.Addr {
	a := netip.MustParsePrefix(prefix).Addr()
	var out []netip.Addr
	for range n {
		a = a.Next()
		out = append(out, a)
	}
	return out
}

// Issue 19, fault 4: idle connections without the key, from one host or
// many, locked members out of the ledger port. Now a stranger's share is
// bounded per source and members have their own slots: a member's join
// and claim each succeed at their first attempt while hundreds of idle
// connections are held open, and the refusals are counted.
func TestLedgerPortAdmitsMembersUnderFlood(t *testing.T) {
	var logged lockedBuffer
	c := newCluster(t, nil)
	lead := c.add("n1")
	lead.mod = func(cfg *Config) { cfg.Logger = slog.New(slog.NewTextHandler(&logged, nil)) }
	c.start(lead, true)
	waitFor(t, waitLong, "the founder to write the Found entry", func() bool { st, _ := lead.l.State(); return st.Founded() })
	floodStart := time.Now()
	rejected := func(reason string) float64 {
		return counterValue(t, lead.reg, "grapevine_ledger_rpc_rejected_total", map[string]string{"reason": reason})
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()

	// One host holding 200 connections takes only its own share: a host
	// gossip does not know (a node about to join) still gets through.
	startFlood(t, c.net, lead.addr, addrs("10.0.8.0/24", 1), 200)
	waitFor(t, waitLong, "the one-source flood refused by source", func() bool { return rejected("handshake-source-limit") > 0 })
	stranger := &dialer{net: c.net.Host(netip.MustParseAddrPort("10.0.7.1:7963")), tls: mustClientTLS(t, testKey),
		self: func() hello { return hello{version: helloVersion, node: NewNodeID()} }, reject: func(string) {}}
	conn, err := stranger.dial(ctx, lead.addr, muxRPC)
	if err != nil {
		t.Fatalf("a stranger beside a one-source flood: %v", err)
	}
	conn.Close()

	// 300 more from 100 hosts fill every slot strangers may hold.
	startFlood(t, c.net, lead.addr, addrs("10.0.9.0/24", 100), 3)
	waitFor(t, waitLong, "the many-source flood refused", func() bool { return rejected("handshake-busy") > 0 })

	member := c.add("n2")
	c.start(member, false) // and gossip knows it
	if err := member.l.RequestJoin(ctx, ClusterID{}, []netip.AddrPort{lead.addr}); err != nil {
		t.Fatalf("a member's join under the flood: %v", err)
	}
	waitFor(t, waitLong, "the member's replica to hold the Found entry", func() bool { st, _ := member.l.State(); return st.Founded() })
	resp, err := member.l.call(ctx, lead.addr, rpcRequest{Op: "claim", Claim: &Claim{ID: member.id, Name: member.name, HostIP: member.hostIP}})
	if err != nil {
		t.Fatalf("a member's claim under the flood: %v", err)
	}
	waitFor(t, waitLong, "the member's block in its replica", func() bool {
		st, _ := member.l.State()
		return st.Blocks[resp.Block].ID == member.id
	})
	busy := rejected("handshake-busy")
	waitFor(t, waitLong, "more refusals: the flood still held", func() bool { return rejected("handshake-busy") > busy })
	if got := rejected("tls"); got != 0 {
		t.Fatalf("%v TLS failures: idle connections must time out, not fail the handshake", got)
	}
	waitFor(t, waitLong, "idle connections timed out", func() bool { return rejected("handshake-timeout") > 0 })

	// Thousands of refusals, a few log lines: at most refusalLogBurst per
	// refusalLogEvery for each of the two classes.
	windows := 1 + int(time.Since(floodStart)/refusalLogEvery)
	if n := strings.Count(logged.String(), "ledger connection refused"); n == 0 || n > 2*refusalLogBurst*windows {
		t.Fatalf("%d refusal lines logged over %d windows of %s", n, windows, refusalLogEvery)
	}
}
