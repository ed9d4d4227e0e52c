package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/grapevine-net/grapevine/internal/hostclock"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// Type is the IPAM type naming grapevine-ipam in a network configuration.
const Type = "grapevine-ipam"

// DefaultDataDir is where reservations are kept unless ipam.dataDir says
// otherwise: the place the agent's conflist names under its default state
// directory.
var DefaultDataDir = nodestate.IPAMDataDir(nodestate.DefaultStateDir)

// Config is what grapevine-ipam reads from the network configuration: the
// top-level name and runDir (shared with grapevine-cni) and ipam.dataDir.
type Config struct {
	// Network is the network name; reservations live in DataDir/Network.
	Network string
	// RunDir holds node.json.
	RunDir string
	// DataDir is the root of the reservation store.
	DataDir string
}

// StoreDir is the directory holding this network's reservations.
func (c Config) StoreDir() string { return filepath.Join(c.DataDir, c.Network) }

type netConf struct {
	Name   string `json:"name"`
	RunDir string `json:"runDir"`
	IPAM   struct {
		Type    string `json:"type"`
		DataDir string `json:"dataDir"`
	} `json:"ipam"`
}

// ParseConfig extracts Config from a network configuration, applying
// defaults. Syntax errors are CNI error 6, bad values CNI error 7.
func ParseConfig(stdin []byte) (Config, error) {
	var nc netConf
	if err := json.Unmarshal(stdin, &nc); err != nil {
		return Config{}, DecodeError(err)
	}
	cfg := Config{Network: nc.Name, RunDir: nc.RunDir, DataDir: nc.IPAM.DataDir}
	if cfg.RunDir == "" {
		cfg.RunDir = nodestate.DefaultRunDir
	}
	if cfg.DataDir == "" {
		cfg.DataDir = DefaultDataDir
	}
	switch {
	case cfg.Network == "":
		return Config{}, types.NewError(types.ErrInvalidNetworkConfig, "network name is missing", "")
	case !filepath.IsAbs(cfg.RunDir):
		return Config{}, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("runDir %q is not an absolute path", cfg.RunDir), "")
	case !filepath.IsAbs(cfg.DataDir):
		return Config{}, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("ipam.dataDir %q is not an absolute path", cfg.DataDir), "")
	}
	return cfg, nil
}

// DecodeError turns a JSON decoding error into the CNI error the spec asks
// for: 6 when the bytes are not JSON, 7 when a field has the wrong type.
func DecodeError(err error) *types.Error {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		return types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("network config field %q: cannot use a JSON %s as %s", typeErr.Field, typeErr.Value, typeErr.Type), "")
	}
	return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("decode network config: %v", err), "")
}

// ReadNodeState reads node.json from runDir for an ADD: the block may hand
// out a new address only while the lease in it holds. When the agent has
// not written a block yet, the file cannot be read or parsed (the agent
// rewrites it), or the lease has ended, the error is CNI error 11 (try
// again later) saying so.
func ReadNodeState(runDir string) (nodestate.State, error) {
	st, err := nodestate.Read(runDir)
	if err != nil {
		return st, types.NewError(types.ErrTryAgainLater, err.Error(), "")
	}
	if lerr := LeaseHolds(st); lerr != nil {
		return st, lerr
	}
	return st, nil
}

// LeaseHolds is nil while node.json's lease holds on the host clock, and
// otherwise CNI error 11 saying since when the agent has not renewed it.
// ADD asks again after it reserved an address, so that an address is
// handed out only if the lease held once it was taken.
func LeaseHolds(st nodestate.State) *types.Error {
	now, err := hostclock.Now()
	if err != nil {
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	if err := st.LeaseError(now); err != nil {
		return types.NewError(types.ErrTryAgainLater, err.Error(), "")
	}
	return nil
}
