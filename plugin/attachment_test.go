package plugin

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/grapevine-net/grapevine/ipam"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// otherRequest is p's runtime config with the container ID and CNI_ARGS
// replaced: a request that names p's namespace but not p's attachment.
func otherRequest(p *pod, containerID, podName string) *libcni.RuntimeConf {
	rt := *p.rt
	rt.ContainerID = containerID
	rt.Args = [][2]string{{"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", podName}, {"IgnoreUnknown", "1"}}
	return &rt
}

// assertUntouched fails unless p is still wired as res says, reachable, and
// holds its reservation.
func (l *lab) assertUntouched(p *pod, res *current.Result) {
	l.t.Helper()
	t := l.t.(*testing.T)
	assertWired(t, l, p, res, 1450)
	if err := ping(t, p.netns, l.hostIP); err != nil {
		t.Errorf("pod %s: %v", p.rt.ContainerID, err)
	}
	if ip := podIPOf(t, res); !slices.Contains(l.reservations(), ip.String()) {
		t.Errorf("pod %s lost its reservation of %s", p.rt.ContainerID, ip)
	}
}

// A repeated ADD for a running attachment that fails part-way must not free
// the address the running attachment holds.
func TestFailedRepeatedAddKeepsTheRunningAttachment(t *testing.T) {
	l := newLab(t)
	list := l.conflist("1.1.0")
	p := l.newPod("live")
	res := l.mustAdd(list, p)
	// The same container and interface with other CNI_ARGS: another host
	// veth name, so creating the pair fails on the pod's existing eth0.
	again := otherRequest(p, p.rt.ContainerID, "renamed")
	_, err := l.inHostAdd(list, again)
	if err == nil {
		t.Fatal("repeated ADD with other CNI_ARGS succeeded, want the pod's existing eth0 to stop it")
	}
	if strings.Contains(err.Error(), "undoing") {
		t.Errorf("repeated ADD with other CNI_ARGS = %v, want its failure without an undo error", err)
	}
	l.assertUntouched(p, res)
	// The next pod must get another address.
	next := podIPOf(t, l.mustAdd(list, l.newPod("next")))
	if next == podIPOf(t, res) {
		t.Errorf("next pod got %s, the running pod's address", next)
	}
}

// A DEL naming another container (a forged one, a late one of an older
// sandbox sharing the namespace or the pod name) changes nothing.
func TestDelOfAnotherContainerChangesNothing(t *testing.T) {
	l := newLab(t)
	list := l.conflist("1.1.0")
	p := l.newPod("victim")
	res := l.mustAdd(list, p)
	for _, rt := range []*libcni.RuntimeConf{
		otherRequest(p, "c-older-sandbox", "victim"),
		otherRequest(p, "c-stranger", "stranger"),
		{ContainerID: "c-no-netns", IfName: "eth0"},
	} {
		err := l.inHost(func() error { return l.cni.DelNetworkList(t.Context(), list, rt) })
		if err != nil {
			t.Errorf("DEL of %s: %v, want success", rt.ContainerID, err)
		}
		l.assertUntouched(p, res)
	}
	if err := l.check(list, p); err != nil {
		t.Errorf("CHECK after foreign DELs: %v", err)
	}
}

// An ADD naming another container with a running pod's namespace and name
// fails and leaves the running pod alone.
func TestAddOfAnotherContainerIntoARunningPodChangesNothing(t *testing.T) {
	l := newLab(t)
	list := l.conflist("1.1.0")
	p := l.newPod("victim")
	res := l.mustAdd(list, p)
	intruder := otherRequest(p, "c-intruder", "victim")
	if _, err := l.inHostAdd(list, intruder); err == nil {
		t.Fatal("ADD of another container into the pod's namespace succeeded")
	}
	l.assertUntouched(p, res)
	if r := l.reservations(); len(r) != 1 {
		t.Errorf("reservations %v, want only the running pod's", r)
	}
	if v := l.hostVeths(); len(v) != 1 {
		t.Errorf("host veths %v, want only the running pod's", v)
	}
}

// GC without cni.dev/valid-attachments is refused with code 7 and changes
// nothing; with an empty list it collects everything.
func TestGCWithoutValidAttachmentsIsRefused(t *testing.T) {
	l := newLab(t)
	list := l.conflist("1.1.0")
	p := l.newPod("kept")
	res := l.mustAdd(list, p)
	conf := `{"cniVersion": "1.1.0", "name": "grapevine", "type": "grapevine-cni", "runDir": "` + l.runDir +
		`", "ipam": {"type": "grapevine-ipam", "dataDir": "` + l.dataDir + `"}}`
	stdout, err := l.execPlugin([]string{"CNI_COMMAND=GC", "CNI_PATH=" + cniBinDir}, conf)
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) {
		t.Fatalf("GC without valid attachments: %v, want a non-zero exit", err)
	}
	var cniErr types.Error
	if err := json.Unmarshal(stdout, &cniErr); err != nil || cniErr.Code != types.ErrInvalidNetworkConfig ||
		!strings.Contains(cniErr.Msg, "cni.dev/valid-attachments") {
		t.Errorf("GC without valid attachments printed %q (%v), want code 7 naming cni.dev/valid-attachments", stdout, err)
	}
	l.assertUntouched(p, res)

	// What a Go runtime with no pods sends: null.
	empty := strings.Replace(conf, `"name"`, `"cni.dev/valid-attachments": null, "name"`, 1)
	if stdout, err := l.execPlugin([]string{"CNI_COMMAND=GC", "CNI_PATH=" + cniBinDir}, empty); err != nil {
		t.Fatalf("GC with no valid attachments: %v\n%s", err, stdout)
	}
	l.assertNothingLeft()
}

