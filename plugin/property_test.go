package plugin

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/grapevine-net/grapevine/ipam"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// TestRandomRequestsNeverCrossAttachments drives the plugin with random
// sequences of ADD, DEL, CHECK and GC as a runtime (and a confused or hostile
// one) could send them: new containers, repeated and late requests,
// requests naming another container's namespace or pod name, ADDs that fail
// part-way and ADDs killed mid-way. After every step no address is held by
// two live attachments, every live attachment is wired and addressed, a
// failed or deleted attachment left nothing behind, and after GC no
// reservation or host veth exists without a live attachment.
func TestRandomRequestsNeverCrossAttachments(t *testing.T) {
	seeds := []uint64{1, 2, 3, uint64(time.Now().UnixNano())}
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Logf("seed %d (rerun with this subtest's name)", seed)
			newModel(t, seed).run(70)
		})
	}
}

// liveAttachment is one attachment the runtime believes in.
type liveAttachment struct {
	rt *libcni.RuntimeConf
	ip netip.Addr
}

// sandbox is one pod namespace; at most one container's eth0 lives in it.
type sandbox struct {
	netns ns.NetNS
	name  string
	live  *liveAttachment
}

type model struct {
	t      *testing.T
	l      *lab
	list   *libcni.NetworkConfigList
	rng    *rand.Rand
	boxes  []*sandbox
	dead   []string // container IDs deleted or never added: late requests use them
	nextID int
	// gcRan says a GC with the runtime's list, or the agent's collection,
	// ran since the last ADD.
	gcRan bool
}

// podNames are few, so that containers in different sandboxes share them
// and so derive the same host veth name.
var podNames = []string{"web", "db", "cache"}

func newModel(t *testing.T, seed uint64) *model {
	l := newLab(t)
	m := &model{t: t, l: l, list: l.conflist("1.1.0"), rng: rand.New(rand.NewPCG(seed, seed))}
	for range 4 {
		m.boxes = append(m.boxes, m.newSandbox())
	}
	return m
}

// newSandbox creates a pod namespace the model may delete, as a runtime
// deletes the namespace of a sandbox whose ADD failed.
func (m *model) newSandbox() *sandbox {
	m.t.Helper()
	name := "gvcni-prop-" + randomSuffix(m.t)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		m.t.Fatalf("ip netns add %s: %v\n%s", name, err, out)
	}
	m.t.Cleanup(func() {
		if _, err := os.Stat("/run/netns/" + name); err == nil {
			if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
				m.t.Errorf("ip netns delete %s: %v\n%s", name, err, out)
			}
		}
	})
	netns, err := ns.GetNS("/run/netns/" + name)
	if err != nil {
		m.t.Fatal(err)
	}
	return &sandbox{netns: netns, name: name}
}

// replaceSandbox deletes box's namespace (and with it anything a killed ADD
// left in it) and gives the slot a fresh one.
func (m *model) replaceSandbox(i int) {
	m.t.Helper()
	box := m.boxes[i]
	box.netns.Close()
	if out, err := exec.Command("ip", "netns", "delete", box.name).CombinedOutput(); err != nil {
		m.t.Fatalf("ip netns delete %s: %v\n%s", box.name, err, out)
	}
	m.boxes[i] = m.newSandbox()
}

func (m *model) newID() string {
	m.nextID++
	return fmt.Sprintf("prop-%d-%s", m.nextID, randomSuffix(m.t))
}

func (m *model) rtFor(box *sandbox, containerID, podName string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: containerID,
		NetNS:       box.netns.Path(),
		IfName:      "eth0",
		Args:        [][2]string{{"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", podName}, {"IgnoreUnknown", "1"}},
	}
}

func (m *model) pick(n int) int { return m.rng.IntN(n) }

func (m *model) live() []*liveAttachment {
	var out []*liveAttachment
	for _, b := range m.boxes {
		if b.live != nil {
			out = append(out, b.live)
		}
	}
	return out
}

func (m *model) run(steps int) {
	tally := make(map[string]int)
	defer func() { m.t.Logf("steps by kind: %v", tally) }()
	for step := range steps {
		var what string
		switch r := m.pick(100); {
		case r < 25:
			what = m.addNew()
		case r < 35:
			what = m.addRepeat()
		case r < 50:
			what = m.delLive()
		case r < 65:
			what = m.delForeign()
		case r < 73:
			what = m.checkLive()
		case r < 77:
			what = m.gc()
		case r < 80:
			what = m.collect()
		case r < 84:
			what = m.gcWithoutList()
		case r < 92:
			what = m.addFailing()
		default:
			what = m.addKilled()
		}
		kind, _, _ := strings.Cut(what, " prop-")
		tally[kind]++
		m.assertInvariants(fmt.Sprintf("step %d (%s)", step, what))
		if m.t.Failed() {
			m.t.FailNow()
		}
	}
}

