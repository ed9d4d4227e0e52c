package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/kubejoin"
	"github.com/grapevine-net/grapevine/mesh/ledger"
)

// kubeFirstSeedsWait bounds how long the agent waits for the first list of
// Node objects before it starts gossip anyway (with whatever --join gives).
const kubeFirstSeedsWait = 10 * time.Second

// kubeAPI is what the agent reads and writes in the Kubernetes API: Node
// objects and the ledger's record.
type kubeAPI interface {
	kubejoin.Client
	kubejoin.LedgerRecords
}

// joinKubernetes follows the cluster's Node objects until ctx ends: their
// InternalIPs of the pool's family become seed addresses, this node's Node
// UID its incarnation, and a deleted Node's block is released (see
// deletedNodes). It returns
// once the first list has been handed over, or after kubeFirstSeedsWait.
// Founding goes through the ledger's record instead (kubeLedgerRecord):
// whichever agent creates it founds, with the agents it lists there as
// the first voters, every other one joins, and an agent that lost its
// state finds the recorded ledger.
func (a *agent) joinKubernetes(ctx context.Context) error {
	log := a.log.With("component", "kubejoin")
	d := kubejoin.New(a.kube.client, a.opts.NodeName, seedFamily(a.opts.Pool), log)
	released := &deletedNodes{mesh: a.mesh, self: a.opts.NodeName, log: log, ctx: ctx, pending: make(map[string]context.CancelFunc), waits: a.releaseWaits}
	first := make(chan struct{})
	var once sync.Once
	go func() {
		defer released.wait()
		err := d.Run(ctx, kubejoin.Handlers{
			Discovered: func(disc kubejoin.Discovery) {
				a.kube.setUID(disc.SelfUID)
				a.mesh.AddJoinAddrs(disc.Seeds...)
				once.Do(func() { close(first) })
			},
			Deleted: released.deleted,
			Added:   released.added,
		})
		if err != nil && ctx.Err() == nil {
			a.log.Error("kubernetes discovery stopped", "err", err)
		}
	}()
	select {
	case <-first:
	case <-time.After(kubeFirstSeedsWait):
		a.log.Warn("no seed addresses from the Kubernetes API yet; starting gossip without them", "waited", kubeFirstSeedsWait)
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// seedFamily is the family of the Node InternalIPs that become seeds: the
// pool's, which gossip and the ledger bind to (IPv6 in an IPv6-only
// cluster; IPv4 in a dual-stack one, whose --pool is IPv4).
func seedFamily(pool netip.Prefix) kubejoin.Family {
	if pool.Addr().Is6() {
		return kubejoin.IPv6
	}
	return kubejoin.IPv4
}

// kubeLedgerRecord is the mesh's LedgerRecord in the Kubernetes API: the
// ConfigMap kube-system/grapevine-ledger, created once.
type kubeLedgerRecord struct {
	client kubejoin.LedgerRecords
}

// Create records want unless a ledger is recorded already.
func (k kubeLedgerRecord) Create(ctx context.Context, want mesh.RecordedLedger) (mesh.RecordedLedger, bool, error) {
	rec := kubejoin.LedgerRecord{ClusterID: want.ClusterID.String(), Founder: want.Founder}
	for _, f := range want.Founders {
		rec.Founders = append(rec.Founders, kubejoin.RecordFounder{ID: f.ID.String(), Addr: f.Addr.String()})
	}
	got, created, err := kubejoin.RecordLedger(ctx, k.client, rec)
	if err != nil {
		return mesh.RecordedLedger{}, false, err
	}
	led, err := k.parse(got)
	return led, created, err
}

// Read returns the record, and false if there is none.
func (k kubeLedgerRecord) Read(ctx context.Context) (mesh.RecordedLedger, bool, error) {
	got, err := k.client.GetLedgerRecord(ctx)
	if errors.Is(err, kubejoin.ErrNotFound) {
		return mesh.RecordedLedger{}, false, nil
	}
	if err != nil {
		return mesh.RecordedLedger{}, false, err
	}
	led, err := k.parse(got)
	return led, err == nil, err
}

// parse checks a record read from the API: a record that cannot be
// parsed is an error, never read as no record (that would found another
// ledger).
func (k kubeLedgerRecord) parse(rec kubejoin.LedgerRecord) (mesh.RecordedLedger, error) {
	id, err := ledger.ParseClusterID(rec.ClusterID)
	if err != nil {
		return mesh.RecordedLedger{}, fmt.Errorf("%s: %w", k.Where(), err)
	}
	out := mesh.RecordedLedger{ClusterID: id, Founder: rec.Founder}
	for _, f := range rec.Founders {
		node, err := ledger.ParseNodeID(f.ID)
		if err != nil {
			return mesh.RecordedLedger{}, fmt.Errorf("%s: founder: %w", k.Where(), err)
		}
		addr, err := netip.ParseAddrPort(f.Addr)
		if err != nil {
			return mesh.RecordedLedger{}, fmt.Errorf("%s: founder %s: %w", k.Where(), f.ID, err)
		}
		out.Founders = append(out.Founders, ledger.Founder{ID: node, Addr: addr})
	}
	return out, nil
}

// Where names the record.
func (kubeLedgerRecord) Where() string {
	return "ConfigMap " + kubejoin.LedgerRecordNamespace + "/" + kubejoin.LedgerRecordName
}

// kubeNode is this host's Node object as the mesh's Incarnation: its UID is
// saved with the block, and the restart rule applies only while the Node
// exists with that UID. A Node deleted (the operator's word that the host
// is gone, upon which peers release its block) and registered again has a
// new UID.
type kubeNode struct {
	client kubejoin.Client
	name   string

	mu  sync.Mutex
	uid string
}

func (k *kubeNode) setUID(uid string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.uid = uid
}

// Current is the UID of this host's Node as the watch last saw it; "" while
// it has none or before the first list.
func (k *kubeNode) Current() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.uid
}

// Verify reads this host's Node now: the restart rule holds only if it
// exists with the UID saved with the block. An API server out of reach is
// no answer, so no restart rule: the agent waits for the ledger.
func (k *kubeNode) Verify(ctx context.Context, saved string) error {
	n, err := k.client.GetNode(ctx, k.name)
	switch {
	case errors.Is(err, kubejoin.ErrNotFound):
		return fmt.Errorf("this host has no Node object %s (deleted)", k.name)
	case err != nil:
		return fmt.Errorf("cannot read this host's Node object: %w", err)
	case n.UID != saved:
		return fmt.Errorf("Node %s has UID %s, the block was saved under UID %s (the Node was deleted and registered again)", k.name, n.UID, saved)
	}
	return nil
}

// Timings of the release of a deleted Node's block.
const (
	// releaseCallTimeout bounds one release request to the ledger.
	releaseCallTimeout = 10 * time.Second
	// aliveRecheck is how often a deleted Node's member that is still
	// alive is looked at again: memberlist declares a stopped host dead
	// within seconds of the operator deleting its Node.
	aliveRecheck = time.Second
	// aliveGiveUp is how long a deleted Node's member may stay alive before
	// the agent stops waiting: a running host, whose kubelet registers
	// its Node again.
	aliveGiveUp = 2 * time.Minute
	// leaseRecheck caps the pause while a deleted Node's lease runs.
	leaseRecheck = 5 * time.Minute
	// maxReleaseRetry caps the pause between failed release requests.
	maxReleaseRetry = 30 * time.Second
)

// nodeReleaser is what deletedNodes needs of the mesh.
type nodeReleaser interface {
	ReleaseDeletedNode(ctx context.Context, node string) (netip.Prefix, error)
}

// deletedNodes releases the block of each node whose Node object is
// deleted, as Calico's kube-controllers free a deleted node's addresses:
// Kubernetes takes the deletion as the operator's word that the host is
// gone (its pods are deleted too). Every agent asks, so a change of the
// ledger's leader loses nothing; the first request frees the block and the
// others find nothing left. The mesh refuses while the node is alive in
// gossip: deleting the Node of a running host frees nothing (its kubelet
// registers it again).
type deletedNodes struct {
	mesh nodeReleaser
	self string
	log  *slog.Logger
	ctx  context.Context

	// waits shows, in the status, which blocks wait for a lease to end.
	waits *releaseWaits

	mu      sync.Mutex
	pending map[string]context.CancelFunc
	wg      sync.WaitGroup
}

// releaseWaits is, for each deleted Node whose block waits for its lease
// to end, when the leader last said the block would be free.
type releaseWaits struct {
	mu     sync.Mutex
	freeAt map[string]time.Time
}

func (r *releaseWaits) set(node string, at time.Time) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.freeAt == nil {
		r.freeAt = make(map[string]time.Time)
	}
	r.freeAt[node] = at
}

