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

	"github.com/grapevine-net/grapevine/mesh"
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
// second agent under a live node's name, and joins. After every step, and
// while it settles, the invariant is what hosts do (sim.check): no two
// hosts may hand out addresses from one block while their leases overlap
// in time, counting the leases that stopped agents left in node.json, and
// no host routes a block twice; once the faults stop, the cluster must
// converge. GRAPEVINE_SIM_SEEDS and
// GRAPEVINE_SIM_STEPS set the size (make soak runs a long one);
// GRAPEVINE_SIM_SEED replays one seed.
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
	clock     *meshtest.Clock
	running   bool
	impostor  bool // a second agent under a live node's name
}

type sim struct {
	t      *testing.T
	leases *meshtest.Leases
	rng    *rand.Rand
	c      *meshtest.Cluster
	nodes  []*simNode
	next   int // next host address index
	log    []string
}

func simulate(t *testing.T, seed uint64, steps int) {
	const reclaimAfter = 3 * time.Second
	s := &sim{t: t, rng: rand.New(rand.NewPCG(seed, 0x6772617065)), leases: meshtest.NewLeases()}
	// Eight blocks for up to six running nodes plus restarted identities:
	// reuse of reclaimed blocks happens.
	s.c = meshtest.NewCluster(t.TempDir(), meshtest.Options{
		Pool:   netip.MustParsePrefix("10.244.0.0/20"),
		Lease:  reclaimAfter,
		Logger: testLogger(t),
	})
	defer func() {
		if t.Failed() {
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

	// Faults stop: heal, retire impostors (they never become ready),
	// bring stopped hosts back (with their state: a majority of voters
	// gone for good is the operator's `grapevine ledger recover`), and the
	// cluster must converge.
	s.record("heal, retire impostors, restart stopped nodes")
	s.c.Net.Heal()
	for _, n := range s.nodes {
		if n.impostor && n.running {
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
	if _, err := meshtest.WaitFor(ctx, 20*time.Millisecond, func() error {
		views := s.c.Views()
		if err := s.check(views); err != nil {
			t.Fatalf("seed %d after the faults: %v", seed, err)
		}
		return meshtest.Converged(views)
	}); err != nil {
		t.Fatalf("seed %d: no convergence once the faults stopped: %v", seed, err)
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
	_, err := s.c.Start(meshtest.Spec{Name: n.name, Key: n.key, Addr: n.addr, StateDir: n.stateDir, Join: join, Clock: n.clock.Host})
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
		if n := s.nodes[i]; n.running && !n.impostor && len(out) < 2 {
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

func running(n *simNode) bool { return n.running && !n.impostor }
func stopped(n *simNode) bool { return !n.running && !n.impostor }

// step applies one random fault.
func (s *sim) step(i int) {
	switch op := s.rng.IntN(9); {
	case op == 0: // partition the running hosts in two
		var all []netip.Addr
		for _, n := range s.nodes {
			if n.running {
				all = append(all, n.addr)
			}
		}
		s.rng.Shuffle(len(all), func(a, b int) { all[a], all[b] = all[b], all[a] })
		cut := 1 + s.rng.IntN(max(1, len(all)-1))
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
		// the ledger's majority for good, which takes an operator.
		voters := s.voters()
		if n := s.pick(func(n *simNode) bool { return stopped(n) && !slices.Contains(voters, n.name) }); n != nil {
			n.stateDir = filepath.Join(s.t.TempDir(), n.key+"-fresh")
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
		if orig == nil || s.count(func(n *simNode) bool { return n.impostor && n.running }) > 0 {
			return
		}
		imp := s.add(orig.name)
		imp.key, imp.impostor = orig.name+"-impostor", true
		s.record("%d: impostor of %s at %s", i, orig.name, imp.addr)
		s.start(imp, s.seeds())
	default: // a new node joins
		if s.count(func(n *simNode) bool { return n.running }) >= 6 {
			return
		}
		n := s.add(fmt.Sprintf("n%d", s.next))
		s.record("%d: join %s at %s", i, n.key, n.addr)
		s.start(n, s.seeds())
	}
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
	deadline := time.Now().Add(d)
	for {
		views := s.c.Views()
		if err := s.check(views); err != nil {
			s.t.Fatalf("invariant broken: %v\nviews: %s", err, describe(views))
		}
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// check is the invariant, on what hosts do: no two hosts may hand out
// addresses from one block while their leases overlap in time, counting
// the leases that stopped agents left in node.json, and no host routes a
// block twice or to a foreign member (meshtest.SharedBlock).
func (s *sim) check(views map[string]mesh.View) error {
	for key, v := range views {
		n := s.byKey(key)
		now, err := n.clock.Host()
		if err != nil {
			return err
		}
		if err := s.leases.Observe(key, v, now, time.Now()); err != nil {
			return err
		}
	}
	return meshtest.SharedBlock(views)
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
