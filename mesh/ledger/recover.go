package ledger

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/raft"
)

// Server is one member of the ledger's raft configuration, as a recovery
// names it.
type Server struct {
	ID    string         // the node ID, as raft knows it
	Name  string         // the node name the ledger records for it; "" when it holds no block
	Addr  netip.AddrPort // its ledger address; invalid if raft holds something else
	Voter bool
}

func (s Server) String() string {
	name := s.Name
	if name == "" {
		name = "node " + s.ID
	}
	if s.Addr.IsValid() {
		return name + " (" + s.Addr.String() + ")"
	}
	return name
}

// RecoveryPlan is what this node's stores say before a recovery changes
// them: the ledger and every other server of its raft configuration.
type RecoveryPlan struct {
	ClusterID ClusterID
	Others    []Server // voters first, then by name
}

// Voters returns the other voters: the ones a recovery drops.
func (p RecoveryPlan) Voters() []Server {
	var v []Server
	for _, s := range p.Others {
		if s.Voter {
			v = append(v, s)
		}
	}
	return v
}

// Recovery is what a recovery did.
type Recovery struct {
	RecoveryPlan
	NewClusterID ClusterID
}

// Recover is the operator's way out when a ledger lost a majority of its
// voters for good: with this node's agent stopped, it rewrites the state
// in dir (<state-dir>/raft) so that this node is the only voter of a new
// ledger holding every entry it has (raft's RecoverCluster). check sees
// the plan before anything changes; an error from it (another voter still
// answers, say) aborts the recovery with nothing written.
//
// The recovered ledger gets a new cluster ID, so the members of the old
// one are foreign to it: if the dropped voters still hold a majority
// somewhere (a partition, not a loss), the two ledgers never merge, and two
// nodes never hold one block because each side assigned it. The new ID
// is written into the snapshot RecoverCluster makes of the replayed state,
// together with the new configuration: see recoveryFSM.
func Recover(dir string, id NodeID, advertise netip.AddrPort, check func(RecoveryPlan) error) (Recovery, error) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	stores, closeDisk, err := openDiskStores(dir, log)
	if err != nil {
		return Recovery{}, err
	}
	defer closeDisk()
	return RecoverStores(stores, id, advertise, check)
}

// RecoverStores is Recover on already opened stores (tests keep them in
// memory).
func RecoverStores(s *Stores, id NodeID, advertise netip.AddrPort, check func(RecoveryPlan) error) (Recovery, error) {
	if id.IsZero() || !advertise.IsValid() {
		return Recovery{}, fmt.Errorf("ledger recover: need this node's ID and address, got %s at %s", id, advertise)
	}
	has, err := raft.HasExistingState(s.Log, s.Stable, s.Snapshots)
	if err != nil {
		return Recovery{}, fmt.Errorf("ledger recover: %w", err)
	}
	if !has {
		return Recovery{}, errors.New("ledger recover: no ledger state here to recover")
	}
	plan, err := planRecovery(s, id)
	if err != nil {
		return Recovery{}, fmt.Errorf("ledger recover: %w", err)
	}
	if check != nil {
		if err := check(plan); err != nil {
			return Recovery{}, fmt.Errorf("ledger recover: %w", err)
		}
	}
	rec := Recovery{RecoveryPlan: plan, NewClusterID: newClusterID()}
	conf := raft.DefaultConfig()
	conf.LocalID = raft.ServerID(id.String())
	conf.Logger = newHCLog(slog.New(slog.NewTextHandler(io.Discard, nil)), "raft")
	_, trans := raft.NewInmemTransport(raft.ServerAddress(advertise.String()))
	defer trans.Close()
	only := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: conf.LocalID, Address: raft.ServerAddress(advertise.String())}}}
	fsm := &recoveryFSM{fsm: newFSM(nil, nil), cluster: rec.NewClusterID}
	if err := raft.RecoverCluster(conf, fsm, s.Log, s.Stable, s.Snapshots, trans, only); err != nil {
		return Recovery{}, fmt.Errorf("ledger recover: %w", err)
	}
	return rec, nil
}

// recoveryFSM is the state machine RecoverCluster replays the log into:
// its snapshot is the replayed state under the new cluster ID.
//
// RecoverCluster restores the newest snapshot, applies every entry after
// it, then writes one snapshot of the result with the new configuration
// and deletes the log. Changing the ID in that snapshot makes the new ID
// and the new configuration one atomic write, before the node ever runs
// again, with no new kind of entry and no leader needed. A state-machine
// entry could only be written once the recovered node leads: until it
// commits, the node would run, advertise and take claims under the old ID,
// and its old members would look like its own.
type recoveryFSM struct {
	*fsm
	cluster ClusterID
}

func (r *recoveryFSM) Snapshot() (raft.FSMSnapshot, error) {
	st, _ := r.snapshotState()
	if !st.Founded() {
		return nil, errors.New("the replayed ledger has no Found entry")
	}
	st.ClusterID = r.cluster
	b, err := st.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("encode recovered ledger: %w", err)
	}
	return fsmSnapshot(b), nil
}

