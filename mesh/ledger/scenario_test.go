package ledger

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func TestClaimFromNonvoterIsForwarded(t *testing.T) {
	c, nodes := startCluster(t, nil, "n1", "n2", "n3", "n4")
	var nonvoter *tnode
	waitFor(t, waitLong, "a non-voter", func() bool {
		for _, n := range nodes {
			if n.l.Info().Role == "nonvoter" {
				nonvoter = n
				return true
			}
		}
		return false
	})
	hint := pfx("10.244.2.0/24")
	if b := c.claim(nonvoter, hint); b != hint {
		t.Fatalf("non-voter got %s, want its free hint %s", b, hint)
	}
	st := c.converged()
	if o := st.Blocks[hint]; o.ID != nonvoter.id || o.Name != nonvoter.name || o.HostIP != nonvoter.hostIP {
		t.Fatalf("ledger says %s is %+v", hint, o)
	}
	// claiming again is idempotent
	if b := c.claim(nonvoter, pfx("10.244.3.0/24")); b != hint {
		t.Fatalf("second claim gave %s, want %s", b, hint)
	}
}

func TestConcurrentClaimsNeverAssignOneBlockTwice(t *testing.T) {
	c, nodes := startCluster(t, func(cfg *Config) {
		cfg.Pool, cfg.BlockBits = pfx("10.244.0.0/21"), 24 // 8 blocks for 5 nodes
	}, "n1", "n2", "n3", "n4", "n5")
	var wg sync.WaitGroup
	got := make([][]netip.Prefix, len(nodes))
	errs := make(chan error, len(nodes)*3)
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 3 { // every node claims the same hint, three times
				ctx, cancel := context.WithTimeout(context.Background(), waitLong)
				g, err := n.l.Claim(ctx, pfx("10.244.0.0/24"), n.hostIP)
				b := g.Block
				cancel()
				if err != nil {
					errs <- fmt.Errorf("%s: %w", n.name, err)
					return
				}
				got[i] = append(got[i], b)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	owner := map[netip.Prefix]string{}
	for i, bs := range got {
		for _, b := range bs[1:] {
			if b != bs[0] {
				t.Fatalf("%s got %v: its block changed", nodes[i].name, bs)
			}
		}
		if prev, dup := owner[bs[0]]; dup {
			t.Fatalf("block %s given to %s and %s", bs[0], prev, nodes[i].name)
		}
		owner[bs[0]] = nodes[i].name
	}
	st := c.converged()
	if len(st.Blocks) != len(nodes) {
		t.Fatalf("ledger holds %d blocks, want %d", len(st.Blocks), len(nodes))
	}
	checkInvariants(t, &st)
	for b, o := range st.Blocks {
		if owner[b] != o.Name {
			t.Fatalf("ledger says %s is %s's, claim said %s", b, o.Name, owner[b])
		}
	}
}

// A release is refused while the node is alive, and then until its lease
// has ended by the leader's clock (LeaseWait says how long), never sooner.
func TestReleaseRefusedWhileAliveAndLeased(t *testing.T) {
	const lease = 2 * time.Second
	c, nodes := startCluster(t, func(cfg *Config) { cfg.Lease = lease }, "n1", "n2", "n3", "n4")
	victim := nodes[3]
	claimed := time.Now()
	block := c.claim(victim, netip.Prefix{})
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := nodes[1].l.Release(ctx, victim.name); !errors.Is(err, ErrNodeAlive) {
		t.Fatalf("release of a live node: %v, want ErrNodeAlive", err)
	}
	if err := nodes[1].l.Release(ctx, "nobody"); !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("release of an unknown node: %v, want ErrUnknownNode", err)
	}
	c.kill(victim)
	var err error
	var leaseRefusals int
	waitFor(t, waitLong, "release of the dead node accepted", func() bool {
		err = nodes[1].l.Release(ctx, victim.name)
		if wait, ok := LeaseWait(err); ok {
			leaseRefusals++
			if wait <= 0 || wait > lease+LeaseMargin(lease) {
				t.Fatalf("lease refusal says wait %s, want (0, %s]", wait, lease+LeaseMargin(lease))
			}
		}
		return err == nil
	}, func() string { return fmt.Sprint(err) })
	if freed := time.Since(claimed); freed < lease+LeaseMargin(lease) {
		t.Fatalf("released %s after the claim, before the lease and margin (%s) ended", freed, lease+LeaseMargin(lease))
	}
	if leaseRefusals == 0 {
		t.Error("no release was refused for the lease")
	}
	st := c.converged()
	if _, held := st.Blocks[block]; held {
		t.Fatalf("%s still held after release", block)
	}
}

