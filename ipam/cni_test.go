package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/grapevine-net/grapevine/node/nodestate"
)

// ipamBinary is the grapevine-ipam executable under test, set by TestMain.
var ipamBinary string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if dir := os.Getenv("GRAPEVINE_CNI_PATH"); dir != "" {
		ipamBinary = filepath.Join(dir, Type)
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "gvcni-ipam-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	ipamBinary = filepath.Join(dir, Type)
	if out, err := exec.Command("go", "build", "-o", ipamBinary, "../cmd/grapevine-ipam").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build grapevine-ipam: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// ipamEnv is one network configuration and node.json for the binary.
type ipamEnv struct {
	t      *testing.T
	runDir string
	data   string
}

func newIPAMEnv(t *testing.T) *ipamEnv {
	e := &ipamEnv{t: t, runDir: t.TempDir(), data: t.TempDir()}
	e.writeNodeState("10.244.3.0/24")
	return e
}

func (e *ipamEnv) writeNodeState(block string) {
	e.t.Helper()
	e.writeLeasedNodeState(block, time.Hour, nil)
}

// writeLeasedNodeState writes node.json with a lease of d from now
// (negative: ended that long ago), changed by edit if not nil.
func (e *ipamEnv) writeLeasedNodeState(block string, d time.Duration, edit func(*nodestate.Lease)) {
	e.t.Helper()
	lease, err := nodestate.LeaseFromNow(d)
	if err != nil {
		e.t.Fatal(err)
	}
	if edit != nil {
		edit(&lease)
	}
	st := nodestate.State{Node: "n1", Block: mustPrefix(block), Pool: mustPrefix("10.244.0.0/16"), MTU: 1450, Lease: lease}
	if err := nodestate.Write(e.runDir, st); err != nil {
		e.t.Fatal(err)
	}
}

func (e *ipamEnv) conf(extra string) []byte {
	return fmt.Appendf(nil, `{"cniVersion": "1.1.0", "name": "grapevine", "type": "grapevine-cni", "runDir": %q,
		"ipam": {"type": "grapevine-ipam", "dataDir": %q}%s}`, e.runDir, e.data, extra)
}

func (e *ipamEnv) run(command, containerID string, conf []byte) (types.Result, error) {
	args := &invoke.Args{Command: command, ContainerID: containerID, NetNS: "/run/netns/gvcni-unused", IfName: "eth0", Path: filepath.Dir(ipamBinary)}
	if command == "ADD" {
		return invoke.ExecPluginWithResult(context.Background(), ipamBinary, conf, args, nil)
	}
	return nil, invoke.ExecPluginWithoutResult(context.Background(), ipamBinary, conf, args, nil)
}

func wantCode(t *testing.T, what string, err error, code uint, msg string) {
	t.Helper()
	var cniErr *types.Error
	if !errors.As(err, &cniErr) || cniErr.Code != code || !strings.Contains(cniErr.Msg, msg) {
		t.Errorf("%s = %v, want CNI error %d mentioning %q", what, err, code, msg)
	}
}

func TestBinaryAddCheckDel(t *testing.T) {
	e := newIPAMEnv(t)
	raw, err := e.run("ADD", "ctr1", e.conf(""))
	if err != nil {
		t.Fatal(err)
	}
	res, err := current.NewResultFromResult(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.IPs) != 1 || res.IPs[0].Address.String() != "10.244.3.1/32" || res.IPs[0].Gateway.String() != "169.254.1.1" {
		t.Errorf("ADD IPs = %v, want 10.244.3.1/32 gateway 169.254.1.1", res.IPs)
	}
	if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" || res.Routes[0].GW.String() != "169.254.1.1" {
		t.Errorf("ADD routes = %v, want default via 169.254.1.1", res.Routes)
	}
	again, err := e.run("ADD", "ctr1", e.conf(""))
	if err != nil {
		t.Fatal(err)
	}
	if againRes, _ := current.NewResultFromResult(again); againRes.IPs[0].Address.String() != "10.244.3.1/32" {
		t.Errorf("retried ADD got %v", againRes.IPs)
	}

	prev := `, "prevResult": {"cniVersion": "1.1.0", "ips": [{"address": "%s/32", "gateway": "169.254.1.1"}]}`
	if _, err := e.run("CHECK", "ctr1", e.conf(fmt.Sprintf(prev, "10.244.3.1"))); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if _, err := e.run("CHECK", "ctr1", e.conf(fmt.Sprintf(prev, "10.244.3.9"))); err == nil || !strings.Contains(err.Error(), "10.244.3.9 is not reserved for ctr1/eth0") {
		t.Errorf("CHECK with a foreign address = %v, want it named", err)
	}

	for range 2 {
		if _, err := e.run("DEL", "ctr1", e.conf("")); err != nil {
			t.Errorf("DEL: %v", err)
		}
	}
	if _, err := e.run("CHECK", "ctr1", e.conf("")); err == nil {
		t.Error("CHECK after DEL passed")
	}
}

