package ledger

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/grapevine-net/grapevine/internal/atomicfile"
)

// NodeID identifies an agent across restarts and renames. It is random and
// persisted in <state-dir>/node-id; a copied state directory copies it.
type NodeID [16]byte

// ClusterID identifies one ledger, chosen at random when it is founded.
type ClusterID [8]byte

// NewNodeID returns a random node ID.
func NewNodeID() NodeID {
	var id NodeID
	if _, err := rand.Read(id[:]); err != nil {
		panic(fmt.Sprintf("ledger: crypto/rand failed: %v", err)) // rand.Read does not fail on Linux
	}
	return id
}

func newClusterID() ClusterID {
	var id ClusterID
	if _, err := rand.Read(id[:]); err != nil {
		panic(fmt.Sprintf("ledger: crypto/rand failed: %v", err))
	}
	return id
}

func (id NodeID) String() string    { return hex.EncodeToString(id[:]) }
func (id NodeID) IsZero() bool      { return id == NodeID{} }
func (id ClusterID) String() string { return hex.EncodeToString(id[:]) }
func (id ClusterID) IsZero() bool   { return id == ClusterID{} }

// MarshalText encodes the ID as hex.
func (id NodeID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText decodes a hex ID.
func (id *NodeID) UnmarshalText(b []byte) error {
	v, err := ParseNodeID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// MarshalText encodes the ID as hex.
func (id ClusterID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText decodes a hex ID.
func (id *ClusterID) UnmarshalText(b []byte) error {
	v, err := ParseClusterID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// ParseNodeID parses the 32 hex digits written by NodeID.String.
func ParseNodeID(s string) (NodeID, error) {
	var id NodeID
	if err := parseHex(id[:], s); err != nil {
		return NodeID{}, fmt.Errorf("node ID %q: %w", s, err)
	}
	return id, nil
}

// ParseClusterID parses the 16 hex digits written by ClusterID.String.
func ParseClusterID(s string) (ClusterID, error) {
	var id ClusterID
	if err := parseHex(id[:], s); err != nil {
		return ClusterID{}, fmt.Errorf("cluster ID %q: %w", s, err)
	}
	return id, nil
}

func parseHex(dst []byte, s string) error {
	if len(s) != 2*len(dst) {
		return fmt.Errorf("want %d hex digits, got %d characters", 2*len(dst), len(s))
	}
	if _, err := hex.Decode(dst, []byte(s)); err != nil {
		return err
	}
	return nil
}

const nodeIDFile = "node-id"

// LoadOrCreateNodeID reads <dir>/node-id, or creates it with a new random ID
// (written atomically) when it does not exist. A corrupt file is an error,
// never silently replaced: replacing it would orphan this node's block.
func LoadOrCreateNodeID(dir string) (NodeID, error) {
	path := filepath.Join(dir, nodeIDFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		id, err := ParseNodeID(strings.TrimSpace(string(b)))
		if err != nil {
			return NodeID{}, fmt.Errorf("read %s: %w (remove the file to give this node a new identity)", path, err)
		}
		if id.IsZero() {
			return NodeID{}, fmt.Errorf("read %s: node ID is zero (remove the file to give this node a new identity)", path)
		}
		return id, nil
	case !errors.Is(err, os.ErrNotExist):
		return NodeID{}, fmt.Errorf("read node ID: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return NodeID{}, fmt.Errorf("create state dir for node ID: %w", err)
	}
	id := NewNodeID()
	if err := atomicfile.Write(path, []byte(id.String()+"\n"), 0o600); err != nil {
		return NodeID{}, fmt.Errorf("node ID: %w", err)
	}
	return id, nil
}
