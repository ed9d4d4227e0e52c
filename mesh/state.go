package mesh

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/grapevine-net/grapevine/internal/atomicfile"
	"github.com/grapevine-net/grapevine/mesh/ledger"
)

// BlockFileName is the saved block inside Config.StateDir.
const BlockFileName = "block.json"

// savedBlock is the contents of block.json: the block this node last held
// and when the ledger last confirmed it, by this host's own clock. A
// restarted agent uses it at once only under the restart rule (see
// restorable); otherwise it is the hint of its first claim.
type savedBlock struct {
	Node  string        `json:"node"`
	ID    ledger.NodeID `json:"id"`
	Block netip.Prefix  `json:"block"`
	// LastConfirmed is when this host last knew, from a leader it heard
	// from, that the ledger assigned Block to ID.
	LastConfirmed time.Time `json:"lastConfirmed"`
	// Incarnation is Config.Incarnation's value when the ledger last
	// confirmed Block (absent without one): the restart rule applies only
	// while it still holds.
	Incarnation string `json:"incarnation,omitempty"`
}

func blockFilePath(stateDir string) string { return filepath.Join(stateDir, BlockFileName) }

// loadBlock reads block.json. A missing file is no block (nil, nil); a file
// that cannot be parsed is an error, because silently claiming another
// block would strand the pods that hold addresses of the saved one. A file
// of the vote protocol's era (no ID) is read as a hint only.
func loadBlock(stateDir string) (*savedBlock, error) {
	path := blockFilePath(stateDir)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read saved block: %w", err)
	}
	var c struct {
		savedBlock
		ID *ledger.NodeID `json:"id"`
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("parse saved block %s (remove it to claim a new block): %w", path, err)
	}
	if !c.Block.IsValid() {
		return nil, fmt.Errorf("saved block file %s has no block (remove it to claim a new block)", path)
	}
	s := c.savedBlock
	if c.ID != nil {
		s.ID = *c.ID
	}
	return &s, nil
}

func saveBlock(stateDir string, b savedBlock) error {
	data, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return fmt.Errorf("encode saved block: %w", err)
	}
	if err := atomicfile.Write(blockFilePath(stateDir), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("save block: %w", err)
	}
	return nil
}

// restorable is the restart rule: a restarted agent hands out addresses
// from its saved block before the ledger confirms it only if the block was
// confirmed less than half of ReclaimAfter ago by this host's clock, for
// this node ID, and its local copy of the ledger still assigns it to this
// node. The leader frees a block only after seeing its owner gone for
// ReclaimAfter, so within half of it the block cannot have moved unless an
// operator released it, which the local copy would show if it was
// replicated here before the crash. It returns nil if the rule holds,
// otherwise why not.
func restorable(s *savedBlock, id ledger.NodeID, now time.Time, reclaimAfter time.Duration, st ledger.State) error {
	switch {
	case s == nil:
		return errors.New("no block saved")
	case s.ID != id:
		return fmt.Errorf("saved by node ID %s, this node is %s", s.ID, id)
	case s.LastConfirmed.IsZero():
		return errors.New("never confirmed by the ledger")
	}
	age := now.Sub(s.LastConfirmed)
	if age < 0 {
		return fmt.Errorf("confirmed at %s, later than this host's clock says it is now", s.LastConfirmed.Format(time.RFC3339))
	}
	if age >= reclaimAfter/2 {
		return fmt.Errorf("last confirmed %s ago, not within half of --reclaim-after (%s)", age.Round(time.Second), reclaimAfter)
	}
	o, ok := st.Blocks[s.Block]
	switch {
	case !ok:
		return errors.New("this node's copy of the ledger no longer assigns it (released or reclaimed)")
	case o.ID != id:
		return fmt.Errorf("this node's copy of the ledger assigns it to %s", o.Name)
	}
	return nil
}
