package node

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/grapevine-net/grapevine/internal/atomicfile"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// The CNI network configuration the agent hands to the container runtime.
const (
	// DefaultCNIConfDir is where runtimes look for network configurations.
	DefaultCNIConfDir = "/etc/cni/net.d"
	ConflistName      = "10-grapevine.conflist"
	NetworkName       = "grapevine"
	CNIVersion        = "1.1.0"
)

// WriteHandoff tells the CNI plugin that this node can wire pods: it writes
// <runDir>/node.json and then, if cniConfDir is not empty, the conflist there,
// in that order, so a runtime that sees the conflist finds node.json. Both are
// replaced atomically and only when their contents change.
func WriteHandoff(runDir, cniConfDir, stateDir string, s nodestate.State) error {
	if !filepath.IsAbs(runDir) {
		return fmt.Errorf("hand-off: run directory %q is not an absolute path", runDir)
	}
	if err := s.Validate(); err != nil {
		return fmt.Errorf("hand-off: %w", err)
	}
	var conflist []byte
	if cniConfDir != "" {
		var err error
		if conflist, err = Conflist(runDir, stateDir); err != nil {
			return err
		}
	}

	if cur, err := nodestate.Read(runDir); err != nil || cur != s {
		if err := nodestate.Write(runDir, s); err != nil {
			return fmt.Errorf("hand-off: %w", err)
		}
	}
	if cniConfDir == "" {
		return nil
	}
	path := filepath.Join(cniConfDir, ConflistName)
	if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, conflist) {
		return nil
	}
	if err := atomicfile.Write(path, conflist, 0o644); err != nil {
		return fmt.Errorf("hand-off: %w", err)
	}
	return nil
}

// RemoveHandoff withdraws the hand-off while this node holds no block: the
// conflist first, so the runtime stops sending pods, then node.json, so the
// plugin answers "try again later". Missing files are not an error.
func RemoveHandoff(runDir, cniConfDir string) error {
	if !filepath.IsAbs(runDir) {
		return fmt.Errorf("hand-off: run directory %q is not an absolute path", runDir)
	}
	if cniConfDir != "" {
		err := os.Remove(filepath.Join(cniConfDir, ConflistName))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("hand-off: remove conflist: %w", err)
		}
	}
	if err := nodestate.Remove(runDir); err != nil {
		return fmt.Errorf("hand-off: %w", err)
	}
	return nil
}

// Conflist returns the network configuration list: grapevine-cni with
// grapevine-ipam keeping its store under stateDir/ipam, then portmap. Both
// directories are the agent's own, so several agents on one machine (the
// lab) never share a file.
func Conflist(runDir, stateDir string) ([]byte, error) {
	if !filepath.IsAbs(runDir) || !filepath.IsAbs(stateDir) {
		return nil, fmt.Errorf("hand-off: run directory %q and state directory %q must be absolute paths", runDir, stateDir)
	}
	type ipamConf struct {
		Type    string `json:"type"`
		DataDir string `json:"dataDir"`
	}
	type grapevineConf struct {
		Type   string `json:"type"`
		RunDir string `json:"runDir"`
		// MTU 0 makes the plugin take the MTU from node.json, so an MTU
		// change rewrites only that file.
		MTU  int      `json:"mtu"`
		IPAM ipamConf `json:"ipam"`
	}
	list := struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		Plugins    []any  `json:"plugins"`
	}{
		CNIVersion: CNIVersion,
		Name:       NetworkName,
		Plugins: []any{
			grapevineConf{
				Type:   "grapevine-cni",
				RunDir: filepath.Clean(runDir),
				IPAM:   ipamConf{Type: "grapevine-ipam", DataDir: nodestate.IPAMDataDir(stateDir)},
			},
			portmapConf(),
		},
	}
	data, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("hand-off: encode conflist: %w", err)
	}
	return append(data, '\n'), nil
}

// portmapConf is the chained portmap plugin's entry; settings it needs
// beyond the capability (a backend, a masquerade mark) go here.
func portmapConf() map[string]any {
	return map[string]any{
		"type":         "portmap",
		"capabilities": map[string]bool{"portMappings": true},
	}
}
