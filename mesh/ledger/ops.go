package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/hashicorp/raft"
)

// Grant is the leader's answer to a claim: the block, the log index of the
// entry that confirmed it, and the lease granted with it. The lease runs
// from when the claim was sent (see LeaseMargin).
type Grant struct {
	Block netip.Prefix
	Index uint64
	Lease time.Duration
}

// Claim asks the ledger for this node's block, and renews its lease: the
// block it holds, else hint if free, else a free one. It returns once the
// assignment is committed and applied to this node's replica (so a restart
// right after finds it there), retrying while no leader is reachable until
// ctx ends (30 s when ctx has no deadline). The caller's lease starts when
// it called Claim.
func (l *Ledger) Claim(ctx context.Context, hint netip.Prefix, hostIP netip.Addr) (Grant, error) {
	c := Claim{ID: l.cfg.ID, Name: l.cfg.Name, HostIP: hostIP, Hint: hint}
	if err := validClaimant(c.ID, c.Name, c.HostIP); err != nil {
		return Grant{}, err
	}
	// Claim only with the ledger's pool in this node's replica: a node
	// restarted with another --pool must not take a block it would then
	// misconfigure.
	st, err := l.waitFounded(ctx)
	if err != nil {
		return Grant{}, fmt.Errorf("claim a block: %w", err)
	}
	if st.Pool != l.cfg.Pool || st.BlockBits != l.cfg.BlockBits {
		return Grant{}, fmt.Errorf("%w: this node is configured with pool %s and /%d blocks, the ledger %s has %s and /%d",
			ErrPoolMismatch, l.cfg.Pool, l.cfg.BlockBits, st.ClusterID, st.Pool, st.BlockBits)
	}
	resp, err := l.toLeader(ctx, rpcRequest{Op: "claim", Claim: &c})
	if err != nil {
		return Grant{}, fmt.Errorf("claim a block: %w", err)
	}
	g := Grant{Block: resp.Block, Index: resp.Index, Lease: time.Duration(resp.LeaseMs) * time.Millisecond}
	if g.Index == 0 || g.Lease <= 0 {
		return Grant{}, fmt.Errorf("claim a block: %w: the leader granted no lease (is it an older version?)", ErrNoLeader)
	}
	if err := l.waitApplied(ctx, g); err != nil {
		return Grant{}, fmt.Errorf("claim a block: %w", err)
	}
	return g, nil
}

// waitApplied waits until this node's replica has applied the entry that
// confirmed g, and checks that it shows g's block assigned to this node
// (read your writes).
func (l *Ledger) waitApplied(ctx context.Context, g Grant) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		// The state machine's own index: raft's AppliedIndex runs ahead
		// of what the state machine has applied.
		st, applied := l.fsm.snapshotState()
		if applied >= g.Index {
			if o, ok := st.Blocks[g.Block]; !ok || o.ID != l.cfg.ID {
				return fmt.Errorf("%w: this node's replica no longer assigns %s to it after applying entry %d", ErrNotOwner, g.Block, g.Index)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: this node's replica has applied entry %d of %d: %w", ErrNoLeader, applied, g.Index, ctx.Err())
		case <-l.stopped:
			return ErrStopped
		case <-t.C:
		}
	}
}

// Release frees the block of node nodeName (an operator's decision that
// the node is gone for good). The leader refuses while the node is alive
// in its gossip view. Like Claim, it retries while no leader answers until
// ctx ends (30 s when ctx has no deadline).
func (l *Ledger) Release(ctx context.Context, nodeName string) error {
	if err := validName(nodeName); err != nil {
		return err
	}
	if _, err := l.toLeader(ctx, rpcRequest{Op: "release", Release: &releaseRequest{Name: nodeName}}); err != nil {
		return fmt.Errorf("release %s: %w", nodeName, err)
	}
	return nil
}

