// Package nodestate owns node.json, the one file through which the agent
// tells the CNI plugin and IPAM about this node: its name, the block it holds,
// the lease under which it may hand out addresses from it, the pool, its host
// address and the MTU pods should use, in a dual-stack cluster its IPv6
// block and pool, and, when network policy is on, the socket on which the
// policy enforcer (grapevine-policy) must hear of each new pod before ADD
// returns.
//
// The agent is the only writer; the plugin, IPAM and the policy enforcer
// (for the blocks whose unknown addresses it denies) only read. The file is
// replaced atomically (write to a temporary file, fsync, rename), so a reader
// sees either the old or the new contents, never a torn write. This package
// has no dependency on gossip or netlink so the CNI binaries stay small.
package nodestate

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/grapevine-net/grapevine/internal/atomicfile"
	"github.com/grapevine-net/grapevine/internal/hostclock"
)

// FileName is the name of the state file inside the agent's run directory.
const FileName = "node.json"

// Where the agent keeps its files unless told otherwise: FileName in the run
// directory; its claim and IPAM's reservations (IPAMDataDir) in the state
// directory.
const (
	DefaultRunDir   = "/run/grapevine"
	DefaultStateDir = "/var/lib/grapevine"
)

// IPAMDataDir is where grapevine-ipam keeps its reservations inside the
// agent's state directory.
func IPAMDataDir(stateDir string) string { return filepath.Join(stateDir, "ipam") }

// The MTU range pod interfaces accept: IPv4's minimum datagram size that
// every host must accept, up to the largest an IPv4 packet can be.
const (
	MinMTU = 576
	MaxMTU = 65535
)

// CheckMTU accepts 0 (take the uplink's MTU) or MinMTU-MaxMTU.
func CheckMTU(mtu int) error {
	if mtu != 0 && (mtu < MinMTU || mtu > MaxMTU) {
		return fmt.Errorf("mtu %d is out of range: 0 (the interface's) or %d-%d", mtu, MinMTU, MaxMTU)
	}
	return nil
}

// ErrNotReady means the agent has not written a usable state file yet: it is
// not running, or it holds no block. CNI callers map it to error code 11
// ("try again later").
var ErrNotReady = errors.New("grapevine agent is not ready: no block assigned to this node yet")

// ErrLeaseEnded means the lease in node.json has ended: the agent has not
// renewed it with the ledger's leader in time (it is stopped, hung, or cut
// off). New addresses must not be handed out, since the ledger may give the
// block to another host once the lease has ended; CNI callers map it to
// error code 11 ("try again later"). Existing pods are unaffected.
var ErrLeaseEnded = errors.New("this node's lease on its block has ended")

// State is the contents of node.json.
type State struct {
	Node   string       `json:"node"`
	Block  netip.Prefix `json:"block"`
	Pool   netip.Prefix `json:"pool"`
	HostIP netip.Addr   `json:"hostIP"`
	MTU    int          `json:"mtu"`
	Lease  Lease        `json:"lease"`
	// Block6 is this node's IPv6 block, set when the cluster has an IPv6
	// pool (Pool6): pods then get an address from each block. Both are
	// absent from an IPv4-only node's file, which reads as before.
	Block6 netip.Prefix `json:"block6,omitzero"`
	Pool6  netip.Prefix `json:"pool6,omitzero"`
	// PolicySocket is set while network policy is on (the agent's
	// --policy-socket): the Unix socket of the policy enforcer (package
	// netpol/admit) the plugin tells each new pod to and waits on before
	// ADD returns, so that the pod's policies are in force before its
	// first packet. Absent otherwise, and then ADD makes no extra round
	// trip.
	PolicySocket string `json:"policySocket,omitempty"`
}

// MaxBlock6Bits is the longest IPv6 block prefix: a /120 still holds 255
// pod addresses.
const MaxBlock6Bits = 120

// Lease is the ledger leader's grant of Block to this host: addresses may
// be handed out from Block until Ends on the host clock (package hostclock).
type Lease struct {
	Ends hostclock.Instant `json:"ends"`
	// Renewed and EndsAt are wall-clock times, for people reading errors
	// and the file: when the agent asked for the grant, and when it ends.
	Renewed time.Time `json:"renewed"`
	EndsAt  time.Time `json:"endsAt"`
}

// NewLease is a lease asked for at asked (host clock) and at renewed (wall
// clock), granted for d.
func NewLease(asked hostclock.Instant, renewed time.Time, d time.Duration) Lease {
	return Lease{Ends: asked.Add(d), Renewed: renewed.UTC().Round(0), EndsAt: renewed.Add(d).UTC().Round(0)}
}

// LeaseFromNow is a lease of d from now on this host's clock: what tests,
// benchmarks and labs without an agent hand the plugin.
func LeaseFromNow(d time.Duration) (Lease, error) {
	now, err := hostclock.Now()
	if err != nil {
		return Lease{}, err
	}
	return NewLease(now, time.Now(), d), nil
}

