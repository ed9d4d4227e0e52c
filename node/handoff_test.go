package node

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/grapevine-net/grapevine/node/nodestate"
)

var testState = nodestate.State{
	Node:   "host1",
	Block:  pfx("172.20.24.0/23"),
	Pool:   pfx("172.20.0.0/16"),
	HostIP: addr("172.16.254.113"),
	MTU:    1500,
}

type handoffDirs struct{ run, conf, state string }

func newHandoffDirs(t *testing.T) handoffDirs {
	base := t.TempDir()
	return handoffDirs{filepath.Join(base, "run"), filepath.Join(base, "net.d"), filepath.Join(base, "state")}
}

func TestWriteHandoff(t *testing.T) {
	d := newHandoffDirs(t)
	if err := WriteHandoff(d.run, d.conf, d.state, testState); err != nil {
		t.Fatal(err)
	}
	got, err := nodestate.Read(d.run)
	if err != nil || got != testState {
		t.Fatalf("node.json = %+v, %v; want %+v", got, err, testState)
	}

	data, err := os.ReadFile(filepath.Join(d.conf, ConflistName))
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatalf("libcni rejects the conflist: %v\n%s", err, data)
	}
	if list.Name != "grapevine" || list.CNIVersion != "1.1.0" || len(list.Plugins) != 2 {
		t.Fatalf("conflist = %s %s with %d plugins", list.Name, list.CNIVersion, len(list.Plugins))
	}
	var first map[string]any
	if err := json.Unmarshal(list.Plugins[0].Bytes, &first); err != nil {
		t.Fatal(err)
	}
	wantFirst := map[string]any{
		"type": "grapevine-cni", "runDir": d.run, "mtu": 0.0,
		"ipam": map[string]any{"type": "grapevine-ipam", "dataDir": filepath.Join(d.state, "ipam")},
	}
	if !reflect.DeepEqual(first, wantFirst) {
		t.Errorf("first plugin = %v, want %v", first, wantFirst)
	}
	portmap := list.Plugins[1].Network
	if portmap.Type != "portmap" || !portmap.Capabilities["portMappings"] {
		t.Errorf("second plugin = %+v, want portmap with portMappings", portmap)
	}
	leftovers, _ := filepath.Glob(filepath.Join(d.conf, ".*"))
	if len(leftovers) != 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
}

func TestWriteHandoffRewritesOnlyChanges(t *testing.T) {
	d := newHandoffDirs(t)
	if err := WriteHandoff(d.run, d.conf, d.state, testState); err != nil {
		t.Fatal(err)
	}
	statePath, confPath := nodestate.Path(d.run), filepath.Join(d.conf, ConflistName)
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

	if err := WriteHandoff(d.run, d.conf, d.state, testState); err != nil {
		t.Fatal(err)
	}
	if modified(statePath) || modified(confPath) {
		t.Fatal("unchanged hand-off rewrote a file")
	}

	moved := testState
	moved.Block = pfx("172.20.26.0/23")
	if err := WriteHandoff(d.run, d.conf, d.state, moved); err != nil {
		t.Fatal(err)
	}
	if !modified(statePath) || modified(confPath) {
		t.Fatalf("new block: node.json rewritten %v (want true), conflist rewritten %v (want false)",
			modified(statePath), modified(confPath))
	}
	if got, _ := nodestate.Read(d.run); got.Block != moved.Block {
		t.Fatalf("node.json block = %v, want %v", got.Block, moved.Block)
	}
}

func TestWriteHandoffWithoutConfDir(t *testing.T) {
	d := newHandoffDirs(t)
	if err := WriteHandoff(d.run, "", d.state, testState); err != nil {
		t.Fatal(err)
	}
	if _, err := nodestate.Read(d.run); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d.conf); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("conf dir created: %v", err)
	}
}

func TestWriteHandoffRejectsBadInput(t *testing.T) {
	noBlock := testState
	noBlock.Block = netip.Prefix{}
	cases := map[string]func(d *handoffDirs, s *nodestate.State){
		"no block":           func(_ *handoffDirs, s *nodestate.State) { *s = noBlock },
		"relative state dir": func(d *handoffDirs, _ *nodestate.State) { d.state = "var/lib/grapevine" },
		"relative run dir":   func(d *handoffDirs, _ *nodestate.State) { d.run = "run/grapevine" },
		"empty run dir":      func(d *handoffDirs, _ *nodestate.State) { d.run = "" },
	}
	for name, spoil := range cases {
		t.Run(name, func(t *testing.T) {
			d := newHandoffDirs(t)
			bad, s := d, testState
			spoil(&bad, &s)
			if err := WriteHandoff(bad.run, bad.conf, bad.state, s); err == nil {
				t.Fatal("accepted")
			}
			for _, p := range []string{nodestate.Path(d.run), filepath.Join(d.conf, ConflistName)} {
				if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s written for rejected input", p)
				}
			}
		})
	}
}

func TestRemoveHandoff(t *testing.T) {
	d := newHandoffDirs(t)
	if err := WriteHandoff(d.run, d.conf, d.state, testState); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second time nothing is left to remove
		if err := RemoveHandoff(d.run, d.conf); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := nodestate.Read(d.run); !errors.Is(err, nodestate.ErrNotReady) {
		t.Fatalf("after removal: %v, want ErrNotReady", err)
	}
	if _, err := os.Stat(filepath.Join(d.conf, ConflistName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("conflist still there: %v", err)
	}
	// An empty run directory must not fall back to the system-wide default.
	if err := RemoveHandoff("", d.conf); err == nil {
		t.Fatal("RemoveHandoff accepted an empty run directory")
	}
}
