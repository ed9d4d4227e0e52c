package ledger

import (
	"io"
	"sync"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

// countingTransport counts the raft RPCs this node sends, by kind and by
// peer: what an idle ledger costs is its RPCs per follower per second,
// and it is counted here, at the transport, rather than guessed from the
// timers.
type countingTransport struct {
	raft.Transport
	sent *rpcCounts
}

// The kinds of raft RPCs counted.
const (
	rpcHeartbeat  = "heartbeat"      // AppendEntries without entries or commit index
	rpcAppend     = "append_entries" // replication, and the commit index
	rpcVote       = "request_vote"
	rpcPreVote    = "request_pre_vote"
	rpcSnapshot   = "install_snapshot"
	rpcTimeoutNow = "timeout_now" // leadership transfer
)

// rpcCounts is what countingTransport counted: the metric, and per peer
// for tests and benchmarks.
type rpcCounts struct {
	metric *prometheus.CounterVec
	mu     sync.Mutex
	byPeer map[raft.ServerID]uint64
}

func newRPCCounts(metric *prometheus.CounterVec) *rpcCounts {
	return &rpcCounts{metric: metric, byPeer: map[raft.ServerID]uint64{}}
}

func (c *rpcCounts) add(peer raft.ServerID, kind string) {
	c.metric.WithLabelValues(kind).Inc()
	c.mu.Lock()
	c.byPeer[peer]++
	c.mu.Unlock()
}

// to returns how many RPCs this node has sent each peer.
func (c *rpcCounts) to() map[raft.ServerID]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[raft.ServerID]uint64, len(c.byPeer))
	for id, n := range c.byPeer {
		out[id] = n
	}
	return out
}

func appendKind(args *raft.AppendEntriesRequest) string {
	if len(args.Entries) == 0 && args.LeaderCommitIndex == 0 {
		return rpcHeartbeat
	}
	return rpcAppend
}

func (t *countingTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	t.sent.add(id, appendKind(args))
	return t.Transport.AppendEntries(id, target, args, resp)
}

func (t *countingTransport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	p, err := t.Transport.AppendEntriesPipeline(id, target)
	if err != nil {
		return nil, err
	}
	return &countingPipeline{AppendPipeline: p, peer: id, sent: t.sent}, nil
}

func (t *countingTransport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	t.sent.add(id, rpcVote)
	return t.Transport.RequestVote(id, target, args, resp)
}

func (t *countingTransport) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	t.sent.add(id, rpcSnapshot)
	return t.Transport.InstallSnapshot(id, target, args, resp, data)
}

func (t *countingTransport) TimeoutNow(id raft.ServerID, target raft.ServerAddress, args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	t.sent.add(id, rpcTimeoutNow)
	return t.Transport.TimeoutNow(id, target, args, resp)
}

// RequestPreVote keeps raft's pre-vote: raft uses it only when the
// transport offers it.
func (t *countingTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	t.sent.add(id, rpcPreVote)
	return t.Transport.(raft.WithPreVote).RequestPreVote(id, target, args, resp)
}

// Close closes the wrapped transport (raft closes a closable transport on
// shutdown).
func (t *countingTransport) Close() error {
	if c, ok := t.Transport.(raft.WithClose); ok {
		return c.Close()
	}
	return nil
}

type countingPipeline struct {
	raft.AppendPipeline
	peer raft.ServerID
	sent *rpcCounts
}

func (p *countingPipeline) AppendEntries(args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	p.sent.add(p.peer, appendKind(args))
	return p.AppendPipeline.AppendEntries(args, resp)
}

var (
	_ raft.WithPreVote = (*countingTransport)(nil)
	_ raft.WithClose   = (*countingTransport)(nil)
)