// RequestJoin asks ledger cluster (zero: whichever via leads to), through
// each of via in turn, to add this node as a non-voter. A node that holds
// a ledger asks for its own whatever cluster says. The leader refuses a
// join meant for another ledger, so a request that reaches the wrong one
// (an address reused, a forward to a stale leader) adds the node to none.
// It makes one pass: nil once a leader accepted; a refusal (foreign
// cluster, pool mismatch, identity) at once; else an ErrNoLeader naming
// each address that did not answer. Idempotent (a member, the leader
// included, is accepted again); the mesh calls it until it succeeds.
func (l *Ledger) RequestJoin(ctx context.Context, cluster ClusterID, via []netip.AddrPort) error {
	if _, err := l.running(ctx); err != nil {
		return err
	}
	if st, _ := l.State(); !st.ClusterID.IsZero() {
		cluster = st.ClusterID
	}
	req := rpcRequest{Op: "join", Join: &joinRequest{
		ID: l.cfg.ID, Name: l.cfg.Name, Addr: l.cfg.Advertise,
		ClusterID: cluster, Pool: l.cfg.Pool, BlockBits: l.cfg.BlockBits,
	}}
	var failed []string
	for _, addr := range via {
		if addr == l.cfg.Advertise {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, rpcTimeout)
		resp, err := l.call(cctx, addr, req)
		cancel()
		if err == nil {
			l.log.Debug("ledger accepted this node", "via", addr, "cluster", resp.ClusterID)
			return nil
		}
		if isRefusal(err) {
			return fmt.Errorf("join ledger via %s: %w", addr, err)
		}
		failed = append(failed, fmt.Sprintf("%s: %v", addr, err))
		if ctx.Err() != nil {
			break
		}
	}
	if len(failed) == 0 {
		return fmt.Errorf("%w: no address to join through", ErrNoLeader)
	}
	return fmt.Errorf("%w: join through %s", ErrNoLeader, strings.Join(failed, "; "))
}

