package node

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/grapevine-net/grapevine/ipam"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

var testState = nodestate.State{
	Node:   "host1",
	Block:  pfx("172.20.24.0/23"),
	Pool:   pfx("172.20.0.0/16"),
	HostIP: addr("172.16.254.113"),
	MTU:    1500,
}

func newHandoff(t *testing.T) Handoff {
	base := t.TempDir()
	return Handoff{RunDir: filepath.Join(base, "run"), CNIConfDir: filepath.Join(base, "net.d"), StateDir: filepath.Join(base, "state")}
}

func conflistPath(h Handoff) string { return filepath.Join(h.CNIConfDir, ConflistName) }

func TestWriteHandoff(t *testing.T) {
	h := newHandoff(t)
	if err := h.Write(testState); err != nil {
		t.Fatal(err)
	}
	got, err := nodestate.Read(h.RunDir)
	if err != nil || got != testState {
		t.Fatalf("node.json = %+v, %v; want %+v", got, err, testState)
	}

	data, err := os.ReadFile(conflistPath(h))
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		CNIVersion  string   `json:"cniVersion"`
		CNIVersions []string `json:"cniVersions"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	// Older runtimes read cniVersion, newer ones pick from cniVersions.
	if raw.CNIVersion != "1.0.0" || !reflect.DeepEqual(raw.CNIVersions, []string{"1.0.0", "1.1.0"}) {
		t.Fatalf("cniVersion %q, cniVersions %q; want 1.0.0 and [1.0.0 1.1.0]\n%s", raw.CNIVersion, raw.CNIVersions, data)
	}
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatalf("libcni rejects the conflist: %v\n%s", err, data)
	}
	if list.Name != "grapevine" || list.CNIVersion != "1.1.0" || len(list.Plugins) != 2 {
		t.Fatalf("libcni reads %s %s with %d plugins, want grapevine 1.1.0 with 2", list.Name, list.CNIVersion, len(list.Plugins))
	}
	var first map[string]any
	if err := json.Unmarshal(list.Plugins[0].Bytes, &first); err != nil {
		t.Fatal(err)
	}
	wantFirst := map[string]any{
		"type": "grapevine-cni", "runDir": h.RunDir, "mtu": 0.0,
		"ipam": map[string]any{"type": "grapevine-ipam", "dataDir": filepath.Join(h.StateDir, "ipam")},
	}
	if !reflect.DeepEqual(first, wantFirst) {
		t.Errorf("first plugin = %v, want %v", first, wantFirst)
	}
	portmap := list.Plugins[1].Network
	if portmap.Type != "portmap" || !portmap.Capabilities["portMappings"] {
		t.Errorf("second plugin = %+v, want portmap with portMappings", portmap)
	}
	leftovers, _ := filepath.Glob(filepath.Join(h.CNIConfDir, ".*"))
	if len(leftovers) != 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
}

func TestConflistPinnedCNIVersion(t *testing.T) {
	for _, v := range SupportedCNIVersions() {
		h := newHandoff(t)
		h.CNIVersion = v
		data, err := h.Conflist()
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		var raw map[string]any
		if err := json.Unmarshal(data, &raw); err != nil {
			t.Fatal(err)
		}
		if raw["cniVersion"] != v {
			t.Errorf("pinned %s: cniVersion %v", v, raw["cniVersion"])
		}
		if _, ok := raw["cniVersions"]; ok {
			t.Errorf("pinned %s: cniVersions %v offered, so newer runtimes would not keep to the pin", v, raw["cniVersions"])
		}
		list, err := libcni.ConfListFromBytes(data)
		if err != nil || list.CNIVersion != v {
			t.Errorf("pinned %s: libcni reads %v, %v", v, list, err)
		}
	}
}

func TestCNIVersionsMatchThePlugins(t *testing.T) {
	plugins := ipam.SupportedVersions().SupportedVersions()
	if !reflect.DeepEqual(SupportedCNIVersions(), plugins) {
		t.Errorf("SupportedCNIVersions() = %v, the plugins speak %v", SupportedCNIVersions(), plugins)
	}
	for _, v := range append(OfferedCNIVersions(), CompatCNIVersion) {
		if !slices.Contains(plugins, v) {
			t.Errorf("the conflist names %s, which the plugins do not speak", v)
		}
	}
}

func TestValidateCNIVersion(t *testing.T) {
	for _, v := range []string{"", "0.3.0", "0.4.0", "1.0.0", "1.1.0"} {
		if err := ValidateCNIVersion(v); err != nil {
			t.Errorf("%q: %v", v, err)
		}
	}
	for _, v := range []string{"1.2.0", "1.0", "v1.0.0", "0.2.0", " 1.0.0", "latest"} {
		err := ValidateCNIVersion(v)
		if err == nil || !strings.Contains(err.Error(), "0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0") {
			t.Errorf("%q: %v, want an error naming the supported versions", v, err)
		}
	}
	h := newHandoff(t)
	h.CNIVersion = "2.0.0"
	if err := h.Write(testState); err == nil {
		t.Fatal("Write accepted cniVersion 2.0.0")
	}
	if _, err := os.Stat(conflistPath(h)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("conflist written with a bad version: %v", err)
	}
}

// TestConflistUnderLibcniV112 reads the written conflist with
// containernetworking/cni v1.1.2, the library in containerd 1.6 and 1.7 and
// podman 4, through the small module in testdata. Such a runtime must see
// cniVersion 1.0.0 and decode a result in it; that it cannot decode a 1.1.0
// result shows the module really runs the old library.
func TestConflistUnderLibcniV112(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command in PATH to build the libcni v1.1.2 reader")
	}
	h := newHandoff(t)
	if err := h.Write(testState); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(goBin, "run", ".", conflistPath(h), "1.1.0")
	cmd.Dir = filepath.Join("testdata", "libcni-v1.1.2")
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("libcni v1.1.2 reader: %v\n%s", err, stderr.String())
	}
	var got struct {
		CNIVersion    string            `json:"cniVersion"`
		Name          string            `json:"name"`
		PluginTypes   []string          `json:"pluginTypes"`
		ResultDecodes map[string]string `json:"resultDecodes"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("libcni v1.1.2 reader printed %q: %v", out, err)
	}
	if got.CNIVersion != "1.0.0" || got.Name != "grapevine" || !reflect.DeepEqual(got.PluginTypes, []string{"grapevine-cni", "portmap"}) {
		t.Errorf("libcni v1.1.2 reads %+v, want grapevine at 1.0.0 with grapevine-cni and portmap", got)
	}
	if got.ResultDecodes["1.0.0"] != "ok" {
		t.Errorf("libcni v1.1.2 cannot decode a 1.0.0 result: %s", got.ResultDecodes["1.0.0"])
	}
	if !strings.Contains(got.ResultDecodes["1.1.0"], "unsupported CNI result version") {
		t.Errorf("libcni v1.1.2 decodes a 1.1.0 result (%q): the reader does not run the old library", got.ResultDecodes["1.1.0"])
	}
}

