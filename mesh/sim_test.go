package mesh_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/ledger"
	"github.com/grapevine-net/grapevine/mesh/meshtest"
)

// simEnv reads a positive integer from the environment (make soak sets
// them), or returns def.
func simEnv(t *testing.T, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return n
}

// TestFaultSimulation drives clusters through random faults: partitions
// (whole, or of gossip alone with the ledger port open), heals, crashes
// (kill -9: no snapshot on the way down), graceful stops, restarts with
// and without state, hosts suspended (their host clock jumps ahead), a
// second agent under a live node's name, a founder or voter losing its
// disk while the other voters keep the majority, `grapevine ledger
// recover` on a voter merely cut off alone (its probes cannot see past the
// partition), an agent started with another --pool, and joins. After
// every step, and while it settles, the invariant is what hosts do
// (sim.check): no two hosts may hand out addresses from one block while
// their leases overlap in time, counting the leases that stopped agents
// left in node.json, no host routes a block twice, a recovered ledger
// never merges with the one it was recovered from, and an agent of another
// pool never claims nor is routed a block of the cluster's pool; once the
// faults stop, the cluster must converge. GRAPEVINE_SIM_SEEDS and
// GRAPEVINE_SIM_STEPS set the size (make soak runs a long one);
// GRAPEVINE_SIM_SEED replays one seed; GRAPEVINE_SIM_LOG=1 logs every
// seed's steps, not only a failed one's.
func TestFaultSimulation(t *testing.T) {
	seeds := simEnv(t, "GRAPEVINE_SIM_SEEDS", 3)
	steps := simEnv(t, "GRAPEVINE_SIM_STEPS", 10)
	first := 0
	if s := os.Getenv("GRAPEVINE_SIM_SEED"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("GRAPEVINE_SIM_SEED=%q: %v", s, err)
		}
		first, seeds = n, 1
	}
	if testing.Short() {
		seeds = min(seeds, 1)
	}
	for seed := first; seed < first+seeds; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { simulate(t, uint64(seed), steps) })
	}
}

// simNode is what the simulation remembers of a node across restarts.
type simNode struct {
	name, key string
	addr      netip.Addr
	stateDir  string
	// id is the node ID its state directory holds, as its view last
	// showed it (zero: not seen yet).
	id      ledger.NodeID
	pool    netip.Prefix // zero: the cluster's
	clock   *meshtest.Clock
	running bool
	// outsider says why the node can never converge with the cluster (""
	// for a member): outsiders take no part in the faults on members, are
	// no seeds, and are retired once the faults stop.
	outsider string
	// recovered is the ledger `grapevine ledger recover` made of this
	// node's state (zero: none); while set, the node must hold no other.
	recovered ledger.ClusterID
	// joinedRecovered: this node was seen holding the recovered ledger
	// without being the node it was recovered on (a host that joined it
	// while both ledgers shared the network).
	joinedRecovered bool
}

// Why a node is an outsider.
const (
	impostor      = "a second agent under a live node's name"
	otherPool     = "an agent of another pool"
	recoveredAway = "the only voter of a ledger recovered beside the cluster's"
)

type sim struct {
	t      *testing.T
	leases *meshtest.Leases
	// recoveredLeases are the leases of hosts on a ledger recovered beside
	// the cluster's (op 9): a ledger of their own, recoveredID.
	recoveredLeases *meshtest.Leases
	recoveredID     ledger.ClusterID
	rng             *rand.Rand
	c               *meshtest.Cluster
	pool            netip.Prefix // the cluster's
	nodes           []*simNode
	next            int // next host address index
	log             []string
	// cut is set while a partition may be in effect (until a heal).
	cut bool
	// wipes and recoveries count the founders or voters that lost their
	// disk and the ledgers recovered, each bounded per run.
	wipes, recoveries int
}