func TestReclaimOnlyAfterLeadersOwnObservation(t *testing.T) {
	const reclaimAfter = 3 * time.Second
	c, nodes := startCluster(t, func(cfg *Config) { cfg.Lease = reclaimAfter }, "n1", "n2", "n3", "n4")
	owner := nodes[3]
	block := c.claim(owner, netip.Prefix{})
	c.converged()

	c.kill(owner)
	killed := time.Now()
	lead := c.leader()
	// Kill the leader part-way through its count: the next leader must
	// start counting from its own leadership, not inherit the count.
	time.Sleep(reclaimAfter * 6 / 10)
	if st, _ := lead.l.State(); st.Blocks[block].ID != owner.id {
		// the old leader may not reclaim before Lease of its own
		t.Fatalf("reclaimed %s after %s, before Lease %s", block, time.Since(killed), reclaimAfter)
	}
	// Taken before the stop: the leader hands over leadership while it
	// stops, so the new leader starts after this instant.
	leaderKilled := time.Now()
	c.kill(lead)
	var freed time.Time
	waitFor(t, waitLong, "the new leader to reclaim the dead owner's block", func() bool {
		for _, n := range c.running() {
			if st, _ := n.l.State(); st.Founded() {
				if _, held := st.Blocks[block]; !held {
					freed = time.Now()
					return true
				}
			}
		}
		return false
	})
	// The new leader became leader after the old one died; it may reclaim
	// only Lease after that. (Observed times are late, never early.)
	if d := freed.Sub(leaderKilled); d < reclaimAfter {
		t.Fatalf("block reclaimed %s after the old leader died: the new leader did not count for itself (Lease %s)", d, reclaimAfter)
	}
	var reclaims float64
	for _, n := range c.running() {
		reclaims += counterValue(t, n.reg, "grapevine_ledger_reclaims_total", nil)
	}
	if reclaims != 1 {
		t.Fatalf("%v reclaims counted, want 1", reclaims)
	}
}

func TestLeaderKilledNewLeaderTakesOver(t *testing.T) {
	c, nodes := startCluster(t, nil, "n1", "n2", "n3")
	old := c.leader()
	c.kill(old)
	lead := c.leader()
	if lead == old {
		t.Fatal("dead node still leads")
	}
	for _, n := range nodes {
		if n != old {
			if b := c.claim(n, netip.Prefix{}); !b.IsValid() {
				t.Fatalf("%s got no block", n.name)
			}
		}
	}
	c.converged()
}

func TestDeadVoterReplacedWithoutLosingQuorum(t *testing.T) {
	c, nodes := startCluster(t, nil, "n1", "n2", "n3", "n4", "n5")
	lead := c.leader()
	var victim *tnode
	for _, n := range nodes {
		if voterSet(lead)[n.name] && n != lead {
			victim = n
			break
		}
	}
	// Watch the configuration: live voters must always hold a quorum.
	stop := make(chan struct{})
	watchErr := make(chan error, 1)
	go func() {
		defer close(watchErr)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			l := c.leaderOrNil()
			if l == nil {
				continue
			}
			f := l.l.raft.Load().GetConfiguration()
			if f.Error() != nil {
				continue
			}
			voters, live := 0, 0
			for _, s := range f.Configuration().Servers {
				if s.Suffrage == raft.Voter {
					voters++
					if string(s.ID) != victim.id.String() {
						live++
					}
				}
			}
			if live < voters/2+1 {
				watchErr <- fmt.Errorf("configuration with %d voters has %d live: no quorum", voters, live)
				return
			}
		}
	}()
	c.kill(victim)
	waitFor(t, waitLong, "3 live voters without the dead one", func() bool {
		l := c.leader()
		v := voterSet(l)
		return len(v) == 3 && !v[victim.name]
	}, func() string { return fmt.Sprint(c.leader().l.Info().Voters) })
	close(stop)
	if err := <-watchErr; err != nil {
		t.Fatal(err)
	}
	// the ledger still commits
	c.claim(nodes[0], netip.Prefix{})
	// the dead voter comes back: it is a member again, the voter count stays 3
	c.start(victim, false)
	waitFor(t, waitLong, "the returning node back in the ledger with 3 voters", func() bool {
		info := victim.l.Info()
		return (info.Role == "nonvoter" || info.Role == "voter") && len(c.leader().l.Info().Voters) == 3
	}, func() string { return fmt.Sprint(victim.l.Info(), c.leader().l.Info()) })
}