func (r *releaseWaits) done(node string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.freeAt, node)
}

// report says, sorted by node, when each waiting block will be free.
func (r *releaseWaits) report(now time.Time) []string {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for node, at := range r.freeAt {
		out = append(out, fmt.Sprintf("%s (Node deleted): its block is freed once its lease has ended, in %s (at %s)",
			node, max(at.Sub(now), 0).Round(time.Second), at.UTC().Format(time.RFC3339)))
	}
	slices.Sort(out)
	return out
}

// deleted starts releasing the block of the Node's node, unless a release
// is under way already. A Node is named like the agent on its host
// (--node-name); when two live hosts carry that name, the mesh releases
// the block the ledger records under it, and only once the node holding
// it is not alive (Mesh.ReleaseDeletedNode).
func (d *deletedNodes) deleted(n kubejoin.Node) {
	if n.Name == d.self {
		d.log.Warn("this host's own Node object was deleted; its block is confirmed with the ledger again before more addresses are handed out")
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.pending[n.Name]; ok {
		return
	}
	ctx, cancel := context.WithCancel(d.ctx)
	d.pending[n.Name] = cancel
	d.wg.Go(func() {
		d.release(ctx, n.Name)
		d.waits.done(n.Name)
		d.mu.Lock()
		delete(d.pending, n.Name)
		d.mu.Unlock()
		cancel()
	})
}

// added stops a release under way for a Node registered again.
func (d *deletedNodes) added(n kubejoin.Node) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if cancel, ok := d.pending[n.Name]; ok {
		d.log.Info("Node object registered again; not releasing its block", "peer", n.Name, "uid", n.UID)
		cancel()
	}
}