// An ADD failing at veth creation reports that failure and nothing else.
func TestAddFailingAtVethCreationReportsOnlyThat(t *testing.T) {
	l := newLab(t)
	list := l.conflist("1.1.0")
	p := l.newPod("taken")
	inNS(t, p.netns, func() error {
		_, err := addLoopedLink("eth0")
		return err
	})
	_, err := l.add(list, p)
	if err == nil || !strings.Contains(err.Error(), "create veth") || strings.Contains(err.Error(), "undoing") {
		t.Fatalf("ADD = %v, want only the veth creation's failure", err)
	}
	l.assertNothingLeft()
}

// A garbled node.json is "try again later" for ADD and "not available" for
// STATUS; a full block and a store that cannot be written make STATUS fail.
func TestStatusAndAddTellWhyAnAddCannotSucceed(t *testing.T) {
	l := newLab(t)
	list := l.conflist("1.1.0")
	status := func() error {
		return l.inHost(func() error { return l.cni.GetStatusNetworkList(t.Context(), list) })
	}
	wantCode := func(what string, err error, code uint, msg string) {
		t.Helper()
		var cniErr *types.Error
		if !errors.As(err, &cniErr) || cniErr.Code != code || !strings.Contains(cniErr.Msg, msg) {
			t.Errorf("%s = %v, want CNI error %d mentioning %q", what, err, code, msg)
		}
	}

	if err := os.WriteFile(nodestate.Path(l.runDir), []byte(`{"node": "node-a", "blo`), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := l.add(list, l.newPod("garbled"))
	wantCode("ADD with a garbled node.json", err, types.ErrTryAgainLater, "node state")
	wantCode("STATUS with a garbled node.json", status(), types.ErrPluginNotAvailable, "node state")
	l.assertNothingLeft()

	l.writeNodeState("10.244.1.0/30", 1450) // .1 and .2 only
	if err := status(); err != nil {
		t.Errorf("STATUS with free addresses: %v", err)
	}
	l.mustAdd(list, l.newPod("one"))
	l.mustAdd(list, l.newPod("two"))
	wantCode("STATUS with the block full", status(), types.ErrPluginNotAvailable, "10.244.1.0/30 is exhausted")

	// The store's directory cannot be created: a file is in the way.
	l.writeNodeState("10.244.1.0/24", 1450)
	blocked := t.TempDir()
	if err := os.WriteFile(filepath.Join(blocked, l.network), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	l.dataDir = blocked
	list = l.conflist("1.1.0")
	wantCode("STATUS with an unusable store", status(), types.ErrPluginNotAvailable, "address store")
}

// inHostAdd is ADD through libcni for rt, in the host namespace.
func (l *lab) inHostAdd(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (types.Result, error) {
	var res types.Result
	err := l.inHost(func() error {
		var err error
		res, err = l.cni.AddNetworkList(l.t.Context(), list, rt)
		return err
	})
	return res, err
}

// A reservation whose ADD was killed before its veth existed is one no DEL
// ever comes for under runtimes that never send GC: the agent frees it with
// ipam.CollectStale and the agent's host veth predicate, and leaves running pods alone.
func TestCollectStaleFreesOnlyAddressesOfGonePods(t *testing.T) {
	l := newLab(t)
	list := l.conflist("1.1.0")
	p := l.newPod("running")
	res := l.mustAdd(list, p)
	cfg := ipam.Config{Network: l.network, RunDir: l.runDir, DataDir: l.dataDir}
	alloc, err := ipam.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	orphan, _, err := alloc.Allocate(netip.MustParsePrefix("10.244.1.0/24"), "c-killed-mid-add", "eth0")
	alloc.Close()
	if err != nil {
		t.Fatal(err)
	}
	var live func(types.GCAttachment) bool
	inNS(t, l.hostNS, func() error {
		var err error
		live, err = hostVethAttachments(l.network)
		return err
	})
	// Everything written so far counts as old enough.
	freed, err := ipam.CollectStale(cfg, time.Now().Add(time.Second), live)
	if err != nil {
		t.Fatal(err)
	}
	if len(freed) != 1 || freed[0].Addr != orphan || freed[0].ContainerID != "c-killed-mid-add" {
		t.Errorf("freed %v, want only %s of c-killed-mid-add", freed, orphan)
	}
	l.assertUntouched(p, res)
}

// The same with IPAM delegated to another plugin, which cannot say whether
// it reserved something new: the running attachment's host veth says so.
func TestFailedRepeatedAddKeepsTheRunningAttachmentWithDelegatedIPAM(t *testing.T) {
	l := newLab(t)
	// grapevine-ipam under another type name is executed like any IPAM.
	execDir := t.TempDir()
	if err := os.Symlink(filepath.Join(cniBinDir, ipam.Type), filepath.Join(execDir, "gv-ipam-exec")); err != nil {
		t.Fatal(err)
	}
	l.cni = newCNIConfig([]string{cniBinDir, execDir}, l.cacheDir)
	list := l.conflistIPAM(`{"type": "gv-ipam-exec", "dataDir": "` + l.dataDir + `"}`)
	p := l.newPod("live")
	res := l.mustAdd(list, p)
	if _, err := l.inHostAdd(list, otherRequest(p, p.rt.ContainerID, "renamed")); err == nil {
		t.Fatal("repeated ADD with other CNI_ARGS succeeded, want the pod's existing eth0 to stop it")
	}
	l.assertUntouched(p, res)
}