// A voter's host came back under a new ID at the same address while its
// old ID is still a (dead) voter: raft refuses two servers at one address,
// so autopilot must first replace and remove the old voter, then re-add
// the new ID, never stall on the re-add it cannot make yet.
func TestReinstalledVoterAtItsAddressReplacesTheOldID(t *testing.T) {
	c, _ := startCluster(t, nil, "n1", "n2", "n3", "n4")
	lead := c.leader()
	var victim *tnode
	for _, n := range c.running() {
		if voterSet(lead)[n.name] && n != lead {
			victim = n
			break
		}
	}
	st, _ := lead.l.State()
	c.kill(victim)
	fresh := Peer{ID: NewNodeID(), Name: victim.name, Addr: victim.addr, HostIP: victim.hostIP, ClusterID: st.ClusterID, Alive: true}
	c.mu.Lock()
	c.extra = append(c.extra, fresh)
	c.mu.Unlock()
	c.pushGossip()
	waitFor(t, waitLong, "the old ID replaced and the new one a member at its address", func() bool {
		l := c.leaderOrNil()
		if l == nil {
			return false
		}
		return configured(l, fresh.ID) && !configured(l, victim.id) && len(voterSet(l)) == 3
	}, func() string {
		if l := c.leaderOrNil(); l != nil {
			return fmt.Sprint(l.l.raft.Load().GetConfiguration().Configuration().Servers)
		}
		return "no leader"
	})
}

func (c *tcluster) leaderOrNil() *tnode {
	for _, n := range c.running() {
		if n.l.Info().Role == "leader" {
			return n
		}
	}
	return nil
}

func TestRestartWithStateKeepsBlock(t *testing.T) {
	c, nodes := startCluster(t, nil, "n1", "n2", "n3", "n4")
	n := nodes[3]
	block := c.claim(n, netip.Prefix{})
	c.converged()
	c.kill(n)
	// Restarted with its stores: its replica shows its block before any
	// leader contact (from the shutdown snapshot), and the claim returns it.
	c.mu.Lock()
	n.l = nil
	c.mu.Unlock()
	c.start(n, false)
	if st, _ := n.l.State(); st.Blocks[block].ID != n.id {
		t.Fatalf("restarted replica does not show its block %s: %v", block, st.Blocks)
	}
	if b := c.claim(n, netip.Prefix{}); b != block {
		t.Fatalf("after restart got %s, want %s", b, block)
	}
}

func TestRestartWithoutStateGetsNewIDAndBlock(t *testing.T) {
	c, nodes := startCluster(t, func(cfg *Config) { cfg.Lease = time.Hour }, "n1", "n2", "n3", "n4")
	n := nodes[3]
	old := c.claim(n, netip.Prefix{})
	c.kill(n)
	// A reinstalled host: same name and address, empty state dir, so a
	// new random ID. The old owner is dead, so the name is free to use,
	// but the old block stays reserved until reclaim or release.
	fresh := c.add("n4-reinstalled")
	fresh.name, fresh.addr, fresh.hostIP = n.name, n.addr, n.hostIP
	c.mu.Lock()
	n.l = nil // the old incarnation is gone from gossip
	c.nodes = c.nodes[:len(c.nodes)-1]
	for i := range c.nodes {
		if c.nodes[i] == n {
			c.nodes[i] = fresh
		}
	}
	c.mu.Unlock()
	c.start(fresh, false)
	c.join(fresh, nodes[0])
	if fresh.id == n.id {
		t.Fatal("reinstalled node kept its ID")
	}
	b := c.claim(fresh, old) // even asking for its old block
	if b == old {
		t.Fatalf("new identity got the old block %s while it is still assigned", old)
	}
	st := c.converged()
	if st.Blocks[old].ID != n.id || st.Blocks[b].ID != fresh.id {
		t.Fatalf("ledger: %v", st.Blocks)
	}
}

