package ledger

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// idleRPCsPerFollower is what an idle leader may send each follower a
// second: heartbeats every 1-2 s (about 0.7 a second) and a commit
// index every 5-10 s, with room to spare.
const idleRPCsPerFollower = 5

func eightBlocks(c *Config) { c.Pool = netip.MustParsePrefix("10.244.0.0/21") }

// TestIdleLedgerTraffic: a settled 5-node ledger on the production raft
// timers sends each follower at most idleRPCsPerFollower RPCs a second,
// counted at the leader's transport over a window in which nothing is
// committed. Timers that fire late on a loaded machine only lower the
// count.
func TestIdleLedgerTraffic(t *testing.T) {
	c := newCluster(t, eightBlocks)
	c.tune = nil // the production timers
	nodes := c.startNodes("n1", "n2", "n3", "n4", "n5")
	for _, n := range nodes {
		c.claim(n, netip.Prefix{})
	}
	c.converged()

	const window = 10 * time.Second
	for attempt := 0; ; attempt++ {
		lead := c.leader()
		r := lead.l.raft.Load()
		before, lastIndex, start := lead.l.rpcsSent.to(), r.LastIndex(), time.Now()
		time.Sleep(window) // the measurement window, not a wait for a condition
		after, elapsed := lead.l.rpcsSent.to(), time.Since(start)
		if r.State() != raft.Leader || r.LastIndex() != lastIndex {
			// Something was committed or leadership moved: not idle.
			if attempt == 2 {
				t.Fatalf("the ledger never stayed idle for %s: index %d -> %d, %s is %s", window, lastIndex, r.LastIndex(), lead.name, r.State())
			}
			continue
		}
		for _, n := range nodes {
			if n == lead {
				continue
			}
			id := raft.ServerID(n.id.String())
			sent := after[id] - before[id]
			rate := float64(sent) / elapsed.Seconds()
			t.Logf("%s -> %s: %d RPCs in %s (%.2f/s)", lead.name, n.name, sent, elapsed.Round(time.Millisecond), rate)
			if sent == 0 {
				t.Errorf("%s sent %s no RPC in %s: no heartbeats, so this measures nothing", lead.name, n.name, elapsed)
			}
			if rate > idleRPCsPerFollower {
				t.Errorf("idle %s sent %s %d RPCs in %s: %.2f a second, want at most %d", lead.name, n.name, sent, elapsed, rate, idleRPCsPerFollower)
			}
		}
		return
	}
}

// TestFollowersLearnCommitsAtOnce: with a CommitTimeout of an hour, a
// follower learns of a commit only because the leader announces it
// (announceCommit): joins and claims from non-voters still complete, and
// every replica converges.
func TestFollowersLearnCommitsAtOnce(t *testing.T) {
	c := newCluster(t, eightBlocks)
	c.tune = func(rc *raft.Config) {
		fastRaft(rc)
		rc.CommitTimeout = time.Hour
	}
	nodes := c.startNodes("n1", "n2", "n3", "n4", "n5")
	blocks := map[netip.Prefix]string{}
	for _, n := range nodes {
		b := c.claim(n, netip.Prefix{})
		if other, ok := blocks[b]; ok {
			t.Fatalf("%s and %s both got %s", other, n.name, b)
		}
		blocks[b] = n.name
	}
	st := c.converged()
	if len(st.Blocks) != len(nodes) {
		t.Fatalf("replicas hold %d blocks, want %d: %v", len(st.Blocks), len(nodes), fmt.Sprint(st.Blocks))
	}
}