func TestWriteHandoffRewritesOnlyChanges(t *testing.T) {
	h := newHandoff(t)
	if err := h.Write(testState); err != nil {
		t.Fatal(err)
	}
	statePath, confPath := nodestate.Path(h.RunDir), conflistPath(h)
	old := time.Unix(1_000_000, 0)
	for _, p := range []string{statePath, confPath} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	modified := func(p string) bool {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return !fi.ModTime().Equal(old)
	}

	if err := h.Write(testState); err != nil {
		t.Fatal(err)
	}
	if modified(statePath) || modified(confPath) {
		t.Fatal("unchanged hand-off rewrote a file")
	}

	moved := testState
	moved.Block = pfx("172.20.26.0/23")
	if err := h.Write(moved); err != nil {
		t.Fatal(err)
	}
	if !modified(statePath) || modified(confPath) {
		t.Fatalf("new block: node.json rewritten %v (want true), conflist rewritten %v (want false)",
			modified(statePath), modified(confPath))
	}
	if got, _ := nodestate.Read(h.RunDir); got.Block != moved.Block {
		t.Fatalf("node.json block = %v, want %v", got.Block, moved.Block)
	}
}

func TestWriteHandoffWithoutConfDir(t *testing.T) {
	h := newHandoff(t)
	conf := h.CNIConfDir
	h.CNIConfDir = ""
	if err := h.Write(testState); err != nil {
		t.Fatal(err)
	}
	if _, err := nodestate.Read(h.RunDir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(conf); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("conf dir created: %v", err)
	}
}