func (m *model) add(rt *libcni.RuntimeConf) (netip.Addr, error) {
	var res types.Result
	err := m.l.inHost(func() error {
		var err error
		res, err = m.l.cni.AddNetworkList(m.t.Context(), m.list, rt)
		return err
	})
	if err != nil {
		return netip.Addr{}, err
	}
	return podIPOf(m.t, mustCurrent(m.t, res)), nil
}

func (m *model) del(rt *libcni.RuntimeConf) error {
	return m.l.inHost(func() error { return m.l.cni.DelNetworkList(m.t.Context(), m.list, rt) })
}

// addNew is ADD of a new container into a random sandbox: it succeeds in
// an empty one and fails, changing nothing, in one with a live container.
func (m *model) addNew() string {
	box := m.boxes[m.pick(len(m.boxes))]
	rt := m.rtFor(box, m.newID(), podNames[m.pick(len(podNames))])
	ip, err := m.add(rt)
	switch {
	case box.live == nil && err != nil:
		m.t.Errorf("ADD %s into an empty sandbox: %v", rt.ContainerID, err)
	case box.live == nil:
		box.live = &liveAttachment{rt: rt, ip: ip}
		m.gcRan = false
	case err == nil:
		m.t.Errorf("ADD %s into %s's sandbox succeeded", rt.ContainerID, box.live.rt.ContainerID)
	default:
		m.dead = append(m.dead, rt.ContainerID)
		m.assertGone(rt.ContainerID)
	}
	return fmt.Sprintf("ADD new %s as %s", rt.ContainerID, rt.Args[1][1])
}

// addRepeat is a repeated ADD of a live attachment, with its own CNI_ARGS
// or another pod name. Either it succeeds with the same address or it fails
// leaving the attachment as it was.
func (m *model) addRepeat() string {
	live := m.live()
	if len(live) == 0 {
		return m.addNew()
	}
	att := live[m.pick(len(live))]
	rt := *att.rt
	rt.Args = [][2]string{{"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", podNames[m.pick(len(podNames))]}, {"IgnoreUnknown", "1"}}
	ip, err := m.add(&rt)
	if err == nil {
		if ip != att.ip {
			m.t.Errorf("repeated ADD of %s got %s, it holds %s", rt.ContainerID, ip, att.ip)
		}
		att.rt = &rt
	}
	if err != nil {
		return fmt.Sprintf("ADD again failed %s as %s: %v", rt.ContainerID, rt.Args[1][1], err)
	}
	return fmt.Sprintf("ADD again %s as %s", rt.ContainerID, rt.Args[1][1])
}

// delLive is the runtime's DEL of a live attachment, sometimes with other
// CNI_ARGS than its ADD had.
func (m *model) delLive() string {
	var boxes []*sandbox
	for _, b := range m.boxes {
		if b.live != nil {
			boxes = append(boxes, b)
		}
	}
	if len(boxes) == 0 {
		return m.delForeign()
	}
	box := boxes[m.pick(len(boxes))]
	rt := *box.live.rt
	if m.pick(3) == 0 {
		rt.Args = nil
	}
	if err := m.del(&rt); err != nil {
		m.t.Errorf("DEL %s: %v", rt.ContainerID, err)
	}
	box.live = nil
	m.dead = append(m.dead, rt.ContainerID)
	m.assertGone(rt.ContainerID)
	return "DEL " + rt.ContainerID
}

// delForeign is a DEL that names a container that is not live (a late
// one, or one never added) with a random sandbox's namespace and pod name.
func (m *model) delForeign() string {
	id := m.newID()
	if len(m.dead) > 0 && m.pick(2) == 0 {
		id = m.dead[m.pick(len(m.dead))]
	}
	box := m.boxes[m.pick(len(m.boxes))]
	podName := podNames[m.pick(len(podNames))]
	if box.live != nil && m.pick(2) == 0 {
		podName = box.live.rt.Args[1][1]
	}
	if err := m.del(m.rtFor(box, id, podName)); err != nil {
		m.t.Errorf("DEL of %s, not a live container: %v", id, err)
	}
	return "DEL foreign " + id
}

func (m *model) checkLive() string {
	live := m.live()
	if len(live) == 0 {
		return "CHECK (none live)"
	}
	att := live[m.pick(len(live))]
	err := m.l.inHost(func() error { return m.l.cni.CheckNetworkList(m.t.Context(), m.list, att.rt) })
	if err != nil {
		m.t.Errorf("CHECK %s: %v", att.rt.ContainerID, err)
	}
	return "CHECK " + att.rt.ContainerID
}

