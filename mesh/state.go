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
)

// BlockFileName is the claim file inside Config.StateDir.
const BlockFileName = "block.json"

// savedClaim is the contents of block.json: the claim a restarted agent takes
// back without a vote.
type savedClaim struct {
	Node  string       `json:"node"`
	Block netip.Prefix `json:"block"`
	Since time.Time    `json:"since"`
	Gen   uint64       `json:"gen"`
}

func blockFilePath(stateDir string) string { return filepath.Join(stateDir, BlockFileName) }

// loadClaim reads block.json. A missing file is no claim (nil, nil); a file
// that cannot be parsed is an error, because silently claiming another block
// would strand the pods that hold addresses of the saved one.
func loadClaim(stateDir string) (*savedClaim, error) {
	path := blockFilePath(stateDir)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read saved claim: %w", err)
	}
	var c savedClaim
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("parse saved claim %s (remove it to claim a new block): %w", path, err)
	}
	if !c.Block.IsValid() || c.Since.IsZero() {
		return nil, fmt.Errorf("saved claim %s has no block or claim time (remove it to claim a new block)", path)
	}
	return &c, nil
}

func saveClaim(stateDir string, c savedClaim) error {
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("encode claim: %w", err)
	}
	if err := atomicfile.Write(blockFilePath(stateDir), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("save claim: %w", err)
	}
	return nil
}