// TestRecoverAfterLosingTwoOfThreeVoters: the survivor recovers a new
// ledger with every block it had, under a new cluster ID; the recovery
// names the voters it drops. The live non-voter of the old ledger is
// foreign to it until the operator rejoins it (its raft state removed, its
// node ID kept): then it gets its own block back.
func TestRecoverAfterLosingTwoOfThreeVoters(t *testing.T) {
	c, nodes := startCluster(t, nil, "n1", "n2", "n3", "n4")
	for _, n := range nodes {
		c.claim(n, netip.Prefix{})
	}
	before := c.converged()
	lead := c.leader()
	var survivor, other *tnode
	var lost []*tnode
	for _, n := range nodes {
		switch {
		case !voterSet(lead)[n.name]:
			other = n
		case survivor == nil:
			survivor = n
		default:
			lost = append(lost, n)
		}
	}
	for _, n := range lost {
		c.kill(n)
	}
	// No quorum: claims fail.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	_, err := survivor.l.Claim(ctx, netip.Prefix{}, survivor.hostIP)
	cancel()
	if !errors.Is(err, ErrNoLeader) {
		t.Fatalf("claim without quorum: %v, want ErrNoLeader", err)
	}
	// The operator stops the survivor, recovers, starts it again.
	c.kill(survivor)
	rec, err := RecoverStores(survivor.stores, survivor.id, survivor.addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	var dropped, nonvoters []string
	for _, s := range rec.Others {
		if s.Voter {
			dropped = append(dropped, s.Name)
		} else {
			nonvoters = append(nonvoters, s.Name)
		}
	}
	slices.Sort(dropped)
	if want := []string{lost[0].name, lost[1].name}; !slices.Equal(dropped, want) || !slices.Equal(nonvoters, []string{other.name}) {
		t.Fatalf("recovery names dropped voters %v and non-voters %v, want %v and [%s]", dropped, nonvoters, want, other.name)
	}
	if rec.ClusterID != before.ClusterID || rec.NewClusterID.IsZero() || rec.NewClusterID == before.ClusterID {
		t.Fatalf("recovered from %s to %s; the ledger was %s: want a new cluster ID", rec.ClusterID, rec.NewClusterID, before.ClusterID)
	}
	c.start(survivor, false)
	waitFor(t, waitLong, "the recovered node to lead", func() bool { return survivor.l.Info().Role == "leader" })
	want := before.Clone()
	want.ClusterID = rec.NewClusterID
	if st, _ := survivor.l.State(); !equalState(st, want) {
		t.Fatalf("recovered state %v (%s), want %v (%s)", st.Blocks, st.ClusterID, want.Blocks, want.ClusterID)
	}
	c.claim(survivor, netip.Prefix{})

	// The live non-voter belongs to the old ledger: refused, not merged.
	ctx, cancel = context.WithTimeout(context.Background(), waitShort)
	defer cancel()
	if err := definite(t, func() error { return other.l.RequestJoin(ctx, ClusterID{}, []netip.AddrPort{survivor.addr}) }); !errors.Is(err, ErrForeignCluster) {
		t.Fatalf("a member of the old ledger asks to join the recovered one: %v, want ErrForeignCluster", err)
	}
	if configured(survivor, other.id) {
		t.Fatalf("the recovered ledger took in %s of the old ledger", other.name)
	}
	// Rejoined by the documented step, it keeps its block.
	c.kill(other)
	other.stores = NewMemStores()
	c.start(other, false)
	c.join(other, survivor)
	st := c.converged(survivor, other)
	if b, o, ok := st.BlockOf(other.id); !ok || before.Blocks[b] != o {
		t.Fatalf("%s rejoined with %s (%v), want its block from before the recovery", other.name, b, ok)
	}
	if b := c.claim(other, netip.Prefix{}); before.Blocks[b].ID != other.id {
		t.Fatalf("%s claims %s after rejoining, not its own block", other.name, b)
	}
}

func TestSnapshotsBoundTheLog(t *testing.T) {
	c := newCluster(t, func(cfg *Config) { cfg.Voters = 1 })
	n := c.add("n1")
	c.tune = func(rc *raft.Config) {
		fastRaft(rc)
		rc.SnapshotThreshold, rc.TrailingLogs, rc.SnapshotInterval = 20, 10, 200*time.Millisecond
	}
	c.start(n, true)
	waitFor(t, waitLong, "founded", func() bool { st, _ := n.l.State(); return st.Founded() })
	r := n.l.raft.Load()
	for i := range 200 {
		res, _, err := n.l.apply(r, Claim{ID: NodeID{byte(i), 7}, Name: fmt.Sprint("x", i), HostIP: ipA})
		if err != nil || (res.Err != nil && !errors.Is(res.Err, ErrPoolExhausted)) {
			t.Fatal(err, res.Err)
		}
		if res.Err == nil {
			n.l.apply(r, Release{Block: res.Block, OwnerID: NodeID{byte(i), 7}})
		}
	}
	waitFor(t, waitLong, "snapshots to truncate the log", func() bool {
		first, _ := n.stores.Log.FirstIndex()
		last, _ := n.stores.Log.LastIndex()
		return first > 1 && last-first < 100
	}, func() string {
		first, _ := n.stores.Log.FirstIndex()
		last, _ := n.stores.Log.LastIndex()
		return fmt.Sprintf("log holds %d..%d", first, last)
	})
}

func TestLongDeadNonvoterRemovedAndReaddedOnReturn(t *testing.T) {
	c, nodes := startCluster(t, func(cfg *Config) { cfg.DeadNonvoterAfter = 2 * time.Second }, "n1", "n2", "n3", "n4")
	lead := c.leader()
	var nv *tnode
	for _, n := range nodes {
		if !voterSet(lead)[n.name] {
			nv = n
		}
	}
	inConfig := func() bool {
		l := c.leader()
		f := l.l.raft.Load().GetConfiguration()
		if f.Error() != nil {
			return false
		}
		for _, s := range f.Configuration().Servers {
			if string(s.ID) == nv.id.String() {
				return true
			}
		}
		return false
	}
	c.kill(nv)
	waitFor(t, waitLong, "the dead non-voter removed", func() bool { return !inConfig() })
	if len(voterSet(c.leader())) != 3 {
		t.Fatal("voters changed by a non-voter's removal")
	}
	// Back with its state: gossip shows it with this ledger's cluster ID,
	// autopilot adds it again without a join request.
	c.start(nv, false)
	waitFor(t, waitLong, "the returning non-voter re-added", inConfig)
	block := c.claim(nodes[0], netip.Prefix{})
	waitFor(t, waitLong, "the returning non-voter to replicate", func() bool {
		st, _ := nv.l.State()
		return st.Blocks[block].ID == nodes[0].id
	})
}

// Two claimants at once in a pool of two blocks, twenty rounds: each gets
// its own block every time (the old protocol conflicted in 19 of 20).
func TestTwoClaimantsTwoBlocksEveryRound(t *testing.T) {
	c, nodes := startCluster(t, func(cfg *Config) { cfg.Pool = pfx("10.244.0.0/23") }, "n1", "n2")
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	for round := range 20 {
		var wg sync.WaitGroup
		blocks := make([]netip.Prefix, 2)
		errs := make([]error, 2)
		names := []string{fmt.Sprint("a", round), fmt.Sprint("b", round)}
		for i, n := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// a fresh claimant per round, through each node in turn
				req := rpcRequest{Op: "claim", Claim: &Claim{ID: NodeID{byte(round), byte(i), 5}, Name: names[i], HostIP: n.hostIP, Hint: pfx("10.244.0.0/24")}}
				resp, err := n.l.toLeader(ctx, req)
				blocks[i], errs[i] = resp.Block, err
			}()
		}
		wg.Wait()
		if errs[0] != nil || errs[1] != nil {
			t.Fatalf("round %d: %v, %v", round, errs[0], errs[1])
		}
		if blocks[0] == blocks[1] {
			t.Fatalf("round %d: both claimants got %s", round, blocks[0])
		}
		// Free both blocks for the next round: straight into the log,
		// as their leases would hold for an hour.
		lead := c.leader()
		for i, b := range blocks {
			res, _, err := lead.l.apply(lead.l.raft.Load(), Release{Block: b, OwnerID: NodeID{byte(round), byte(i), 5}})
			if err != nil || res.Err != nil {
				t.Fatalf("round %d: release %s: %v %v", round, b, err, res.Err)
			}
		}
	}
	if st := c.converged(); len(st.Blocks) != 0 {
		t.Fatalf("blocks left: %v", st.Blocks)
	}
}
