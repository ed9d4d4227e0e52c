package e2e

import (
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/e2e/runtimes"
	"github.com/grapevine-net/grapevine/internal/poll"
	"github.com/grapevine-net/grapevine/node"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// TestContainerdCRI starts pods through containerd's CRI plugin, driven by
// crictl, on two lab hosts, with the conflist exactly as each agent wrote
// it: the network is not ready before the agent holds a block and ready
// after; a sandbox gets an address from its node's block and the seed's
// wiring on both sides; the pods ping each other across the hosts; stopp and
// rmp leave nothing behind; after a reboot-like restart the network is not
// ready until the agent has written node.json again.
func TestContainerdCRI(t *testing.T) {
	t.Parallel()
	tools := runtimes.Require(t, "containerd", "containerd-shim-runc-v2", "runc", "ctr", "crictl")
	l := env.Lab(t, labtest.Options{Hosts: 2, NoAgents: true})
	ctx := timeout(t, 4*time.Minute)
	h1, h2 := l.Host(1), l.Host(2)
	images := writeImages(t)
	cr1 := startContainerd(t, ctx, l, h1, tools["crictl"], images)
	cr2 := startContainerd(t, ctx, l, h2, tools["crictl"], images)
	logVersions(t, ctx, tools, cr1, nil)

	// No agent, no block: no conflist, so containerd must say so and
	// refuse sandboxes.
	ready, reason, err := cr1.NetworkReady(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ready {
		t.Fatal("containerd reports NetworkReady before the agent holds a block")
	}
	t.Logf("before the agent: NetworkReady=false (%s)", reason)
	if sb, err := cr1.RunPodSandbox(ctx, "early"); err == nil {
		t.Errorf("sandbox %s started before the agent holds a block", sb.ID)
	}

	if err := l.StartAgents(ctx); err != nil {
		t.Fatal(err)
	}
	statuses, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	for _, cr := range []*runtimes.Containerd{cr1, cr2} {
		if err := waitNetworkReady(ctx, cr); err != nil {
			t.Fatal(err)
		}
	}

	sbA, err := cr1.RunPodSandbox(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	sbB, err := cr2.RunPodSandbox(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	podA := checkRuntimePod(t, ctx, h1, statuses[h1.Name].Block, "cr-a", sbA.PID, sbA.IP)
	podB := checkRuntimePod(t, ctx, h2, statuses[h2.Name].Block, "cr-b", sbB.PID, sbB.IP)

	ctrA, err := cr1.StartBusybox(ctx, sbA)
	if err != nil {
		t.Fatal(err)
	}
	ctrB, err := cr2.StartBusybox(ctx, sbB)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("containerd sandboxes: a on h1 %s (%s), b on h2 %s (%s)", sbA.IP, podA.veth, sbB.IP, podB.veth)
	if out, err := cr1.Exec(ctx, ctrA, "ping", "-c", "3", "-W", "5", sbB.IP.String()); err != nil {
		t.Errorf("pod a on h1 cannot ping pod b on h2: %v\n%s", err, out)
	} else {
		t.Logf("a -> b: %s", lastLine(out))
	}
	if out, err := cr2.Exec(ctx, ctrB, "ping", "-c", "3", "-W", "5", sbA.IP.String()); err != nil {
		t.Errorf("pod b on h2 cannot ping pod a on h1: %v\n%s", err, out)
	}

	if err := cr1.RemovePod(ctx, sbA.ID); err != nil {
		t.Fatal(err)
	}
	if err := cr2.RemovePod(ctx, sbB.ID); err != nil {
		t.Fatal(err)
	}
	for _, p := range []runtimePod{podA, podB} {
		if err := expectPodGone(p); err != nil {
			t.Error(err)
		}
	}

	// A reboot empties /run (node.json) but not the conflist directory. The
	// restarted agent, cut off from its peer, keeps the previous run's
	// routes for a while before it reconciles; meanwhile containerd must
	// not report a network that cannot wire a pod.
	if err := h1.StopAgent(ctx); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(nodestate.Path(h1.RunDir())); err != nil {
		t.Fatal(err)
	}
	if err := h1.CutLink(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h1.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	// The agent withdraws the conflist on its first pass; after its
	// restart grace (15 s) it would write it back even without the peer.
	notReadyCtx := timeout(t, 30*time.Second)
	err = poll.Until(notReadyCtx, "containerd on h1 to report the network not ready", 100*time.Millisecond, func() error {
		ready, _, err := cr1.NetworkReady(notReadyCtx)
		if err == nil && ready {
			err = errors.New("NetworkReady is true")
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := h1.RestoreLink(ctx); err != nil {
		t.Fatal(err)
	}
	if err := waitNetworkReady(ctx, cr1); err != nil {
		t.Fatal(err)
	}
	if _, err := nodestate.Read(h1.RunDir()); err != nil {
		t.Fatalf("containerd reports the network ready, but: %v", err)
	}
}

// TestPodmanCNI runs a podman container on Grapevine through podman's CNI
// backend (configured through CONTAINERS_CONF): it gets the seed's wiring
// and talks to a containerd pod on another host; stop and rm leave nothing
// behind.
func TestPodmanCNI(t *testing.T) {
	t.Parallel()
	tools := runtimes.Require(t, "podman", "conmon", "runc", "containerd", "containerd-shim-runc-v2", "ctr", "crictl")
	l := env.Lab(t, labtest.Options{Hosts: 2})
	ctx := timeout(t, 4*time.Minute)
	statuses, err := lab.WaitMesh(ctx, l.Hosts())
	if err != nil {
		t.Fatal(err)
	}
	h1, h2 := l.Host(1), l.Host(2)
	images := writeImages(t)
	pm := startPodman(t, ctx, l, h1, images)
	cr := startContainerd(t, ctx, l, h2, tools["crictl"], images)
	logVersions(t, ctx, tools, nil, pm)
	if err := waitNetworkReady(ctx, cr); err != nil {
		t.Fatal(err)
	}

	c, err := pm.RunBusybox(ctx, "gv-e2e-c", node.NetworkName)
	if err != nil {
		t.Fatal(err)
	}
	podC := checkRuntimePod(t, ctx, h1, statuses[h1.Name].Block, "pm-c", c.PID, c.IP)
	sb, err := cr.RunPodSandbox(ctx, "d")
	if err != nil {
		t.Fatal(err)
	}
	podD := checkRuntimePod(t, ctx, h2, statuses[h2.Name].Block, "cr-d", sb.PID, sb.IP)
	ctr, err := cr.StartBusybox(ctx, sb)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("podman container on h1 %s (%s), containerd sandbox on h2 %s (%s)", c.IP, podC.veth, sb.IP, podD.veth)
	if out, err := pm.Exec(ctx, c.ID, "ping", "-c", "3", "-W", "5", sb.IP.String()); err != nil {
		t.Errorf("podman container on h1 cannot ping the containerd pod on h2: %v\n%s", err, out)
	} else {
		t.Logf("podman -> containerd: %s", lastLine(out))
	}
	if out, err := cr.Exec(ctx, ctr, "ping", "-c", "3", "-W", "5", c.IP.String()); err != nil {
		t.Errorf("containerd pod on h2 cannot ping the podman container on h1: %v\n%s", err, out)
	}

	if err := pm.Remove(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	if err := cr.RemovePod(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	for _, p := range []runtimePod{podC, podD} {
		if err := expectPodGone(p); err != nil {
			t.Error(err)
		}
	}
}

// TestRuntimesDualStack runs both runtimes on the conflist that agents with
// --pool6 write, on hosts sharing an IPv6 network: a containerd sandbox
// (crictl) on h1 and a podman container on h2 each get an address from
// their host's IPv4 block and one from its IPv6 block, which `crictl
// inspectp` and `podman inspect` report, IPv4 first; both have the IPv6
// wiring beside the IPv4 one; each pings the other across the hosts over
// IPv6 and IPv4; and removing them leaves nothing of either family behind.
func TestRuntimesDualStack(t *testing.T) {
	t.Parallel()
	tools := runtimes.Require(t, "podman", "conmon", "runc", "containerd", "containerd-shim-runc-v2", "ctr", "crictl")
	l := env.Lab(t, labtest.Options{Hosts: 2, NoAgents: true, AgentArgs: []string{"--pool6", "fd00:10:244::/48"}})
	ctx := timeout(t, 4*time.Minute)
	h1, h2 := l.Host(1), l.Host(2)
	host6 := startWithIPv6Underlay(t, ctx, l, l.Hosts()...)
	blocks := map[*lab.Host]nodestate.State{}
	for _, h := range l.Hosts() {
		st, err := nodestate.Read(h.RunDir())
		if err != nil {
			t.Fatal(err)
		}
		blocks[h] = st
	}
	for h, peer := range map[*lab.Host]*lab.Host{h1: h2, h2: h1} {
		if err := waitRoute6(ctx, h, blocks[peer].Block6.String()+" via "+host6[peer].String()+" dev em1"); err != nil {
			t.Fatal(err)
		}
	}
	images := writeImages(t)
	cr := startContainerd(t, ctx, l, h1, tools["crictl"], images)
	pm := startPodman(t, ctx, l, h2, images)
	logVersions(t, ctx, tools, cr, pm)
	if err := waitNetworkReady(ctx, cr); err != nil {
		t.Fatal(err)
	}

	sb, err := cr.RunPodSandbox(ctx, "a6")
	if err != nil {
		t.Fatal(err)
	}
	c, err := pm.RunBusybox(ctx, "gv-e2e-c6", node.NetworkName)
	if err != nil {
		t.Fatal(err)
	}
	// Each runtime reports both addresses, as the CNI result lists them.
	for _, r := range []struct {
		what string
		h    *lab.Host
		ips  []netip.Addr
	}{
		{"crictl inspectp of the containerd sandbox", h1, sb.IPs},
		{"podman inspect of the podman container", h2, c.IPs},
	} {
		st := blocks[r.h]
		if len(r.ips) != 2 || !st.Block.Contains(r.ips[0]) || !st.Block6.Contains(r.ips[1]) {
			t.Fatalf("%s on %s: addresses %v, want one of %s, then one of %s", r.what, r.h.Name, r.ips, st.Block, st.Block6)
		}
		t.Logf("%s on %s: %v", r.what, r.h.Name, r.ips)
	}
	podA := checkRuntimePod(t, ctx, h1, blocks[h1].Block, "cr-a6", sb.PID, sb.IP)
	podC := checkRuntimePod(t, ctx, h2, blocks[h2].Block, "pm-c6", c.PID, c.IP)
	podA.IP6, podC.IP6 = sb.IPs[1], c.IPs[1]
	for _, p := range []runtimePod{podA, podC} {
		if err := checkPodShape6(ctx, p.Pod, p.veth); err != nil {
			t.Error(err)
		}
	}
	ctr, err := cr.StartBusybox(ctx, sb)
	if err != nil {
		t.Fatal(err)
	}
	fromA := func(cmd ...string) ([]byte, error) { return cr.Exec(ctx, ctr, cmd...) }
	fromC := func(cmd ...string) ([]byte, error) { return pm.Exec(ctx, c.ID, cmd...) }
	for _, ping := range []struct {
		what string
		exec func(...string) ([]byte, error)
		to   netip.Addr
	}{
		{"containerd pod on h1 -> podman container on h2 over IPv6", fromA, podC.IP6},
		{"containerd pod on h1 -> podman container on h2 over IPv4", fromA, podC.IP},
		{"podman container on h2 -> containerd pod on h1 over IPv6", fromC, podA.IP6},
		{"podman container on h2 -> containerd pod on h1 over IPv4", fromC, podA.IP},
	} {
		if out, err := ping.exec("ping", "-c", "3", "-W", "5", ping.to.String()); err != nil {
			t.Errorf("%s (%s): %v\n%s", ping.what, ping.to, err, out)
		} else {
			t.Logf("%s (%s): %s", ping.what, ping.to, lastLine(out))
		}
	}

	if err := cr.RemovePod(ctx, sb.ID); err != nil {
		t.Fatal(err)
	}
	if err := pm.Remove(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	for _, p := range []runtimePod{podA, podC} {
		if err := expectPodGone(p); err != nil {
			t.Error(err)
		}
	}
}

// images are the archives every runtime of a test loads.
type images struct{ pause, busybox string }

func writeImages(t testing.TB) images {
	t.Helper()
	dir := t.TempDir()
	img := images{pause: filepath.Join(dir, "pause.tar"), busybox: filepath.Join(dir, "busybox.tar")}
	if err := runtimes.PauseImage.WriteArchive(img.pause, runtimes.BusyboxPath); err != nil {
		t.Fatal(err)
	}
	if err := runtimes.BusyboxImage.WriteArchive(img.busybox, runtimes.BusyboxPath); err != nil {
		t.Fatal(err)
	}
	return img
}

// newRoot gives a runtime on h a private mount namespace that still sees
// the lab's directories (node.json, the conflist, the IPAM store).
func newRoot(t testing.TB, ctx context.Context, l *lab.Lab, h *lab.Host, name string) *runtimes.Root {
	t.Helper()
	r, err := runtimes.NewRoot(ctx, runtimes.RootConfig{NetNS: h.Path(), Dir: t.TempDir(), Name: filepath.Base(h.Path()) + "-" + name, Keep: []string{l.Dir}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})
	return r
}

// cniDirs points a runtime on h at the agent's conflist directory and the
// lab's plugin binaries.
func cniDirs(t testing.TB, l *lab.Lab, h *lab.Host) runtimes.CNIDirs {
	t.Helper()
	for _, dir := range l.CNIPath {
		if _, err := os.Stat(filepath.Join(dir, "grapevine-cni")); err == nil {
			return runtimes.CNIDirs{ConfDir: h.ConfDir(), BinDir: dir}
		}
	}
	t.Fatalf("no grapevine-cni in %v", l.CNIPath)
	return runtimes.CNIDirs{}
}

func startContainerd(t testing.TB, ctx context.Context, l *lab.Lab, h *lab.Host, crictl string, img images) *runtimes.Containerd {
	t.Helper()
	return startContainerdWith(t, ctx, newRoot(t, ctx, l, h, "containerd"), cniDirs(t, l, h), crictl, img)
}

func startContainerdWith(t testing.TB, ctx context.Context, r *runtimes.Root, cni runtimes.CNIDirs, crictl string, img images) *runtimes.Containerd {
	t.Helper()
	cr, err := runtimes.StartContainerd(ctx, r, cni, crictl)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd log (last 30 lines):\n%s", cr.LogTail(30))
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := cr.Stop(ctx); err != nil {
			t.Error(err)
		}
	})
	for _, archive := range []string{img.pause, img.busybox} {
		if err := cr.Import(ctx, archive); err != nil {
			t.Fatal(err)
		}
	}
	return cr
}

func startPodman(t testing.TB, ctx context.Context, l *lab.Lab, h *lab.Host, img images) *runtimes.Podman {
	t.Helper()
	return newPodman(t, ctx, newRoot(t, ctx, l, h, "podman"), cniDirs(t, l, h), img.busybox)
}

// newPodman sets up podman in r with the CNI directories given, removes its
// containers when t ends, and loads the archive.
func newPodman(t testing.TB, ctx context.Context, r *runtimes.Root, cni runtimes.CNIDirs, archive string) *runtimes.Podman {
	t.Helper()
	pm, err := runtimes.NewPodman(r, cni)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := pm.RemoveAll(ctx); err != nil {
			t.Error(err)
		}
	})
	if err := pm.Load(ctx, archive); err != nil {
		t.Fatal(err)
	}
	return pm
}

func waitNetworkReady(ctx context.Context, cr *runtimes.Containerd) error {
	return poll.Until(ctx, "containerd to report NetworkReady", 100*time.Millisecond, func() error {
		ready, reason, err := cr.NetworkReady(ctx)
		if err == nil && !ready {
			err = errors.New(reason)
		}
		return err
	})
}

// logVersions records what the test ran against.
func logVersions(t *testing.T, ctx context.Context, tools map[string]string, cr *runtimes.Containerd, pm *runtimes.Podman) {
	var v []string
	if cr != nil {
		s, _ := cr.Version(ctx)
		v = append(v, s)
	}
	if pm != nil {
		s, _ := pm.Version(ctx)
		v = append(v, s)
	}
	if out, err := lab.Run(ctx, tools["runc"], "--version"); err == nil {
		v = append(v, strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0])
	}
	// crictl built by go install reports no version; its module does.
	if info, err := buildinfo.ReadFile(tools["crictl"]); err == nil {
		v = append(v, "crictl "+info.Main.Version)
	}
	t.Logf("versions: %s", strings.Join(v, "; "))
}

// runtimePod is a pod a runtime started, seen as a lab pod: its network
// namespace gets a name under the host's, so the lab's checks apply and the
// lab's cleanup removes the name.
type runtimePod struct {
	*lab.Pod
	veth string
}

// checkRuntimePod checks that the pod whose first process is pid has an
// address from block and the seed's wiring on both sides.
func checkRuntimePod(t *testing.T, ctx context.Context, h *lab.Host, block netip.Prefix, name string, pid int, ip netip.Addr) runtimePod {
	t.Helper()
	p := &lab.Pod{Namespace: lab.Namespace{Name: h.Namespace.Name + "-" + name}, Host: h, Name: name, IP: ip}
	if _, err := lab.Run(ctx, "ip", "netns", "attach", p.Namespace.Name, fmt.Sprint(pid)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Run(context.Background(), "ip", "netns", "delete", p.Namespace.Name) })
	if !block.Contains(ip) {
		t.Errorf("%s on %s: address %s outside the host's block %s", name, h.Name, ip, block)
	}
	routes, err := readRoutes(h)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkPodShape(p, routes); err != nil {
		t.Error(err)
	}
	veth, err := p.HostVeth()
	if err != nil {
		t.Fatal(err)
	}
	return runtimePod{Pod: p, veth: veth}
}

// expectPodGone checks that the host keeps nothing of a removed pod: no
// veth, no route, no neighbour, no address reservation, of either family.
func expectPodGone(p runtimePod) error {
	h := p.Host
	var problems []string
	links, err := h.Links()
	if err != nil {
		return err
	}
	if slices.ContainsFunc(links, func(l netlink.Link) bool { return l.Attrs().Name == p.veth }) {
		problems = append(problems, "veth "+p.veth+" still there")
	}
	routes, err := readRoutes(h)
	if err != nil {
		return err
	}
	if _, ok := routes.pods[p.IP]; ok {
		problems = append(problems, "route "+p.IP.String()+" still there")
	}
	neighs, err := h.Neighbours()
	if err != nil {
		return err
	}
	for _, n := range neighs {
		if n.IP.Equal(p.IP.AsSlice()) {
			problems = append(problems, "neighbour "+n.String()+" still there")
		}
	}
	ips := []netip.Addr{p.IP}
	if p.IP6.IsValid() {
		ips = append(ips, p.IP6)
		// The lab's netlink views are IPv4's.
		for _, what := range []string{"route", "neigh"} {
			out, err := h.Run(context.Background(), "ip", "-6", what, "show", p.IP6.String())
			if err != nil {
				return fmt.Errorf("%s: ip -6 %s show %s: %w: %s", h.Name, what, p.IP6, err, out)
			}
			if s := strings.TrimSpace(string(out)); s != "" {
				problems = append(problems, what+" "+s+" still there")
			}
		}
	}
	for _, ip := range ips {
		reservation := filepath.Join(h.StateDir(), "ipam", node.NetworkName, ip.String())
		if _, err := os.Stat(reservation); !errors.Is(err, os.ErrNotExist) {
			problems = append(problems, "address reservation "+reservation+" still there")
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s/%s (%v) removed: %s", h.Name, p.Name, ips, strings.Join(problems, "; "))
	}
	return nil
}

func lastLine(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}