func (d *deletedNodes) wait() { d.wg.Wait() }

// release asks the ledger to release node's block until it is done, the
// node stays alive for aliveGiveUp, or ctx ends (the Node was registered
// again, the agent stops). Failures (no leader, the mesh not running yet)
// are retried with a back-off.
func (d *deletedNodes) release(ctx context.Context, node string) {
	began := time.Now()
	failures := 0
	saidAlive, saidLease := false, false
	for {
		cctx, cancel := context.WithTimeout(ctx, releaseCallTimeout)
		block, err := d.mesh.ReleaseDeletedNode(cctx, node)
		cancel()
		var wait time.Duration
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			if !block.IsValid() {
				d.log.Debug("deleted Node's node holds no block: never had one, or already released", "peer", node)
			}
			return
		case errors.Is(err, ledger.ErrNotOwner):
			// Another agent's request freed the block between this one's
			// read and its commit; the next look finds nothing left.
			wait = 100 * time.Millisecond
		case errors.Is(err, ledger.ErrLeaseActive):
			// The host may be alive but cut off, handing out addresses
			// until its lease ends: the block waits for that. Asked again
			// now and then, as a new leader counts the lease anew.
			left, _ := ledger.LeaseWait(err)
			if !saidLease {
				saidLease = true
				d.log.Info("Node object deleted; its block is freed once the node's lease has ended", "peer", node, "in", left.Round(time.Second))
			}
			d.waits.set(node, time.Now().Add(left))
			wait = min(max(left, time.Second), leaseRecheck)
		case errors.Is(err, ledger.ErrNodeAlive):
			if time.Since(began) > aliveGiveUp {
				d.log.Info("deleted Node's node stayed alive in gossip; its block stays (release it with grapevine release once the host is gone)",
					"peer", node, "waited", aliveGiveUp)
				return
			}
			if !saidAlive {
				saidAlive = true
				d.log.Info("Node object deleted but its node is alive in gossip; not releasing its block while it is (a running host's kubelet registers the Node again)",
					"peer", node, "err", err)
			}
			wait = aliveRecheck
		default:
			failures++
			wait = min(time.Second<<min(failures-1, 10), maxReleaseRetry)
			wait = wait/2 + rand.N(wait/2+1)
			d.log.Warn("cannot release the block of a deleted Node's node yet; retrying", "peer", node, "err", err, "retryIn", wait.Round(time.Millisecond))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}