// gc is the runtime's GC with the attachments it runs.
func (m *model) gc() string {
	valid := []types.GCAttachment{}
	for _, att := range m.live() {
		valid = append(valid, types.GCAttachment{ContainerID: att.rt.ContainerID, IfName: att.rt.IfName})
	}
	if err := m.l.gc(m.list, valid); err != nil {
		m.t.Errorf("GC: %v", err)
	}
	m.gcRan = true
	return fmt.Sprintf("GC keeping %d", len(valid))
}

// collect is the agent's collection for runtimes that never send GC:
// reservations without a host veth carrying their alias are freed.
func (m *model) collect() string {
	var live func(types.GCAttachment) bool
	inNS(m.t, m.l.hostNS, func() error {
		var err error
		live, err = hostVethAttachments(m.l.network)
		return err
	})
	cfg := ipam.Config{Network: m.l.network, RunDir: m.l.runDir, DataDir: m.l.dataDir}
	// Nothing is in flight between steps: every reservation is old enough.
	if _, err := ipam.CollectStale(cfg, time.Now().Add(time.Second), live); err != nil {
		m.t.Errorf("collect: %v", err)
	}
	m.gcRan = true
	return "collect"
}

// gcWithoutList is a GC without cni.dev/valid-attachments: refused.
func (m *model) gcWithoutList() string {
	_, err := m.l.execPlugin([]string{"CNI_COMMAND=GC", "CNI_PATH=" + cniBinDir}, m.pluginConf())
	if err == nil {
		m.t.Error("GC without cni.dev/valid-attachments succeeded")
	}
	return "GC without a list"
}

func (m *model) pluginConf() string {
	return `{"cniVersion": "1.1.0", "name": "` + m.l.network + `", "type": "grapevine-cni", "runDir": "` + m.l.runDir +
		`", "ipam": {"type": "grapevine-ipam", "dataDir": "` + m.l.dataDir + `"}}`
}

// addFailing is an ADD into an empty sandbox that fails: before anything is
// built (a garbled node.json) or after the veth and the address exist (the
// pod already routes the gateway elsewhere). It must leave nothing.
func (m *model) addFailing() string {
	i := m.pick(len(m.boxes))
	box := m.boxes[i]
	if box.live != nil {
		return m.delForeign()
	}
	rt := m.rtFor(box, m.newID(), podNames[m.pick(len(podNames))])
	how := "garbled node.json"
	if m.pick(2) == 0 {
		if err := os.WriteFile(nodestate.Path(m.l.runDir), []byte(`{"block": `), 0o644); err != nil {
			m.t.Fatal(err)
		}
		defer m.l.writeNodeState("10.244.1.0/24", 1450)
	} else {
		how = "gateway taken"
		inNS(m.t, box.netns, func() error {
			link, err := addLoopedLink("gvcniblock")
			if err != nil {
				return err
			}
			return netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: hostPrefix(netip.MustParseAddr("169.254.1.1")), Scope: netlink.SCOPE_LINK})
		})
		defer inNS(m.t, box.netns, func() error {
			link, err := netlink.LinkByName("gvcniblock")
			if err != nil {
				return err
			}
			return netlink.LinkDel(link)
		})
	}
	_, err := m.add(rt)
	if err == nil {
		m.t.Errorf("ADD %s with %s succeeded", rt.ContainerID, how)
	} else if strings.Contains(err.Error(), "undoing") {
		m.t.Errorf("ADD %s with %s: %v", rt.ContainerID, how, err)
	}
	m.dead = append(m.dead, rt.ContainerID)
	m.assertGone(rt.ContainerID)
	return fmt.Sprintf("ADD failing (%s) %s", how, rt.ContainerID)
}

// addKilled is an ADD into an empty sandbox killed at a random moment,
// followed by what a runtime does after a failed ADD: DEL, then delete the
// sandbox's namespace.
func (m *model) addKilled() string {
	i := m.pick(len(m.boxes))
	box := m.boxes[i]
	if box.live != nil {
		return m.checkLive()
	}
	id := m.newID()
	var cmd *exec.Cmd
	err := m.l.inHost(func() error {
		cmd = exec.Command(filepath.Join(cniBinDir, "grapevine-cni"))
		cmd.Env = []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=" + id, "CNI_NETNS=" + box.netns.Path(),
			"CNI_IFNAME=eth0", "CNI_PATH=" + cniBinDir, "CNI_ARGS=K8S_POD_NAMESPACE=default;K8S_POD_NAME=" + podNames[m.pick(len(podNames))]}
		cmd.Stdin = strings.NewReader(m.pluginConf())
		return cmd.Start()
	})
	if err != nil {
		m.t.Fatal(err)
	}
	// The delay is random, not the outcome checked: every moment is a
	// valid place for a kill.
	time.Sleep(time.Duration(m.pick(12_000)) * time.Microsecond)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		m.t.Fatal(err)
	}
	_ = cmd.Wait()
	if err := m.del(m.rtFor(box, id, "")); err != nil {
		m.t.Errorf("DEL after the killed ADD of %s: %v", id, err)
	}
	m.replaceSandbox(i)
	m.dead = append(m.dead, id)
	m.assertGone(id)
	return "ADD killed " + id
}

