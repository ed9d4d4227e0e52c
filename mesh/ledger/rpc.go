package ledger

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"time"
)

// Ledger RPCs: one request and one response per connection, each a frame of
// at most maxFrame bytes of strict, versioned JSON. A node that is not the
// leader forwards a request once (Forwarded set) to the leader it knows; a
// forwarded request never travels further.

type rpcRequest struct {
	V         int             `json:"v"`
	Op        string          `json:"op"`
	Forwarded bool            `json:"fwd,omitempty"`
	Join      *joinRequest    `json:"join,omitempty"`
	Claim     *Claim          `json:"claim,omitempty"`
	Release   *releaseRequest `json:"release,omitempty"`
	Report    *reportRequest  `json:"report,omitempty"`
}

// reportRequest asks the node itself (never forwarded) for its report
// (Config.Report): what `grapevine doctor --all` gathers from every host.
type reportRequest struct{}

// joinRequest asks the leader to add the sender as a non-voter.
type joinRequest struct {
	ID        NodeID         `json:"id"`
	Name      string         `json:"name"`
	Addr      netip.AddrPort `json:"addr"`
	ClusterID ClusterID      `json:"cluster"` // the ledger it holds or asks to join; zero: any
	Pool      netip.Prefix   `json:"pool"`
	BlockBits int            `json:"bits"`
}

type releaseRequest struct {
	Name string `json:"name"`
}

type rpcResponse struct {
	V         int          `json:"v"`
	Block     netip.Prefix `json:"block"`
	ClusterID ClusterID    `json:"cluster"`
	// Index is the log index of the entry that confirmed a claim, and
	// LeaseMs the lease the leader granted with it.
	Index   uint64 `json:"index,omitempty"`
	LeaseMs int64  `json:"leaseMs,omitempty"`
	// WaitMs is how long until the lease a refused release waits for ends.
	WaitMs int64  `json:"waitMs,omitempty"`
	Code   string `json:"code,omitempty"`
	Error  string `json:"error,omitempty"`
	// Report is the answer to a report request: JSON the ledger does not
	// read.
	Report json.RawMessage `json:"report,omitempty"`
}

func encodeRequest(r rpcRequest) ([]byte, error) {
	r.V = wireVersion
	return json.Marshal(r)
}

// decodeRequest decodes and validates a request from any peer with the key;
// whatever the bytes, it returns an error, never panics.
func decodeRequest(b []byte) (rpcRequest, error) {
	var r rpcRequest
	if len(b) > maxFrame {
		return rpcRequest{}, errFrameTooLarge
	}
	if err := strictUnmarshal(b, &r); err != nil {
		return rpcRequest{}, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	if r.V != wireVersion {
		return rpcRequest{}, fmt.Errorf("%w: version %d", ErrBadRequest, r.V)
	}
	bodies := 0
	for _, set := range []bool{r.Join != nil, r.Claim != nil, r.Release != nil, r.Report != nil} {
		if set {
			bodies++
		}
	}
	if bodies != 1 {
		return rpcRequest{}, fmt.Errorf("%w: %q with %d bodies", ErrBadRequest, r.Op, bodies)
	}
	switch {
	case r.Op == "join" && r.Join != nil:
		j := r.Join
		if j.ID.IsZero() {
			return rpcRequest{}, fmt.Errorf("%w: join with zero node ID", ErrBadRequest)
		}
		if err := validName(j.Name); err != nil {
			return rpcRequest{}, err
		}
		if !j.Addr.IsValid() || j.Addr.Port() == 0 || j.Addr.Addr().IsUnspecified() || j.Addr.Addr().Zone() != "" {
			return rpcRequest{}, fmt.Errorf("%w: join address %q", ErrBadRequest, j.Addr)
		}
		if err := validatePool(j.Pool, j.BlockBits); err != nil {
			return rpcRequest{}, err
		}
	case r.Op == "claim" && r.Claim != nil:
		c := r.Claim
		if err := validClaimant(c.ID, c.Name, c.HostIP); err != nil {
			return rpcRequest{}, err
		}
		if c.Hint.IsValid() && c.Hint.Addr().Zone() != "" {
			return rpcRequest{}, fmt.Errorf("%w: hint %q", ErrBadRequest, c.Hint)
		}
	case r.Op == "release" && r.Release != nil:
		if err := validName(r.Release.Name); err != nil {
			return rpcRequest{}, err
		}
	case r.Op == "report" && r.Report != nil && !r.Forwarded:
	default:
		return rpcRequest{}, fmt.Errorf("%w: unknown operation %q", ErrBadRequest, r.Op)
	}
	return r, nil
}

func decodeResponse(b []byte) (rpcResponse, error) {
	var r rpcResponse
	// A malformed answer is the peer's fault, not a refusal of the request:
	// the error has no kind, so callers retry.
	if err := strictUnmarshal(b, &r); err != nil {
		return rpcResponse{}, fmt.Errorf("malformed ledger answer: %v", err)
	}
	if r.V != wireVersion {
		return rpcResponse{}, fmt.Errorf("ledger answer of version %d", r.V)
	}
	if len(r.Error) > 1024 {
		r.Error = r.Error[:1024]
	}
	return r, nil
}

func responseFor(block netip.Prefix, cluster ClusterID, err error) rpcResponse {
	r := rpcResponse{V: wireVersion, Block: block, ClusterID: cluster}
	if err != nil {
		r.Code, r.Error = errorCode(err), err.Error()
		r.Block = netip.Prefix{}
		if wait, ok := LeaseWait(err); ok {
			r.WaitMs = max(wait.Milliseconds(), 1)
		}
	}
	return r
}

// remoteError is an error returned by another node; it keeps its kind.
type remoteError struct {
	kind error
	msg  string
	wait time.Duration // with ErrLeaseActive
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

func (r rpcResponse) err() error {
	if r.Code == "" && r.Error == "" {
		return nil
	}
	msg := r.Error
	if msg == "" {
		msg = r.Code
	}
	return &remoteError{kind: errorKind(r.Code), msg: msg, wait: time.Duration(r.WaitMs) * time.Millisecond}
}