// LeaseError is nil while the lease holds at now, and otherwise an error
// wrapping ErrLeaseEnded that says since when the agent has not renewed it
// and what to check.
func (s State) LeaseError(now hostclock.Instant) error {
	if now.Before(s.Lease.Ends) {
		return nil
	}
	why := "it ended at " + s.Lease.EndsAt.UTC().Format(time.RFC3339)
	switch {
	case s.Lease.Ends.IsZero():
		why = "node.json holds no lease (written by an older agent?)"
	case s.Lease.Ends.Boot != now.Boot:
		why = "it was granted before this host last booted"
	}
	return fmt.Errorf("%w: the grapevine agent has not renewed its lease on block %s since %s (%s); "+
		"check that the agent is running and reaches the ledger's leader (grapevine status)",
		ErrLeaseEnded, s.Block, s.Lease.Renewed.UTC().Format(time.RFC3339), why)
}

// Validate reports whether s is usable by the plugin: a block inside the pool
// and a sane MTU.
func (s State) Validate() error {
	switch {
	case !s.Block.IsValid():
		return ErrNotReady
	case !s.Pool.IsValid():
		return fmt.Errorf("node state: pool is missing")
	case s.Block.Bits() < s.Pool.Bits() || !s.Pool.Contains(s.Block.Addr()):
		return fmt.Errorf("node state: block %s is not inside pool %s", s.Block, s.Pool)
	case s.Block.Masked() != s.Block:
		return fmt.Errorf("node state: block %s is not a network address", s.Block)
	}
	if err := CheckMTU(s.MTU); err != nil {
		return fmt.Errorf("node state: %w", err)
	}
	if s.PolicySocket != "" && !filepath.IsAbs(s.PolicySocket) {
		return fmt.Errorf("node state: policySocket %q is not an absolute path", s.PolicySocket)
	}
	return s.validate6()
}

// Blocks are the node's blocks pods get an address from: Block, and Block6
// when the node has one.
func (s State) Blocks() []netip.Prefix {
	if s.Block6.IsValid() {
		return []netip.Prefix{s.Block, s.Block6}
	}
	return []netip.Prefix{s.Block}
}

// validate6 checks the optional IPv6 block: absent, or an IPv6 network of
// MaxBlock6Bits or shorter inside an IPv6 pool.
func (s State) validate6() error {
	switch {
	case !s.Block6.IsValid() && !s.Pool6.IsValid():
		return nil
	case !s.Block6.IsValid():
		return fmt.Errorf("node state: pool6 %s is set but block6 is missing", s.Pool6)
	case !s.Pool6.IsValid():
		return fmt.Errorf("node state: block6 %s is set but pool6 is missing", s.Block6)
	case !s.Block6.Addr().Is6() || s.Block6.Addr().Is4In6() || !s.Pool6.Addr().Is6():
		return fmt.Errorf("node state: block6 %s and pool6 %s must be IPv6", s.Block6, s.Pool6)
	case s.Block6.Bits() > MaxBlock6Bits:
		return fmt.Errorf("node state: block6 %s is longer than /%d", s.Block6, MaxBlock6Bits)
	case s.Block6.Bits() < s.Pool6.Bits() || !s.Pool6.Contains(s.Block6.Addr()):
		return fmt.Errorf("node state: block6 %s is not inside pool6 %s", s.Block6, s.Pool6)
	case s.Block6.Masked() != s.Block6:
		return fmt.Errorf("node state: block6 %s is not a network address", s.Block6)
	}
	return nil
}

// Path returns the state file's path inside runDir.
func Path(runDir string) string {
	if runDir == "" {
		runDir = DefaultRunDir
	}
	return filepath.Join(runDir, FileName)
}

// Read loads and validates the state file in runDir. A missing file, or one
// without a block, yields an error wrapping ErrNotReady.
func Read(runDir string) (State, error) {
	var s State
	data, err := os.ReadFile(Path(runDir))
	if errors.Is(err, os.ErrNotExist) {
		return s, fmt.Errorf("%w (%s does not exist)", ErrNotReady, Path(runDir))
	}
	if err != nil {
		return s, fmt.Errorf("read node state: %w", err)
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return s, fmt.Errorf("parse node state %s: %w", Path(runDir), err)
	}
	if err := s.Validate(); err != nil {
		return s, err
	}
	return s, nil
}

// Write replaces the state file in runDir atomically.
func Write(runDir string, s State) error {
	if err := s.Validate(); err != nil {
		return err
	}
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode node state: %w", err)
	}
	return atomicfile.Write(Path(runDir), append(data, '\n'), 0o644)
}

// Remove deletes the state file, so new pods fail with ErrNotReady. A missing
// file is not an error.
func Remove(runDir string) error {
	err := os.Remove(Path(runDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove node state: %w", err)
	}
	return nil
}