// storeReservations maps each reserved address to the container holding it.
func (m *model) storeReservations() map[string]string {
	m.t.Helper()
	out := make(map[string]string)
	dir := filepath.Join(m.l.dataDir, m.l.network)
	for _, addr := range m.l.reservations() {
		data, err := os.ReadFile(filepath.Join(dir, addr))
		if err != nil {
			m.t.Fatal(err)
		}
		id, _, _ := strings.Cut(string(data), "\r\n")
		out[addr] = id
	}
	return out
}

// hostLinks maps the alias of every grapevine host veth to the link.
func (m *model) hostLinks() map[string]netlink.Link {
	m.t.Helper()
	out := make(map[string]netlink.Link)
	inNS(m.t, m.l.hostNS, func() error {
		links, err := netlink.LinkList()
		for _, link := range links {
			// An unlabelled one is a killed ADD's, in a namespace the
			// model deleted: the kernel removes it with the namespace.
			if isHostVeth(link) && !strings.HasPrefix(link.Attrs().Name, "gvcni") && link.Attrs().Alias != "" {
				out[link.Attrs().Alias] = link
			}
		}
		return err
	})
	return out
}

// assertGone fails if anything of containerID is left: a reservation or a
// host veth labelled with it.
func (m *model) assertGone(containerID string) {
	m.t.Helper()
	for addr, id := range m.storeReservations() {
		if id == containerID {
			m.t.Errorf("%s is gone but still holds %s", containerID, addr)
		}
	}
	for alias := range m.hostLinks() {
		if strings.Contains(alias, "/"+containerID+"/") {
			m.t.Errorf("%s is gone but host veth %q remains", containerID, alias)
		}
	}
}

func (m *model) assertInvariants(after string) {
	m.t.Helper()
	reserved := m.storeReservations()
	links := m.hostLinks()
	seen := make(map[netip.Addr]string)
	for _, att := range m.live() {
		id := att.rt.ContainerID
		if other, ok := seen[att.ip]; ok {
			m.t.Errorf("after %s: %s and %s both hold %s", after, other, id, att.ip)
		}
		seen[att.ip] = id
		if reserved[att.ip.String()] != id {
			m.t.Errorf("after %s: %s's address %s is reserved for %q", after, id, att.ip, reserved[att.ip.String()])
		}
		alias := attachment{ContainerID: id, IfName: "eth0"}.alias(m.l.network)
		host, ok := links[alias]
		if !ok {
			m.t.Errorf("after %s: %s has no host veth", after, id)
			continue
		}
		m.assertWiredTo(after, att, host)
	}
	if m.gcRan {
		if len(reserved) != len(seen) {
			m.t.Errorf("after %s, GC having run: reservations %v, live attachments %v", after, reserved, seen)
		}
		if len(links) != len(seen) {
			m.t.Errorf("after %s, GC having run: %d host veths, %d live attachments", after, len(links), len(seen))
		}
	}
}

// assertWiredTo checks the /32 route to att on host and, in the pod, eth0
// paired with host and holding the address.
func (m *model) assertWiredTo(after string, att *liveAttachment, host netlink.Link) {
	m.t.Helper()
	id := att.rt.ContainerID
	inNS(m.t, m.l.hostNS, func() error {
		routes, err := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Dst: hostPrefix(att.ip)}, netlink.RT_FILTER_DST)
		if err != nil {
			return err
		}
		if len(routes) != 1 || routes[0].LinkIndex != host.Attrs().Index {
			m.t.Errorf("after %s: route to %s (%s) is %v, want one via %s", after, att.ip, id, routes, host.Attrs().Name)
		}
		return nil
	})
	var box *sandbox
	for _, b := range m.boxes {
		if b.live == att {
			box = b
		}
	}
	inNS(m.t, box.netns, func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			m.t.Errorf("after %s: %s's eth0: %v", after, id, err)
			return nil
		}
		if link.Attrs().ParentIndex != host.Attrs().Index {
			m.t.Errorf("after %s: %s's eth0 is paired with ifindex %d, not its host veth %d", after, id, link.Attrs().ParentIndex, host.Attrs().Index)
		}
		addrs, err := netlink.AddrList(link, unix.AF_INET)
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return a.IP.Equal(net.IP(att.ip.AsSlice())) }) {
			m.t.Errorf("after %s: %s's eth0 lacks %s (has %v)", after, id, att.ip, addrs)
		}
		return nil
	})
}

func mustCurrent(t *testing.T, res types.Result) *current.Result {
	t.Helper()
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	return cur
}