// Once node.json's lease has ended (the agent stopped, hung or cut off from
// the ledger), ADD hands out nothing and says since when the lease was not
// renewed; the pods that exist are left alone: CHECK and DEL work.
func TestBinaryAddRefusedOnceLeaseEnded(t *testing.T) {
	e := newIPAMEnv(t)
	if _, err := e.run("ADD", "ctr1", e.conf("")); err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(*nodestate.Lease){
		"ended":                   nil,
		"granted in another boot": func(l *nodestate.Lease) { l.Ends.Boot = "another-boot"; l.Ends.Since += 2 * time.Hour },
		"no lease (older agent)":  func(l *nodestate.Lease) { *l = nodestate.Lease{} },
	} {
		e.writeLeasedNodeState("10.244.3.0/24", -time.Second, edit)
		_, err := e.run("ADD", "ctr2", e.conf(""))
		wantCode(t, name+": ADD", err, types.ErrTryAgainLater, "has not renewed its lease on block 10.244.3.0/24 since")
		_, err = e.run("STATUS", "", e.conf(""))
		wantCode(t, name+": STATUS", err, types.ErrPluginNotAvailable, "has not renewed its lease")
	}
	prev := `, "prevResult": {"cniVersion": "1.1.0", "ips": [{"address": "10.244.3.1/32", "gateway": "169.254.1.1"}]}`
	if _, err := e.run("CHECK", "ctr1", e.conf(prev)); err != nil {
		t.Errorf("CHECK of an existing pod once the lease ended: %v", err)
	}
	if _, err := e.run("DEL", "ctr1", e.conf("")); err != nil {
		t.Errorf("DEL once the lease ended: %v", err)
	}
	// ctr2 was refused without a reservation left behind.
	if _, err := e.run("CHECK", "ctr2", e.conf("")); err == nil {
		t.Error("a refused ADD left a reservation for ctr2")
	}
	// Renewed: ADD works again.
	e.writeNodeState("10.244.3.0/24")
	if _, err := e.run("ADD", "ctr2", e.conf("")); err != nil {
		t.Fatalf("ADD after the renewal: %v", err)
	}
}

func TestBinaryGCAndStatus(t *testing.T) {
	e := newIPAMEnv(t)
	for _, id := range []string{"keep", "leak"} {
		if _, err := e.run("ADD", id, e.conf("")); err != nil {
			t.Fatal(err)
		}
	}
	gc := `, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]`
	if _, err := e.run("GC", "", e.conf(gc)); err != nil {
		t.Fatalf("GC: %v", err)
	}
	a := newAllocator(t, Config{Network: "grapevine", DataDir: e.data})
	if held, _ := a.Held("leak", "eth0"); len(held) != 0 {
		t.Errorf("GC kept leak's %v", held)
	}
	if held, _ := a.Held("keep", "eth0"); len(held) != 1 {
		t.Errorf("GC freed keep's address: %v", held)
	}

	if _, err := e.run("STATUS", "", e.conf("")); err != nil {
		t.Errorf("STATUS with a block: %v", err)
	}
	if err := nodestate.Remove(e.runDir); err != nil {
		t.Fatal(err)
	}
	_, err := e.run("STATUS", "", e.conf(""))
	wantCode(t, "STATUS without node.json", err, types.ErrPluginNotAvailable, "not ready")
	_, err = e.run("ADD", "late", e.conf(""))
	wantCode(t, "ADD without node.json", err, types.ErrTryAgainLater, "not ready")
}

