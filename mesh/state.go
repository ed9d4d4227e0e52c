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
	"github.com/grapevine-net/grapevine/internal/hostclock"
	"github.com/grapevine-net/grapevine/mesh/ledger"
)

// BlockFileName is the saved block inside Config.StateDir.
const BlockFileName = "block.json"

// savedBlock is the contents of block.json: the block this node last held
// and the lease the ledger's leader last granted on it, on this host's
// clock. A restarted agent uses it at once only while that lease holds
// (see restorable); otherwise it is the hint of its first claim.
type savedBlock struct {
	Node  string        `json:"node"`
	ID    ledger.NodeID `json:"id"`
	Block netip.Prefix  `json:"block"`
	// Lease is when the lease granted on Block ends, on the host clock;
	// Renewed and EndsAt are the wall-clock times of the claim that was
	// granted and of the lease's end, for people.
	Lease   hostclock.Instant `json:"lease"`
	Renewed time.Time         `json:"renewed"`
	EndsAt  time.Time         `json:"endsAt"`
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
// from its saved block before the ledger confirms it only while the lease
// saved with it holds on this host's clock (so not after a reboot), for
// this node ID, and its local copy of the ledger does not assign the block
// to another node. The leader moves a block only after its owner's lease
// has ended (package ledger), so nobody else can hold it meanwhile. The
// local copy is not asked whether it still assigns the block to this node:
// after a crash it may be the last snapshot, without the claim. It
// returns nil if the rule holds, otherwise why not.
func restorable(s *savedBlock, id ledger.NodeID, now hostclock.Instant, st ledger.State) error {
	switch {
	case s == nil:
		return errors.New("no block saved")
	case s.ID != id:
		return fmt.Errorf("saved by node ID %s, this node is %s", s.ID, id)
	case s.Lease.IsZero():
		return errors.New("saved without a lease (by an older agent)")
	case s.Lease.Boot != now.Boot:
		return errors.New("its lease was granted before this host last booted")
	}
	if left, _ := s.Lease.Sub(now); left <= 0 {
		return fmt.Errorf("its lease ended %s ago (renewed at %s)", (-left).Round(time.Second), s.Renewed.Format(time.RFC3339))
	}
	if o, ok := st.Blocks[s.Block]; ok && o.ID != id {
		return fmt.Errorf("this node's copy of the ledger assigns it to %s", o.Name)
	}
	return nil
}
