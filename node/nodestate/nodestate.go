// Package nodestate owns node.json, the one file through which the agent
// tells the CNI plugin and IPAM about this node: its name, the block it holds,
// the pool, its host address and the MTU pods should use.
//
// The agent is the only writer; the plugin and IPAM only read. The file is
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

	"github.com/grapevine-net/grapevine/internal/atomicfile"
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

// State is the contents of node.json.
type State struct {
	Node   string       `json:"node"`
	Block  netip.Prefix `json:"block"`
	Pool   netip.Prefix `json:"pool"`
	HostIP netip.Addr   `json:"hostIP"`
	MTU    int          `json:"mtu"`
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
