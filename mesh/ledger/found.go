package ledger

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/hashicorp/raft"
)

// ErrHasState: this node already belongs to a ledger, or began founding
// one, so it cannot found another.
var ErrHasState = errors.New("this node already has ledger state")

// foundClusterKey is where the stable store keeps the cluster ID a founder
// promised (in a record outside the ledger) to found with, so a founder
// restarted before its Found entry was written founds that ledger, not
// another.
var foundClusterKey = []byte("grapevine_found_cluster")

// Founder is one voter of a new ledger's first configuration.
type Founder struct {
	ID   NodeID
	Addr netip.AddrPort // raft and RPC address
}

// firstConfiguration is the raft configuration a ledger starts with: every
// founder a voter, sorted by node ID, so that founders that call Bootstrap
// independently with the same set write the identical configuration
// (hashicorp/raft requires it). It refuses a set without this node or
// with an ID twice.
func firstConfiguration(self NodeID, founders []Founder) (raft.Configuration, error) {
	sorted := slices.SortedFunc(slices.Values(founders), func(a, b Founder) int { return cmp.Compare(a.ID.String(), b.ID.String()) })
	var conf raft.Configuration
	hasSelf := false
	for i, f := range sorted {
		switch {
		case f.ID.IsZero() || !f.Addr.IsValid() || f.Addr.Port() == 0:
			return conf, fmt.Errorf("founder %d: node ID %s at %s is not a node's address", i, f.ID, f.Addr)
		case i > 0 && sorted[i-1].ID == f.ID:
			return conf, fmt.Errorf("founder %s is listed twice", f.ID)
		}
		hasSelf = hasSelf || f.ID == self
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(f.ID.String()), Address: raft.ServerAddress(f.Addr.String())})
	}
	if !hasSelf {
		return conf, fmt.Errorf("this node %s is not among the %d founders", self, len(founders))
	}
	return conf, nil
}

// Bootstrap founds a new ledger from this running node, which must have no
// ledger state (ErrHasState otherwise): its first configuration makes every
// founder a voter, and whichever founder leads first writes the Found
// entry. Every founder must call it with the same set (see
// firstConfiguration). A non-zero cluster is the ID the Found entry gets
// (one recorded outside the ledger before founding); it is kept on disk,
// so a founder restarted before the entry is written still uses it.
func (l *Ledger) Bootstrap(ctx context.Context, founders []Founder, cluster ClusterID) error {
	r, err := l.running(ctx)
	if err != nil {
		return err
	}
	return l.bootstrap(r, founders, cluster)
}

func (l *Ledger) bootstrap(r *raft.Raft, founders []Founder, cluster ClusterID) error {
	conf, err := firstConfiguration(l.cfg.ID, founders)
	if err != nil {
		return fmt.Errorf("found a ledger: %w", err)
	}
	if l.HasState() {
		return fmt.Errorf("found a ledger: %w", ErrHasState)
	}
	if !cluster.IsZero() {
		if err := l.stores.Stable.Set(foundClusterKey, cluster[:]); err != nil {
			return fmt.Errorf("found a ledger: keep its cluster ID: %w", err)
		}
	}
	switch err := r.BootstrapCluster(conf).Error(); {
	case errors.Is(err, raft.ErrCantBootstrap):
		return fmt.Errorf("found a ledger: %w", ErrHasState)
	case err != nil:
		return fmt.Errorf("found a ledger: %w", err)
	}
	var names []string
	for _, s := range conf.Servers {
		names = append(names, string(s.ID))
	}
	l.log.Info("founding a new ledger", "voters", names, "pool", l.cfg.Pool, "block_bits", l.cfg.BlockBits)
	if conf.Servers[0].ID == raft.ServerID(l.cfg.ID.String()) {
		// One founder stands at once (the others would split the vote),
		// as soon as a majority of the founders is alive in gossip
		// (standing).
		l.founderStands.Store(true)
		l.wakeLoop()
	}
	l.notify()
	return nil
}

// electNow makes this voter, which has never heard from a leader, stand
// for election now rather than after its heartbeat timeout (10-20 s with
// the ledger's timers): raft's follower re-checks its leader's last contact
// as soon as the heartbeat timeout is lowered, and stands when it has
// none. The timeout is lowered by a millisecond and put back.
func electNow(r *raft.Raft) error {
	rc := r.ReloadableConfig()
	lowered := rc
	lowered.HeartbeatTimeout -= time.Millisecond
	if err := r.ReloadConfig(lowered); err != nil {
		return err
	}
	return r.ReloadConfig(rc)
}

// HasState reports whether this node belongs to a ledger or began founding
// one: its raft log, configuration or snapshots hold anything. A node
// with state never founds again.
func (l *Ledger) HasState() bool {
	if r := l.raft.Load(); r != nil {
		if r.LastIndex() > 0 {
			return true
		}
		if f := r.GetConfiguration(); f.Error() == nil && len(f.Configuration().Servers) > 0 {
			return true
		}
	}
	has, err := raft.HasExistingState(l.stores.Log, l.stores.Stable, l.stores.Snapshots)
	return err != nil || has // unreadable stores: never found over them
}

// NewClusterID returns a random cluster ID, for a ledger recorded (see
// Bootstrap) before it is founded.
func NewClusterID() ClusterID { return newClusterID() }

// foundCluster is the cluster ID this node promised to found with, zero
// for a new random one.
func (l *Ledger) foundCluster() ClusterID {
	var id ClusterID
	b, err := l.stores.Stable.Get(foundClusterKey)
	if err == nil && len(b) == len(id) {
		copy(id[:], b)
	}
	return id
}

// SetAside moves this node's ledger state in dir (<state-dir>/raft) to to,
// so that the node starts again without ledger state and joins the ledger
// its peers hold. It refuses while an agent uses dir (the log is locked)
// and when there is nothing to move.
func SetAside(dir, to string) error {
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("no ledger state to set aside: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "raft.db")); err == nil {
		_, closeDisk, err := openDiskStores(dir, slog.New(slog.DiscardHandler))
		if err != nil {
			return fmt.Errorf("stop the agent first: %w", err)
		}
		if err := closeDisk(); err != nil {
			return err
		}
	}
	if err := os.Rename(dir, to); err != nil {
		return fmt.Errorf("set the ledger state aside: %w", err)
	}
	return nil
}
