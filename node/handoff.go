package node

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/grapevine-net/grapevine/internal/atomicfile"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// The CNI network configuration the agent hands to the container runtime.
const (
	// DefaultCNIConfDir is where runtimes look for network configurations.
	DefaultCNIConfDir = "/etc/cni/net.d"
	ConflistName      = "10-grapevine.conflist"
	NetworkName       = "grapevine"
	// CompatCNIVersion is the conflist's cniVersion unless the operator pins
	// one. Runtimes built with libcni before v1.2 (containerd 1.6 and 1.7,
	// podman 4) know result versions up to 1.0.0 only and fail every pod
	// whose plugin answers in 1.1.0.
	CompatCNIVersion = "1.0.0"
)

// OfferedCNIVersions is the spec's cniVersions list of the conflist unless
// the operator pins a version: libcni v1.2 and later use the highest
// version in it that they implement (1.1.0 brings GC and STATUS); older
// libcni ignores the list and reads cniVersion.
func OfferedCNIVersions() []string { return []string{CompatCNIVersion, "1.1.0"} }

// SupportedCNIVersions are the spec versions grapevine-cni and
// grapevine-ipam speak, and so the versions a conflist may name.
func SupportedCNIVersions() []string { return []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} }

// ValidateCNIVersion accepts "" (the default: CompatCNIVersion offering
// OfferedCNIVersions) and every version in SupportedCNIVersions.
func ValidateCNIVersion(v string) error {
	if v == "" || slices.Contains(SupportedCNIVersions(), v) {
		return nil
	}
	return fmt.Errorf("CNI version %q is not one of %s", v, strings.Join(SupportedCNIVersions(), ", "))
}

// Handoff names the files through which the agent tells the container
// runtime and the CNI plugin that this node can wire pods: node.json in
// RunDir, which the plugin reads, and the conflist in CNIConfDir, whose
// presence the runtime takes for "network ready" (containerd never asks the
// plugin's STATUS). The conflist exists only while node.json holds the block
// this node owns.
type Handoff struct {
	RunDir string
	// CNIConfDir is where the conflist goes; empty: write none.
	CNIConfDir string
	// StateDir holds the IPAM store, StateDir/ipam.
	StateDir string
	// CNIVersion pins the conflist's cniVersion; empty: CompatCNIVersion,
	// with OfferedCNIVersions for runtimes that read the list.
	CNIVersion string
}

// Write hands the node over: node.json first, then, if CNIConfDir is set,
// the conflist, so a runtime that sees the conflist finds node.json. Both are
// replaced atomically and only when their contents change. When either
// cannot be written, Write withdraws the hand-off (see Remove) rather than
// leave a conflist that promises pods a node.json that is missing or stale.
func (h Handoff) Write(s nodestate.State) error {
	if !filepath.IsAbs(h.RunDir) {
		return fmt.Errorf("hand-off: run directory %q is not an absolute path", h.RunDir)
	}
	if err := h.write(s); err != nil {
		return errors.Join(err, h.Remove())
	}
	return nil
}

func (h Handoff) write(s nodestate.State) error {
	if err := s.Validate(); err != nil {
		return fmt.Errorf("hand-off: %w", err)
	}
	var conflist []byte
	if h.CNIConfDir != "" {
		var err error
		if conflist, err = h.Conflist(); err != nil {
			return err
		}
	}

	if cur, err := nodestate.Read(h.RunDir); err != nil || cur != s {
		if err := nodestate.Write(h.RunDir, s); err != nil {
			return fmt.Errorf("hand-off: %w", err)
		}
	}
	if h.CNIConfDir == "" {
		return nil
	}
	path := filepath.Join(h.CNIConfDir, ConflistName)
	if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, conflist) {
		return nil
	}
	if err := atomicfile.Write(path, conflist, 0o644); err != nil {
		return fmt.Errorf("hand-off: %w", err)
	}
	return nil
}

// Remove withdraws the hand-off while this node holds no block: the
// conflist first, so the runtime reports the network not ready and stops
// sending pods, then node.json, so the plugin answers "try again later".
// Missing files are not an error.
func (h Handoff) Remove() error {
	if !filepath.IsAbs(h.RunDir) {
		return fmt.Errorf("hand-off: run directory %q is not an absolute path", h.RunDir)
	}
	if err := h.removeConflist(); err != nil {
		return err
	}
	if err := nodestate.Remove(h.RunDir); err != nil {
		return fmt.Errorf("hand-off: %w", err)
	}
	return nil
}

// RemoveStaleConflist removes the conflist when node.json is missing or
// unusable, and reports whether it did. An agent calls it before it first
// knows its block: /run is emptied by a reboot while the conflist in /etc
// survives it, and the runtime would report the network ready before this
// run holds a block.
func (h Handoff) RemoveStaleConflist() (bool, error) {
	if !filepath.IsAbs(h.RunDir) {
		return false, fmt.Errorf("hand-off: run directory %q is not an absolute path", h.RunDir)
	}
	if h.CNIConfDir == "" {
		return false, nil
	}
	if _, err := nodestate.Read(h.RunDir); err == nil {
		return false, nil
	}
	if _, err := os.Stat(filepath.Join(h.CNIConfDir, ConflistName)); errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err := h.removeConflist(); err != nil {
		return false, err
	}
	return true, nil
}

func (h Handoff) removeConflist() error {
	if h.CNIConfDir == "" {
		return nil
	}
	err := os.Remove(filepath.Join(h.CNIConfDir, ConflistName))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("hand-off: remove conflist: %w", err)
	}
	return nil
}

// Conflist returns the network configuration list: grapevine-cni with
// grapevine-ipam keeping its store under StateDir/ipam, then portmap. Both
// directories are the agent's own, so several agents on one machine (the
// lab) never share a file.
func (h Handoff) Conflist() ([]byte, error) {
	if !filepath.IsAbs(h.RunDir) || !filepath.IsAbs(h.StateDir) {
		return nil, fmt.Errorf("hand-off: run directory %q and state directory %q must be absolute paths", h.RunDir, h.StateDir)
	}
	if err := ValidateCNIVersion(h.CNIVersion); err != nil {
		return nil, fmt.Errorf("hand-off: %w", err)
	}
	cniVersion, offered := h.CNIVersion, []string(nil)
	if cniVersion == "" {
		cniVersion, offered = CompatCNIVersion, OfferedCNIVersions()
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
		CNIVersion  string   `json:"cniVersion"`
		CNIVersions []string `json:"cniVersions,omitempty"`
		Name        string   `json:"name"`
		Plugins     []any    `json:"plugins"`
	}{
		CNIVersion:  cniVersion,
		CNIVersions: offered,
		Name:        NetworkName,
		Plugins: []any{
			grapevineConf{
				Type:   "grapevine-cni",
				RunDir: filepath.Clean(h.RunDir),
				IPAM:   ipamConf{Type: "grapevine-ipam", DataDir: nodestate.IPAMDataDir(h.StateDir)},
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