func TestWriteHandoffRejectsBadInput(t *testing.T) {
	noBlock := testState
	noBlock.Block = netip.Prefix{}
	cases := map[string]func(h *Handoff, s *nodestate.State){
		"no block":           func(_ *Handoff, s *nodestate.State) { *s = noBlock },
		"relative state dir": func(h *Handoff, _ *nodestate.State) { h.StateDir = "var/lib/grapevine" },
		"relative run dir":   func(h *Handoff, _ *nodestate.State) { h.RunDir = "run/grapevine" },
		"empty run dir":      func(h *Handoff, _ *nodestate.State) { h.RunDir = "" },
		"unknown version":    func(h *Handoff, _ *nodestate.State) { h.CNIVersion = "1.2.0" },
	}
	for name, spoil := range cases {
		t.Run(name, func(t *testing.T) {
			h := newHandoff(t)
			bad, s := h, testState
			spoil(&bad, &s)
			if err := bad.Write(s); err == nil {
				t.Fatal("accepted")
			}
			for _, p := range []string{nodestate.Path(h.RunDir), conflistPath(h)} {
				if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s written for rejected input", p)
				}
			}
		})
	}
}

// A node that can no longer hand over a usable node.json must not keep a
// conflist: the runtime would go on reporting the network ready.
func TestWriteHandoffFailureWithdrawsConflist(t *testing.T) {
	h := newHandoff(t)
	if err := h.Write(testState); err != nil {
		t.Fatal(err)
	}
	// node.json cannot be replaced once its directory is a file.
	if err := os.RemoveAll(h.RunDir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.RunDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	moved := testState
	moved.Block = pfx("172.20.26.0/23")
	if err := h.Write(moved); err == nil {
		t.Fatal("Write succeeded without a run directory")
	}
	if _, err := os.Stat(conflistPath(h)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("conflist kept although node.json could not be written: %v", err)
	}

	invalid := testState
	invalid.Block = netip.Prefix{}
	h = newHandoff(t)
	if err := h.Write(testState); err != nil {
		t.Fatal(err)
	}
	if err := h.Write(invalid); err == nil {
		t.Fatal("Write accepted a state without a block")
	}
	for _, p := range []string{nodestate.Path(h.RunDir), conflistPath(h)} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s kept after a rejected state: %v", p, err)
		}
	}
}

func TestRemoveHandoff(t *testing.T) {
	h := newHandoff(t)
	if err := h.Write(testState); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second time nothing is left to remove
		if err := h.Remove(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := nodestate.Read(h.RunDir); !errors.Is(err, nodestate.ErrNotReady) {
		t.Fatalf("after removal: %v, want ErrNotReady", err)
	}
	if _, err := os.Stat(conflistPath(h)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("conflist still there: %v", err)
	}
	// An empty run directory must not fall back to the system-wide default.
	if err := (Handoff{CNIConfDir: h.CNIConfDir}).Remove(); err == nil {
		t.Fatal("Remove accepted an empty run directory")
	}
}

func TestRemoveStaleConflist(t *testing.T) {
	h := newHandoff(t)
	if err := h.Write(testState); err != nil {
		t.Fatal(err)
	}
	if removed, err := h.RemoveStaleConflist(); err != nil || removed {
		t.Fatalf("with a usable node.json: removed %v, %v; want the conflist kept", removed, err)
	}
	if _, err := os.Stat(conflistPath(h)); err != nil {
		t.Fatal(err)
	}

	// A reboot empties /run but not /etc/cni/net.d.
	if err := os.RemoveAll(h.RunDir); err != nil {
		t.Fatal(err)
	}
	if removed, err := h.RemoveStaleConflist(); err != nil || !removed {
		t.Fatalf("without node.json: removed %v, %v; want the conflist removed", removed, err)
	}
	if _, err := os.Stat(conflistPath(h)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("conflist still there: %v", err)
	}
	if removed, err := h.RemoveStaleConflist(); err != nil || removed {
		t.Fatalf("nothing left: removed %v, %v", removed, err)
	}

	// node.json that no longer holds a block is as good as none.
	h = newHandoff(t)
	if err := h.Write(testState); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(nodestate.Path(h.RunDir), []byte(`{"node": "host1"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if removed, err := h.RemoveStaleConflist(); err != nil || !removed {
		t.Fatalf("node.json without a block: removed %v, %v; want the conflist removed", removed, err)
	}
}
