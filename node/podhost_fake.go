package node

import (
	"fmt"
	"io/fs"
	"net/netip"
	"slices"
	"strings"

	"github.com/grapevine-net/grapevine/internal/hostveth"
)

// OpPod names PodKernel's operations for FakeKernel.InjectError.
const OpPod FakeOp = "pod"

// fakeVeth is what the fake knows of a host veth beyond its link.
type fakeVeth struct {
	alias  string
	podMAC MAC
}

type fakeNeighKey struct {
	link int
	ip   netip.Addr
}

// defaultVethSysctls are a new veth's values of hostveth.Sysctls' settings,
// before the plugin sets them.
var defaultVethSysctls = map[string]string{"proxy_arp": "0", "proxy_delay": "80", "forwarding": "0", "accept_ra": "1"}

// AddHostVeth adds an up veth named name with alias whose other end has
// podMAC, with a new interface's settings.
func (f *FakeKernel) AddHostVeth(name, alias string, podMAC MAC) Link {
	l := f.AddLink(name)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.initPods()
	f.veths[name] = fakeVeth{alias: alias, podMAC: podMAC}
	for _, s := range hostveth.Sysctls(name) {
		f.sysctls[s.Key] = defaultVethSysctls[s.Key[strings.LastIndexByte(s.Key, '/')+1:]]
	}
	return l
}

// WirePod wires a pod's host side as the CNI plugin does: the veth, its
// settings, the /32 route (protocol boot) and the PERMANENT neighbour entry.
func (f *FakeKernel) WirePod(veth, alias string, addr netip.Addr, podMAC MAC) Link {
	l := f.AddHostVeth(veth, alias, podMAC)
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range hostveth.Sysctls(veth) {
		f.sysctls[s.Key] = s.Value
	}
	r := PodHost{Addr: addr, Veth: HostVeth{Index: l.Index}}.Route()
	f.routes[r.key()] = FakeRoute{r, 3}
	f.neighs[fakeNeighKey{l.Index, addr}] = PodNeighbour{l.Index, Neighbour{IP: addr, MAC: podMAC, Permanent: true}}
	return l
}

// PutPodNeighbour stores n as an operator's `ip neigh replace` would.
func (f *FakeKernel) PutPodNeighbour(n PodNeighbour) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.initPods()
	f.neighs[fakeNeighKey{n.LinkIndex, n.IP}] = n
}

// RemoveNeighbour deletes the entry for ip on the link with index link, as
// an operator's `ip neigh del` would.
func (f *FakeKernel) RemoveNeighbour(link int, ip netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.neighs, fakeNeighKey{link, ip})
}

// PutSysctl sets a setting as an operator's `sysctl -w` would.
func (f *FakeKernel) PutSysctl(key, value string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.initPods()
	f.sysctls[key] = value
}

func (f *FakeKernel) initPods() {
	if f.veths == nil {
		f.veths = make(map[string]fakeVeth)
		f.neighs = make(map[fakeNeighKey]PodNeighbour)
		f.sysctls = make(map[string]string)
	}
}

// dropPodState forgets what went with the link l: its neighbours and, if
// it is gone, its settings.
func (f *FakeKernel) dropPodState(l Link, gone bool) {
	for k := range f.neighs {
		if k.link == l.Index {
			delete(f.neighs, k)
		}
	}
	if !gone {
		return
	}
	delete(f.veths, l.Name)
	for key := range f.sysctls {
		if strings.Contains(key, "/"+l.Name+"/") {
			delete(f.sysctls, key)
		}
	}
}

// HostVeths implements PodKernel.
func (f *FakeKernel) HostVeths(aliasPrefix string) ([]HostVeth, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpPod, netip.Prefix{}); err != nil {
		return nil, err
	}
	var out []HostVeth
	for name, v := range f.veths {
		if l, ok := f.links[name]; ok && strings.HasPrefix(v.alias, aliasPrefix) {
			out = append(out, HostVeth{Name: name, Index: l.Index, Alias: v.alias, PodMAC: v.podMAC})
		}
	}
	slices.SortFunc(out, func(a, b HostVeth) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// PodRoutes implements PodKernel.
func (f *FakeKernel) PodRoutes() ([]Route, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpPod, netip.Prefix{}); err != nil {
		return nil, err
	}
	var out []Route
	for _, r := range f.routes {
		if r.Protocol != RouteProtocol && r.Dst.Bits() == r.Dst.Addr().BitLen() {
			out = append(out, r.Route)
		}
	}
	return out, nil
}

// ReplacePodRoute implements PodKernel.
func (f *FakeKernel) ReplacePodRoute(r Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpPod, r.Dst); err != nil {
		return err
	}
	if err := f.checkNextHop(r); err != nil {
		return err
	}
	f.routes[r.key()] = FakeRoute{r, 3}
	f.writes++
	return nil
}

// PodNeighbours implements PodKernel.
func (f *FakeKernel) PodNeighbours() ([]PodNeighbour, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpPod, netip.Prefix{}); err != nil {
		return nil, err
	}
	out := make([]PodNeighbour, 0, len(f.neighs))
	for _, n := range f.neighs {
		out = append(out, n)
	}
	return out, nil
}

// PodNeighbour returns the entry for ip on the link with index link.
func (f *FakeKernel) PodNeighbour(link int, ip netip.Addr) (PodNeighbour, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.neighs[fakeNeighKey{link, ip}]
	return n, ok
}

// SetPodNeighbour implements PodKernel.
func (f *FakeKernel) SetPodNeighbour(n PodNeighbour) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpPod, netip.PrefixFrom(n.IP, n.IP.BitLen())); err != nil {
		return err
	}
	linked := false
	for _, l := range f.links {
		linked = linked || l.Index == n.LinkIndex
	}
	if !linked {
		return fmt.Errorf("neighbour %s: no link with index %d", n.IP, n.LinkIndex)
	}
	f.initPods()
	n.Permanent = true
	f.neighs[fakeNeighKey{n.LinkIndex, n.IP}] = n
	f.writes++
	return nil
}

// Sysctl implements PodKernel.
func (f *FakeKernel) Sysctl(key string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpPod, netip.Prefix{}); err != nil {
		return "", err
	}
	v, ok := f.sysctls[key]
	if !ok {
		return "", fmt.Errorf("read %s: %w", key, fs.ErrNotExist)
	}
	return v, nil
}

// SetSysctl implements PodKernel.
func (f *FakeKernel) SetSysctl(s Sysctl) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpPod, netip.Prefix{}); err != nil {
		return err
	}
	if _, ok := f.sysctls[s.Key]; !ok {
		return fmt.Errorf("put back %s=%s: %w", s.Key, s.Value, fs.ErrNotExist)
	}
	f.sysctls[s.Key] = s.Value
	f.writes++
	return nil
}