func simulate(t *testing.T, seed uint64, steps int) {
	const reclaimAfter = 3 * time.Second
	s := &sim{t: t, rng: rand.New(rand.NewPCG(seed, 0x6772617065)), leases: meshtest.NewLeases(), recoveredLeases: meshtest.NewLeases()}
	// Eight blocks for up to six running nodes plus restarted identities:
	// reuse of reclaimed blocks happens.
	s.pool = netip.MustParsePrefix("10.244.0.0/20")
	s.c = meshtest.NewCluster(t.TempDir(), meshtest.Options{
		Pool:   s.pool,
		Lease:  reclaimAfter,
		Logger: testLogger(t),
	})
	defer func() {
		if t.Failed() || os.Getenv("GRAPEVINE_SIM_LOG") != "" {
			t.Logf("seed %d steps:\n%s", seed, joinLines(s.log))
		}
		if err := s.c.Close(); err != nil {
			t.Errorf("stop cluster: %v", err)
		}
	}()

	founder := s.add("n0")
	s.start(founder, nil)
	for i := 1; i < 4; i++ {
		s.start(s.add(fmt.Sprintf("n%d", i)), s.seeds())
	}
	s.settle(3 * time.Second)

	for step := range steps {
		s.step(step)
		s.settle(time.Duration(200+s.rng.IntN(1200)) * time.Millisecond)
	}

	// Faults stop: heal, retire the outsiders (impostors and agents of
	// another pool never become ready), reset the nodes on a recovered
	// ledger, bring stopped hosts back (with their state: a majority of
	// voters gone for good is the operator's `grapevine ledger recover`),
	// and the cluster must converge.
	s.record("heal, retire outsiders, reset the nodes on a recovered ledger, restart stopped nodes")
	s.c.Net.Heal()
	s.cut = false
	if s.count(func(n *simNode) bool { return n.outsider == recoveredAway && n.running }) > 0 {
		// Both ledgers meet on one network before the split ends.
		s.settle(2 * time.Second)
	}
	for _, n := range s.nodes {
		switch {
		case n.outsider == recoveredAway:
			// A node recovered beside a ledger that kept its majority
			// holds a foreign ledger by design and never converges with
			// the cluster. The operator ends the split as
			// docs/operations.md says: the side given up (this node) is
			// stopped, its ledger state reset, and it rejoins the
			// cluster's ledger under its node ID.
			if n.running {
				s.stop(n, true)
			}
			if err := s.c.ResetLedger(n.stateDir); err != nil {
				t.Fatalf("reset the recovered node %s: %v", n.key, err)
			}
			n.outsider, n.recovered = "", ledger.ClusterID{}
		case n.joinedRecovered:
			// A host that joined the recovered ledger while both shared
			// the network holds it too; its agent says to reset it, and
			// the operator does.
			if n.running {
				s.stop(n, true)
			}
			if err := s.c.ResetLedger(n.stateDir); err != nil {
				t.Fatalf("reset %s, a member of the recovered ledger: %v", n.key, err)
			}
			n.joinedRecovered = false
		case n.outsider != "" && n.running:
			s.stop(n, true)
		}
	}
	for _, n := range s.nodes {
		if stopped(n) {
			s.start(n, s.seeds())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := poll.Until(ctx, "convergence once the faults stopped", 20*time.Millisecond, func() error {
		views := s.c.Views()
		if err := s.check(views); err != nil {
			t.Fatalf("seed %d after the faults: %v", seed, err)
		}
		return meshtest.Converged(views)
	}); err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
}

func joinLines(lines []string) string {
	out := ""
	for _, l := range lines {
		out += "  " + l + "\n"
	}
	return out
}

func (s *sim) record(format string, args ...any) {
	s.log = append(s.log, fmt.Sprintf(format, args...))
}

// add creates a node identity whose host clock is offset by hours either
// way: hosts booted at different times.
func (s *sim) add(name string) *simNode {
	n := &simNode{
		name:     name,
		key:      name,
		addr:     meshtest.HostAddr(s.next),
		stateDir: filepath.Join(s.t.TempDir(), fmt.Sprintf("%s-%d", name, s.next)),
		clock:    meshtest.NewClock(time.Duration(s.rng.IntN(48)-24) * time.Hour),
	}
	s.next++
	s.nodes = append(s.nodes, n)
	return n
}

func (s *sim) start(n *simNode, join []string) {
	s.t.Helper()
	_, err := s.c.Start(meshtest.Spec{Name: n.name, Key: n.key, Addr: n.addr, StateDir: n.stateDir, Pool: n.pool, Join: join, Clock: n.clock.Host})
	if err != nil {
		s.t.Fatal(err)
	}
	n.running = true
}

func (s *sim) stop(n *simNode, graceful bool) {
	s.t.Helper()
	var err error
	if graceful {
		err = s.c.Stop(n.key)
	} else {
		err = s.c.Kill(n.key)
	}
	if err != nil {
		s.t.Fatal(err)
	}
	n.running = false
}

// seeds are the gossip addresses of two running nodes (any side).
func (s *sim) seeds() []string {
	var out []string
	for _, i := range s.rng.Perm(len(s.nodes)) {
		if n := s.nodes[i]; running(n) && len(out) < 2 {
			out = append(out, netip.AddrPortFrom(n.addr, meshtest.GossipPort).String())
		}
	}
	return out
}

func (s *sim) pick(match func(*simNode) bool) *simNode {
	var c []*simNode
	for _, n := range s.nodes {
		if match(n) {
			c = append(c, n)
		}
	}
	if len(c) == 0 {
		return nil
	}
	return c[s.rng.IntN(len(c))]
}

func (s *sim) count(match func(*simNode) bool) int {
	k := 0
	for _, n := range s.nodes {
		if match(n) {
			k++
		}
	}
	return k
}

func running(n *simNode) bool { return n.running && n.outsider == "" }
func stopped(n *simNode) bool { return !n.running && n.outsider == "" }

func isVoter(v mesh.View) bool { return v.Ledger.Role == "leader" || v.Ledger.Role == "voter" }

// step applies one random fault.
func (s *sim) step(i int) {
	switch op := s.rng.IntN(12); {
	case op == 0: // partition the running hosts in two
		var all []netip.Addr
		for _, n := range s.nodes {
			if n.running {
				all = append(all, n.addr)
			}
		}
		s.rng.Shuffle(len(all), func(a, b int) { all[a], all[b] = all[b], all[a] })
		cut := 1 + s.rng.IntN(max(1, len(all)-1))
		s.cut = true
		if s.rng.IntN(3) == 0 { // a firewall that drops gossip alone
			s.record("%d: gossip-only partition %v | %v", i, all[:cut], all[cut:])
			s.c.Net.PartitionGossip(all[:cut], all[cut:])
			return
		}
		s.record("%d: partition %v | %v", i, all[:cut], all[cut:])
		s.c.Net.Partition(all[:cut], all[cut:])
	case op == 1:
		s.record("%d: heal", i)
		s.c.Net.Heal()
		s.cut = false
	case op == 2 || op == 3: // crash or stop
		if s.count(running) <= 2 {
			return
		}
		n := s.pick(running)
		graceful := op == 3
		s.record("%d: stop %s (graceful=%v)", i, n.key, graceful)
		s.stop(n, graceful)
	case op == 4: // restart with state
		if n := s.pick(stopped); n != nil {
			s.record("%d: restart %s with state", i, n.key)
			s.start(n, s.seeds())
		}
	case op == 5: // restart without state: a reinstalled host, same name
		// Only a non-voter: reinstalling voters one after another loses
		// the ledger's majority for good, which takes an operator. A
		// voter whose name no replica can tell any more (gone from gossip
		// and owning no block) is listed by its node ID.
		voters := s.voters()
		if len(voters) == 0 {
			return // no running replica can tell who votes
		}
		listedVoter := func(n *simNode) bool {
			return slices.Contains(voters, n.name) || (!n.id.IsZero() && slices.Contains(voters, n.id.String()))
		}
		if n := s.pick(func(n *simNode) bool { return stopped(n) && !listedVoter(n) }); n != nil {
			n.stateDir, n.id = filepath.Join(s.t.TempDir(), n.key+"-fresh"), ledger.NodeID{}
			if s.rng.IntN(2) == 0 {
				n.addr = meshtest.HostAddr(s.next)
				s.next++
			}
			s.record("%d: restart %s without state at %s", i, n.key, n.addr)
			s.start(n, s.seeds())
		}
	case op == 6: // a running host suspended and resumed: its host clock jumps ahead
		if n := s.pick(running); n != nil {
			d := time.Duration(1+s.rng.IntN(120)) * time.Minute
			s.record("%d: %s host clock +%s", i, n.key, d)
			n.clock.Advance(d)
		}
	case op == 7: // a second agent under a live node's name
		orig := s.pick(running)
		if orig == nil || s.count(func(n *simNode) bool { return n.outsider == impostor && n.running }) > 0 {
			return
		}
		imp := s.add(orig.name)
		imp.key, imp.outsider = orig.name+"-impostor", impostor
		s.record("%d: impostor of %s at %s", i, orig.name, imp.addr)
		s.start(imp, s.seeds())
	case op == 8: // a founder or a voter loses its disk: the host comes back empty, same name
		// Guarded: a voter gone for good counts against the majority until
		// the ledger replaces it, and losing the majority for good takes
		// an operator.
		if s.wipes >= 2 {
			return
		}
		views := s.c.Views()
		n := s.pick(func(n *simNode) bool {
			return running(n) && (n.name == "n0" || isVoter(views[n.key])) && s.quorumWithout(views, n)
		})
		if n == nil {
			return
		}
		s.wipes++
		s.stop(n, false)
		n.stateDir, n.id = filepath.Join(s.t.TempDir(), n.key+"-wiped"), ledger.NodeID{}
		if s.rng.IntN(2) == 0 {
			n.addr = meshtest.HostAddr(s.next)
			s.next++
		}
		s.record("%d: %s (%s) lost its disk, restarted empty at %s", i, n.key, views[n.key].Ledger.Role, n.addr)
		s.start(n, s.seeds())
	case op == 9: // `grapevine ledger recover` on a voter merely cut off alone
		// Its probes cannot reach the other voters, so the command goes
		// ahead beside a ledger that keeps its majority: the two ledgers
		// must stay apart, and within each no two hosts may share a
		// block. Across them they may, as docs/operations.md warns: the
		// operator's recover says the other voters are gone for good, the
		// cluster's leader reclaims the block of the node it no longer
		// sees once the lease it granted ends, and the recovered node
		// renews that block in its own ledger. So sim.check holds the
		// recovered node's leases and views against its own ledger's.
		if s.recoveries >= 1 {
			return
		}
		views := s.c.Views()
		x := s.pick(func(n *simNode) bool { return running(n) && isVoter(views[n.key]) && s.quorumWithout(views, n) })
		if x == nil {
			return
		}
		s.recoveries++
		var others []netip.Addr
		for _, n := range s.nodes {
			if n.addr != x.addr {
				others = append(others, n.addr)
			}
		}
		graceful := s.rng.IntN(2) == 0
		s.c.Net.Partition([]netip.Addr{x.addr}, others)
		s.cut = true
		s.stop(x, graceful)
		rec, err := s.c.RecoverLedger(context.Background(), x.stateDir, x.addr)
		if err != nil {
			s.t.Fatalf("recover %s cut off alone: %v", x.key, err)
		}
		x.outsider, x.recovered = recoveredAway, rec.NewClusterID
		s.recoveredID = rec.NewClusterID
		s.record("%d: %s cut off alone, stopped (graceful=%v), ledger %s recovered as %s, started again", i, x.key, graceful, rec.ClusterID, rec.NewClusterID)
		s.start(x, s.seeds())
	case op == 10: // an agent started with another --pool joins the gossip
		if s.count(func(n *simNode) bool { return n.outsider == otherPool && n.running }) > 0 {
			return
		}
		n := s.add(fmt.Sprintf("n%d", s.next))
		// Apart from the cluster's pool, inside it, or around it.
		n.pool = []netip.Prefix{
			netip.MustParsePrefix("10.245.0.0/20"),
			netip.MustParsePrefix("10.244.0.0/21"),
			netip.MustParsePrefix("10.244.0.0/16"),
		}[s.rng.IntN(3)]
		n.outsider = otherPool
		s.record("%d: %s at %s with pool %s", i, n.key, n.addr, n.pool)
		s.start(n, s.seeds())
	default: // a new node joins
		if s.count(func(n *simNode) bool { return n.running }) >= 6 {
			return
		}
		n := s.add(fmt.Sprintf("n%d", s.next))
		s.record("%d: join %s at %s", i, n.key, n.addr)
		s.start(n, s.seeds())
	}
}

// quorumWithout reports whether the ledger keeps its majority if x loses
// its state for good: no partition is in effect, every running member
// sees one ledger with one leader, and the running voters other than x
// are a majority of the leader's voters. Each voter is counted by its own
// view's role: voters are listed by name, and a name may have held
// several node IDs (a host that came back empty).
func (s *sim) quorumWithout(views map[string]mesh.View, x *simNode) bool {
	if s.cut {
		return false
	}
	var ref ledger.Info
	voters, up := 0, 0
	for _, n := range s.nodes {
		if !running(n) {
			continue
		}
		v, ok := views[n.key]
		if !ok || v.Ledger.Leader == "" || v.Ledger.ClusterID.IsZero() {
			return false
		}
		if ref.ClusterID.IsZero() {
			ref = v.Ledger
		} else if v.Ledger.ClusterID != ref.ClusterID || v.Ledger.Leader != ref.Leader {
			return false
		}
		if v.Ledger.Role == "leader" {
			voters = len(v.Ledger.Voters)
		}
		if n != x && isVoter(v) {
			up++
		}
	}
	return voters > 0 && up > voters/2
}

// voters are the ledger's voters as the running nodes know them.
func (s *sim) voters() []string {
	var out []string
	for _, v := range s.c.Views() {
		out = append(out, v.Ledger.Voters...)
	}
	return out
}

// settle polls the invariant for d.
func (s *sim) settle(d time.Duration) {
	s.t.Helper()
	err := poll.Hold(context.Background(), "invariant broken", d, 20*time.Millisecond, func() error {
		views := s.c.Views()
		if err := s.check(views); err != nil {
			return fmt.Errorf("%w\nviews: %s", err, describe(views))
		}
		return nil
	})
	if err != nil {
		s.t.Fatal(err)
	}
}

// check is the invariant, on what hosts do: within each ledger, no two
// hosts may hand out addresses from one block while their leases overlap
// in time, counting the leases that stopped agents left in node.json, and
// no host routes a block twice or to a foreign member
// (meshtest.SharedBlock). A node whose ledger was recovered holds that
// ledger and no other (the two never merge), and an agent of another pool
// neither holds nor routes a block of the cluster's pool, nor is routed
// one.
func (s *sim) check(views map[string]mesh.View) error {
	alien := make(map[netip.Addr]string) // agents of another pool, by address
	for _, n := range s.nodes {
		if n.outsider == otherPool && n.running {
			alien[n.addr] = n.key
		}
	}
	for key, v := range views {
		n := s.byKey(key)
		now, err := n.clock.Host()
		if err != nil {
			return err
		}
		if !v.ID.IsZero() {
			n.id = v.ID
		}
		if n.recovered.IsZero() && !s.recoveredID.IsZero() && v.Ledger.ClusterID == s.recoveredID {
			n.joinedRecovered = true
		}
		leases := s.leases
		if s.onRecovered(n) {
			leases = s.recoveredLeases
		}
		if err := leases.Observe(key, v, now, time.Now()); err != nil {
			return err
		}
		if !n.recovered.IsZero() && !v.Ledger.ClusterID.IsZero() && v.Ledger.ClusterID != n.recovered {
			return fmt.Errorf("%s holds ledger %s, not %s recovered on it: the recovered ledger merged", key, v.Ledger.ClusterID, n.recovered)
		}
		if n.outsider == otherPool && v.Block.IsValid() && v.Block.Overlaps(s.pool) {
			return fmt.Errorf("%s, an agent of pool %s, holds %s of the cluster's pool %s", key, n.pool, v.Block, s.pool)
		}
		for _, m := range v.Members {
			if !m.Block.IsValid() {
				continue
			}
			if n.outsider == otherPool && m.Block.Overlaps(s.pool) {
				return fmt.Errorf("%s, an agent of pool %s, routes %s of the cluster's pool to %s", key, n.pool, m.Block, m.Name)
			}
			if other, ok := alien[m.Addr]; ok {
				return fmt.Errorf("%s routes %s to %s, an agent of another pool", key, m.Block, other)
			}
		}
	}
	// A ledger recovered beside the cluster's is a ledger of its own (see
	// op 9): each shares no block within itself.
	cluster, recovered := map[string]mesh.View{}, map[string]mesh.View{}
	for key, v := range views {
		if s.onRecovered(s.byKey(key)) {
			recovered[key] = v
		} else {
			cluster[key] = v
		}
	}
	if err := meshtest.SharedBlock(cluster); err != nil {
		return err
	}
	return meshtest.SharedBlock(recovered)
}

// onRecovered says whether n holds the recovered ledger: the node it was
// recovered on, or one that joined it.
func (s *sim) onRecovered(n *simNode) bool {
	return !n.recovered.IsZero() || n.joinedRecovered
}

func (s *sim) byKey(key string) *simNode {
	for i := len(s.nodes) - 1; i >= 0; i-- {
		if s.nodes[i].key == key {
			return s.nodes[i]
		}
	}
	s.t.Fatalf("no node %s", key)
	return nil
}

func describe(views map[string]mesh.View) string {
	keys := make([]string, 0, len(views))
	for k := range views {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := ""
	for _, k := range keys {
		v := views[k]
		out += fmt.Sprintf("\n  %s: block %s ready=%v ledger=%s/%s leader=%q reason=%q", k, v.Block, v.Ready, v.Ledger.ClusterID, v.Ledger.Role, v.Ledger.Leader, v.Reason)
		for _, m := range v.Members {
			if m.Block.IsValid() {
				out += fmt.Sprintf(" [%s %s %s]", m.Name, m.State, m.Block)
			}
		}
	}
	return out
}