func TestBinaryRejectsBadConfig(t *testing.T) {
	e := newIPAMEnv(t)
	for _, tc := range []struct {
		name string
		conf string
		code uint
		msg  string
	}{
		{"malformed", `{"cniVersion": "1.1.0", "name": "grapevine", "ipam": {`, types.ErrDecodingFailure, ""},
		{"dataDir type", `{"cniVersion": "1.1.0", "name": "grapevine", "ipam": {"type": "grapevine-ipam", "dataDir": 7}}`, types.ErrInvalidNetworkConfig, "ipam.dataDir"},
		{"relative dataDir", `{"cniVersion": "1.1.0", "name": "grapevine", "ipam": {"type": "grapevine-ipam", "dataDir": "ipam"}}`, types.ErrInvalidNetworkConfig, "absolute"},
		{"unknown version", `{"cniVersion": "9.9.9", "name": "grapevine", "ipam": {"type": "grapevine-ipam"}}`, types.ErrIncompatibleCNIVersion, ""},
	} {
		_, err := e.run("ADD", "ctr", []byte(tc.conf))
		wantCode(t, tc.name, err, tc.code, tc.msg)
	}
	if entries, _ := os.ReadDir(e.data); len(entries) != 0 {
		t.Errorf("bad configs left %d entries in the data dir", len(entries))
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// On a dual-stack node grapevine-ipam hands out one address per block, each
// with its family's gateway and default route; CHECK knows the IPv6 one and
// DEL frees both.
func TestBinaryDualStack(t *testing.T) {
	e := newIPAMEnv(t)
	lease, err := nodestate.LeaseFromNow(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	st := nodestate.State{Node: "n1", Block: mustPrefix("10.244.3.0/24"), Pool: mustPrefix("10.244.0.0/16"),
		Block6: mustPrefix("fd00:10:244:3::/64"), Pool6: mustPrefix("fd00:10:244::/48"), MTU: 1450, Lease: lease}
	if err := nodestate.Write(e.runDir, st); err != nil {
		t.Fatal(err)
	}
	raw, err := e.run("ADD", "ctr1", e.conf(""))
	if err != nil {
		t.Fatal(err)
	}
	res, err := current.NewResultFromResult(raw)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ipc := range res.IPs {
		got = append(got, ipc.Address.String()+" gw "+ipc.Gateway.String())
	}
	for _, r := range res.Routes {
		got = append(got, r.Dst.String()+" via "+r.GW.String())
	}
	want := []string{"10.244.3.1/32 gw 169.254.1.1", "fd00:10:244:3::1/128 gw fe80::ecee:eeff:feee:eeee",
		"0.0.0.0/0 via 169.254.1.1", "::/0 via fe80::ecee:eeff:feee:eeee"}
	if !slices.Equal(got, want) {
		t.Errorf("ADD = %q, want %q", got, want)
	}
	prev := `, "prevResult": {"cniVersion": "1.1.0", "ips": [{"address": "10.244.3.1/32"}, {"address": "%s/128"}]}`
	if _, err := e.run("CHECK", "ctr1", e.conf(fmt.Sprintf(prev, "fd00:10:244:3::1"))); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if _, err := e.run("CHECK", "ctr1", e.conf(fmt.Sprintf(prev, "fd00:10:244:3::9"))); err == nil || !strings.Contains(err.Error(), "fd00:10:244:3::9 is not reserved") {
		t.Errorf("CHECK with a foreign IPv6 address = %v, want it named", err)
	}
	if _, err := e.run("DEL", "ctr1", e.conf("")); err != nil {
		t.Fatal(err)
	}
	if rs, err := ReadReservations(Config{Network: "grapevine", DataDir: e.data}); err != nil || len(rs) != 0 {
		t.Errorf("reservations after DEL: %v (%v)", rs, err)
	}
}