// planRecovery reads what RecoverCluster will replay, without changing
// anything: the newest snapshot, then every entry after it, for the state
// (the cluster ID and the names of the nodes that hold blocks) and the
// latest configuration. The log behind a snapshot is short (TrailingLogs).
func planRecovery(s *Stores, self NodeID) (RecoveryPlan, error) {
	f := newFSM(nil, nil)
	var conf raft.Configuration
	var after uint64
	metas, err := s.Snapshots.List()
	if err != nil {
		return RecoveryPlan{}, fmt.Errorf("list snapshots: %w", err)
	}
	if len(metas) > 0 {
		meta, rc, err := s.Snapshots.Open(metas[0].ID)
		if err != nil {
			return RecoveryPlan{}, fmt.Errorf("open snapshot %s: %w", metas[0].ID, err)
		}
		if err := f.Restore(rc); err != nil {
			return RecoveryPlan{}, err
		}
		conf, after = meta.Configuration, meta.Index
	}
	first, err := s.Log.FirstIndex()
	if err != nil {
		return RecoveryPlan{}, fmt.Errorf("read log: %w", err)
	}
	last, err := s.Log.LastIndex()
	if err != nil {
		return RecoveryPlan{}, fmt.Errorf("read log: %w", err)
	}
	for i := max(first, after+1); i <= last && i > 0; i++ {
		var e raft.Log
		if err := s.Log.GetLog(i, &e); err != nil {
			return RecoveryPlan{}, fmt.Errorf("read log entry %d: %w", i, err)
		}
		switch e.Type {
		case raft.LogCommand:
			f.Apply(&e)
		case raft.LogConfiguration:
			conf = raft.DecodeConfiguration(e.Data)
		}
	}
	st, _ := f.snapshotState()
	if !st.Founded() {
		return RecoveryPlan{}, errors.New("this node's replica has no Found entry: it never held the ledger, so there is nothing to recover from it")
	}
	plan := RecoveryPlan{ClusterID: st.ClusterID}
	for _, srv := range conf.Servers {
		if srv.ID == raft.ServerID(self.String()) {
			continue
		}
		o := Server{ID: string(srv.ID), Voter: srv.Suffrage == raft.Voter}
		if a, err := netip.ParseAddrPort(string(srv.Address)); err == nil {
			o.Addr = a
		}
		if nid, err := ParseNodeID(o.ID); err == nil {
			if _, owner, ok := st.BlockOf(nid); ok {
				o.Name = owner.Name
			}
		}
		plan.Others = append(plan.Others, o)
	}
	slices.SortFunc(plan.Others, func(a, b Server) int {
		if a.Voter != b.Voter {
			if a.Voter {
				return -1
			}
			return 1
		}
		return strings.Compare(a.String(), b.String())
	})
	return plan, nil
}

// RefuseAnswering returns a check for Recover that refuses while any voter
// the recovery would drop is up: it dials each one's ledger address and,
// at its host IP, each port of also (the gossip port), all at once, and
// refuses if any connection is accepted. dial reports whether addr
// accepts a connection (and should give up soon: a voter that is down
// rarely refuses, it stays silent).
func RefuseAnswering(ctx context.Context, dial func(context.Context, netip.AddrPort) error, also ...uint16) func(RecoveryPlan) error {
	return func(plan RecoveryPlan) error {
		voters := plan.Voters()
		return refuseAnswering(voters, probe(ctx, voters, dial, also))
	}
}

// probe dials every voter's ports at once and returns, by voter ID, the
// addresses that accepted a connection.
func probe(ctx context.Context, voters []Server, dial func(context.Context, netip.AddrPort) error, also []uint16) map[string][]netip.AddrPort {
	var mu sync.Mutex
	var wg sync.WaitGroup
	answered := map[string][]netip.AddrPort{}
	for _, v := range voters {
		if !v.Addr.IsValid() {
			continue
		}
		addrs := []netip.AddrPort{v.Addr}
		for _, port := range also {
			if a := netip.AddrPortFrom(v.Addr.Addr(), port); a != v.Addr {
				addrs = append(addrs, a)
			}
		}
		for _, addr := range addrs {
			wg.Go(func() {
				if dial(ctx, addr) != nil {
					return
				}
				mu.Lock()
				answered[v.ID] = append(answered[v.ID], addr)
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	for id := range answered {
		slices.SortFunc(answered[id], func(a, b netip.AddrPort) int { return a.Compare(b) })
	}
	return answered
}

// ErrVoterAnswers: a recovery refused because a voter it would drop is up.
var ErrVoterAnswers = errors.New("another voter is still up")

// refuseAnswering is nil when no voter answered, else it names each one
// that did and where.
func refuseAnswering(voters []Server, answered map[string][]netip.AddrPort) error {
	var up []string
	for _, v := range voters {
		var at []string
		for _, a := range answered[v.ID] {
			at = append(at, a.String())
		}
		if len(at) > 0 {
			up = append(up, fmt.Sprintf("%s answers on %s", v, strings.Join(at, " and ")))
		}
	}
	if len(up) == 0 {
		return nil
	}
	return fmt.Errorf("%w: voter %s; a voter that is up may be part of a majority that still commits, and recovering beside it would split the ledger: "+
		"restart the voters that are down instead, or stop for good the ones that answer before recovering", ErrVoterAnswers, strings.Join(up, ", voter "))
}