// waitFounded waits until this node's replica holds the Found entry.
func (l *Ledger) waitFounded(ctx context.Context) (State, error) {
	for {
		st, _ := l.State()
		if st.Founded() {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return State{}, fmt.Errorf("%w: this node has no copy of a ledger yet (not a member?): %w", ErrNoLeader, ctx.Err())
		case <-l.stopped:
			return State{}, ErrStopped
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// isRefusal: a leader's definite answer, not worth retrying elsewhere.
func isRefusal(err error) bool {
	for _, kind := range []error{ErrForeignCluster, ErrPoolMismatch, ErrIdentity, ErrPoolExhausted, ErrNodeAlive, ErrLeaseActive, ErrUnknownNode, ErrBadRequest, ErrNotOwner} {
		if errors.Is(err, kind) {
			return true
		}
	}
	return false
}

// toLeader handles req here if this node leads, else sends it to the
// leader; it retries with backoff while no leader answers, until ctx ends
// (or defaultCallTimeout, when ctx has no deadline: an operator's release
// must not hang for want of a leader).
func (l *Ledger) toLeader(ctx context.Context, req rpcRequest) (rpcResponse, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultCallTimeout)
		defer cancel()
	}
	r, err := l.running(ctx)
	if err != nil {
		return rpcResponse{}, err
	}
	backoff := 50 * time.Millisecond
	for {
		var resp rpcResponse
		var err error
		addr, id := r.LeaderWithID()
		switch {
		case r.State() == raft.Leader:
			resp = l.lead(ctx, r, req)
			err = resp.err()
		case id == "":
			err = fmt.Errorf("%w: no leader known (last contact: %s)", ErrNoLeader, l.lastContact(r))
		default:
			leader, perr := netip.ParseAddrPort(string(addr))
			if perr != nil {
				err = fmt.Errorf("%w: leader address %q: %v", ErrNoLeader, addr, perr)
				break
			}
			cctx, cancel := context.WithTimeout(ctx, rpcTimeout)
			resp, err = l.call(cctx, leader, req)
			cancel()
			if err != nil && !isRefusal(err) && !errors.Is(err, ErrNoLeader) {
				err = fmt.Errorf("%w: leader %s: %w", ErrNoLeader, addr, err)
			}
		}
		if err == nil || isRefusal(err) {
			return resp, err
		}
		select {
		case <-ctx.Done():
			return rpcResponse{}, err
		case <-l.stopped:
			return rpcResponse{}, ErrStopped
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

func (l *Ledger) lastContact(r *raft.Raft) string {
	lc := r.LastContact()
	if lc.IsZero() {
		return "never"
	}
	return time.Since(lc).Round(time.Millisecond).String() + " ago"
}

// MaxReport bounds a report (Config.Report), so that its answer fits in a
// frame.
const MaxReport = maxFrame - 1024

// Report asks the member at addr (its ledger address) for its report, over
// the ledger's TLS connection: only holders of the gossip key, dialing
// from a member's address, are answered.
func (l *Ledger) Report(ctx context.Context, addr netip.AddrPort) ([]byte, error) {
	resp, err := l.call(ctx, addr, rpcRequest{Op: "report", Report: &reportRequest{}})
	if err != nil {
		return nil, fmt.Errorf("report of %s: %w", addr, err)
	}
	return resp.Report, nil
}

// answerReport answers a report request with this node's own report.
func (l *Ledger) answerReport(ctx context.Context) rpcResponse {
	st, _ := l.State()
	if l.cfg.Report == nil {
		return responseFor(netip.Prefix{}, st.ClusterID, fmt.Errorf("%w: %s gives none", ErrNoReport, l.cfg.Name))
	}
	report, err := l.cfg.Report(ctx)
	switch {
	case err != nil:
		return responseFor(netip.Prefix{}, st.ClusterID, fmt.Errorf("%w: %s: %v", ErrNoReport, l.cfg.Name, err))
	case len(report) > MaxReport:
		return responseFor(netip.Prefix{}, st.ClusterID, fmt.Errorf("%w: %s's is %d bytes, more than %d", ErrNoReport, l.cfg.Name, len(report), MaxReport))
	case !json.Valid(report):
		return responseFor(netip.Prefix{}, st.ClusterID, fmt.Errorf("%w: %s's is not JSON", ErrNoReport, l.cfg.Name))
	}
	r := responseFor(netip.Prefix{}, st.ClusterID, nil)
	r.Report = report
	return r
}

// call sends one RPC to addr and waits for the answer.
func (l *Ledger) call(ctx context.Context, addr netip.AddrPort, req rpcRequest) (rpcResponse, error) {
	body, err := encodeRequest(req)
	if err != nil {
		return rpcResponse{}, err
	}
	c, err := l.dialer().dial(ctx, addr, muxRPC)
	if err != nil {
		return rpcResponse{}, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	if err := writeFrame(c, body); err != nil {
		return rpcResponse{}, err
	}
	b, err := readFrame(c)
	if err != nil {
		return rpcResponse{}, fmt.Errorf("read answer from %s: %w", addr, err)
	}
	resp, err := decodeResponse(b)
	if err != nil {
		return rpcResponse{}, err
	}
	return resp, resp.err()
}

// serveRPC answers one RPC connection; it runs on the mux's goroutine for
// that connection, never on gossip's.
func (l *Ledger) serveRPC(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(rpcTimeout + applyTimeout))
	b, err := readFrame(c)
	if err != nil {
		if errors.Is(err, ErrBadRequest) {
			l.reject("size")
			l.log.Warn("ledger RPC refused: oversized", "peer", c.RemoteAddr().String())
			writeFrame(c, mustEncodeResponse(responseFor(netip.Prefix{}, ClusterID{}, err)))
		} else {
			l.reject("read")
		}
		return
	}
	req, err := decodeRequest(b)
	if err != nil {
		l.reject("decode")
		l.log.Warn("ledger RPC refused: malformed", "peer", c.RemoteAddr().String(), "err", err)
		writeFrame(c, mustEncodeResponse(responseFor(netip.Prefix{}, ClusterID{}, err)))
		return
	}
	ctx, cancel := context.WithTimeout(l.serveCtx, rpcTimeout)
	defer cancel()
	var resp rpcResponse
	if req.Op == "report" {
		resp = l.answerReport(ctx)
	} else {
		resp = l.handle(ctx, req)
	}
	if code := resp.Code; code != "" && code != "no-leader" {
		l.reject(code)
	}
	writeFrame(c, mustEncodeResponse(resp))
}

func mustEncodeResponse(r rpcResponse) []byte {
	b, err := json.Marshal(r)
	if err != nil {
		panic(fmt.Sprintf("ledger: encode response: %v", err)) // plain struct: cannot fail
	}
	return b
}

// handle answers a request here if this node leads, else forwards it once.
func (l *Ledger) handle(ctx context.Context, req rpcRequest) rpcResponse {
	r := l.raft.Load()
	st, _ := l.State()
	if r == nil {
		return responseFor(netip.Prefix{}, st.ClusterID, fmt.Errorf("%w: %s is not running", ErrNoLeader, l.cfg.Name))
	}
	if r.State() == raft.Leader {
		return l.lead(ctx, r, req)
	}
	addr, id := r.LeaderWithID()
	if req.Forwarded || id == "" {
		return responseFor(netip.Prefix{}, st.ClusterID, fmt.Errorf("%w: %s is not the leader and knows none", ErrNoLeader, l.cfg.Name))
	}
	leader, err := netip.ParseAddrPort(string(addr))
	if err != nil {
		return responseFor(netip.Prefix{}, st.ClusterID, fmt.Errorf("%w: leader address %q", ErrNoLeader, addr))
	}
	req.Forwarded = true
	resp, err := l.call(ctx, leader, req)
	if err != nil && resp.Code == "" {
		return responseFor(netip.Prefix{}, st.ClusterID, fmt.Errorf("%w: forward to leader %s: %v", ErrNoLeader, addr, err))
	}
	return resp
}

// lead handles a request on the leader: the checks that need gossip's view
// (which the state machine has no notion of), then the log entry.
func (l *Ledger) lead(ctx context.Context, r *raft.Raft, req rpcRequest) rpcResponse {
	st, _ := l.State()
	peers, _ := l.peerView()
	switch {
	case req.Join != nil:
		return responseFor(netip.Prefix{}, st.ClusterID, l.leadJoin(r, &st, peers, *req.Join))
	case req.Claim != nil:
		g, err := l.leadClaim(r, peers, *req.Claim)
		resp := responseFor(g.Block, st.ClusterID, err)
		if err == nil {
			resp.Index, resp.LeaseMs = g.Index, g.Lease.Milliseconds()
		}
		return resp
	case req.Release != nil:
		block, err := l.leadRelease(r, peers, req.Release.Name)
		return responseFor(block, st.ClusterID, err)
	}
	return responseFor(netip.Prefix{}, st.ClusterID, fmt.Errorf("%w: empty request", ErrBadRequest))
}

func (l *Ledger) leadJoin(r *raft.Raft, st *State, peers []Peer, j joinRequest) error {
	if !st.Founded() {
		return fmt.Errorf("%w: the leader has not written the Found entry yet", ErrNoLeader)
	}
	if !j.ClusterID.IsZero() && j.ClusterID != st.ClusterID {
		return fmt.Errorf("%w: node %s belongs to ledger %s, this is ledger %s", ErrForeignCluster, j.Name, j.ClusterID, st.ClusterID)
	}
	if j.Pool != st.Pool || j.BlockBits != st.BlockBits {
		return fmt.Errorf("%w: node %s has pool %s with /%d blocks, the ledger %s with /%d", ErrPoolMismatch, j.Name, j.Pool, j.BlockBits, st.Pool, st.BlockBits)
	}
	if o, taken := st.NameKeptFrom(j.Name, j.ID, func(id NodeID) bool { return l.alive(peers, id) }); taken {
		return fmt.Errorf("%w: node name %s is in use by a live node with another ID at host IP %s", ErrIdentity, j.Name, o.HostIP)
	}
	id, addr := raft.ServerID(j.ID.String()), raft.ServerAddress(j.Addr.String())
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return fmt.Errorf("%w: %v", ErrNoLeader, err)
	}
	for _, s := range f.Configuration().Servers {
		if s.ID == id && s.Address == addr {
			return nil // already a member
		}
	}
	for _, p := range peers {
		if p.ID == j.ID && p.Alive && p.Addr.IsValid() && p.Addr.Addr() != j.Addr.Addr() {
			return fmt.Errorf("%w: node ID %s is live at %s (a copied state directory?)", ErrIdentity, j.ID, p.Addr.Addr())
		}
	}
	// A reinstalled host (new ID) at the address of a dead member: the
	// stale member goes first, as two servers cannot share an address.
	for _, s := range f.Configuration().Servers {
		if s.Address != addr || s.ID == id {
			continue
		}
		if other, err := ParseNodeID(string(s.ID)); err == nil && l.alive(peers, other) {
			return fmt.Errorf("%w: address %s is in use by live ledger member %s", ErrIdentity, j.Addr, l.nameOf(peers, st, string(s.ID)))
		}
		if err := r.RemoveServer(s.ID, 0, applyTimeout).Error(); err != nil {
			return fmt.Errorf("%w: remove stale member at %s: %v", ErrNoLeader, j.Addr, err)
		}
		l.log.Info("ledger: removed a dead member whose address a new node joins with", "id", s.ID, "addr", j.Addr)
	}
	if err := r.AddNonvoter(id, addr, 0, applyTimeout).Error(); err != nil {
		return fmt.Errorf("%w: add %s as non-voter: %v", ErrNoLeader, j.Name, err)
	}
	announceCommit(r)
	l.log.Info("ledger: added non-voter", "node", j.Name, "id", j.ID, "addr", j.Addr)
	return nil
}

// leadClaim commits a claim and grants its lease. The lease table's lock
// is held from before the state is read until the grant is recorded, so no
// reclaim or release decided meanwhile can free the block under the grant.
func (l *Ledger) leadClaim(r *raft.Raft, peers []Peer, c Claim) (Grant, error) {
	l.leases.mu.Lock()
	defer l.leases.mu.Unlock()
	st, _ := l.State()
	if !st.Founded() {
		return Grant{}, fmt.Errorf("%w: the leader has not written the Found entry yet", ErrNoLeader)
	}
	if o, taken := st.NameKeptFrom(c.Name, c.ID, func(id NodeID) bool { return l.alive(peers, id) }); taken {
		return Grant{}, fmt.Errorf("%w: node name %s is in use by a live node with another ID at host IP %s", ErrIdentity, c.Name, o.HostIP)
	}
	if _, o, ok := st.BlockOf(c.ID); ok && o.HostIP != c.HostIP {
		for _, p := range peers {
			if p.ID == c.ID && p.Alive && p.HostIP == o.HostIP {
				return Grant{}, fmt.Errorf("%w: node ID %s is live at host IP %s (a copied state directory?)", ErrIdentity, c.ID, o.HostIP)
			}
		}
	}
	res, index, err := l.apply(r, c)
	if err != nil {
		return Grant{}, err
	}
	if res.Err != nil {
		return Grant{}, res.Err
	}
	l.leases.grantLocked(r.CurrentTerm(), c.ID, time.Now())
	l.log.Debug("ledger: block assigned", "node", c.Name, "block", res.Block, "lease", l.cfg.Lease)
	return Grant{Block: res.Block, Index: index, Lease: l.cfg.Lease}, nil
}

// leadRelease frees the block of node name, once gossip shows it not alive
// and its lease has ended by this leader's clock: the one path by which an
// operator's release and a deleted Node move a block.
func (l *Ledger) leadRelease(r *raft.Raft, peers []Peer, name string) (netip.Prefix, error) {
	l.leases.mu.Lock()
	defer l.leases.mu.Unlock()
	st, _ := l.State()
	b, o, ok := st.BlockOfName(name)
	if !ok {
		return netip.Prefix{}, fmt.Errorf("%w: %s", ErrUnknownNode, name)
	}
	if l.alive(peers, o.ID) {
		return netip.Prefix{}, fmt.Errorf("%w: %s (ID %s) is alive at host IP %s; stop it before releasing its block", ErrNodeAlive, name, o.ID, o.HostIP)
	}
	for _, p := range peers {
		if p.Name == name && p.Alive {
			return netip.Prefix{}, fmt.Errorf("%w: a node named %s is alive at host IP %s", ErrNodeAlive, name, p.HostIP)
		}
	}
	now := time.Now()
	if ends := l.leases.endsLocked(r.CurrentTerm(), o.ID, now, l.cfg.Lease); now.Before(ends) {
		wait := ends.Sub(now)
		return netip.Prefix{}, &leaseActiveError{wait: wait, msg: fmt.Sprintf(
			"%s: block %s of %s can be freed in %s, once its lease (--lease %s, plus a margin of %s) has ended by the leader's clock; until then %s may still hand out addresses from it",
			ErrLeaseActive, b, name, wait.Round(time.Second), l.cfg.Lease, LeaseMargin(l.cfg.Lease), name)}
	}
	res, _, err := l.apply(r, Release{Block: b, OwnerID: o.ID})
	if err != nil {
		return netip.Prefix{}, err
	}
	if res.Err == nil {
		l.log.Info("ledger: block released", "node", name, "block", b)
	}
	return res.Block, res.Err
}

// announceCommit tells every follower the leader's commit index now,
// rather than at the next CommitTimeout (raftCommitTimeout): raft sends
// the commit index only with entries, and its heartbeats carry none. A
// barrier is an entry that changes nothing; the leader does not wait for
// it.
func announceCommit(r *raft.Raft) { r.Barrier(applyTimeout) }

// apply commits one entry and returns the state machine's result and the
// entry's index.
func (l *Ledger) apply(r *raft.Raft, c Command) (Result, uint64, error) {
	b, err := encodeCommand(c)
	if err != nil {
		return Result{}, 0, err
	}
	f := r.Apply(b, applyTimeout)
	if err := f.Error(); err != nil {
		return Result{}, 0, fmt.Errorf("%w: commit %s: %v", ErrNoLeader, c.op(), err)
	}
	announceCommit(r)
	res, ok := f.Response().(Result)
	if !ok {
		return Result{}, 0, fmt.Errorf("ledger: unexpected apply response %T", f.Response())
	}
	return res, f.Index(), nil
}
