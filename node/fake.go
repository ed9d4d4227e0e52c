package node

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
)

// FakeKernel is an in-memory Kernel for tests and simulations. It keeps a
// main table (Grapevine's routes and others'), links, the forwarding switch
// and the masquerade pool, follows the kernel's rules where they matter to a
// reconcile (a slot is one destination and metric; deleting a link drops its
// routes), counts writes, and fails operations on request. It is safe for
// concurrent use.
type FakeKernel struct {
	mu         sync.Mutex
	links      map[string]Link
	routes     map[routeKey]FakeRoute
	forwarding map[Family]bool
	masquerade map[Family]netip.Prefix // absent: table absent
	tunnel     *fakeTunnel             // nil: no VXLAN device
	// forward is each backend's filter FORWARD chain: its policy and
	// every rule in order; a backend without an entry has no filter
	// table.
	forward map[string]*fakeForwardChain
	// forwardReads counts ForwardChains calls.
	forwardReads int
	// The pods' host sides (PodKernel); nil until a veth is added.
	veths   map[string]fakeVeth
	neighs  map[fakeNeighKey]PodNeighbour
	sysctls map[string]string
	writes  int
	faults  []fault
}

// FakeRoute is a route in the fake main table with its protocol.
type FakeRoute struct {
	Route
	Protocol int
}

// FakeOp names a Kernel operation for InjectError.
type FakeOp string

// The operations of Kernel.
const (
	OpLink       FakeOp = "link"
	OpRoutes     FakeOp = "routes"
	OpAdd        FakeOp = "add"
	OpReplace    FakeOp = "replace"
	OpDelete     FakeOp = "delete"
	OpForwarding FakeOp = "forwarding"
	OpMasquerade FakeOp = "masquerade"
	OpForward    FakeOp = "forward"
)

type fault struct {
	op  FakeOp
	dst netip.Prefix
	err error
}

// NewFakeKernel returns an empty fake: no links, no routes, forwarding off.
func NewFakeKernel() *FakeKernel {
	return &FakeKernel{links: make(map[string]Link), routes: make(map[routeKey]FakeRoute), forwarding: make(map[Family]bool)}
}

// InjectError makes op fail with err from now on; for route operations only
// when the route's destination is dst, unless dst is the zero Prefix. A nil
// err removes the faults for op and dst.
func (f *FakeKernel) InjectError(op FakeOp, dst netip.Prefix, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = slices.DeleteFunc(f.faults, func(x fault) bool { return x.op == op && x.dst == dst })
	if err != nil {
		f.faults = append(f.faults, fault{op, dst, err})
	}
}

func (f *FakeKernel) fault(op FakeOp, dst netip.Prefix) error {
	for _, x := range f.faults {
		if x.op == op && (!x.dst.IsValid() || x.dst == dst) {
			return x.err
		}
	}
	return nil
}

// AddLink adds an up link named name with the next free index and the given
// addresses (172.16.254.1/24), and returns it.
func (f *FakeKernel) AddLink(name string, addrs ...netip.Prefix) Link {
	f.mu.Lock()
	defer f.mu.Unlock()
	index := 1
	for _, l := range f.links {
		index = max(index, l.Index+1)
	}
	l := Link{Name: name, Index: index, Up: true, Addrs: slices.Clone(addrs)}
	f.setLink(l)
	return l
}

// SetLink adds or replaces a link. A new index for an existing name is a
// recreated link: routes through the old index go, as in the kernel.
func (f *FakeKernel) SetLink(l Link) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.setLink(l)
}

func (f *FakeKernel) setLink(l Link) {
	if old, ok := f.links[l.Name]; ok && old.Index != l.Index {
		f.dropRoutesVia(old.Index)
		f.dropPodState(old, false)
	}
	l.Addrs = slices.Clone(l.Addrs)
	f.links[l.Name] = l
}

// DeleteLink removes a link and every route through it.
func (f *FakeKernel) DeleteLink(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if old, ok := f.links[name]; ok {
		f.dropRoutesVia(old.Index)
		f.dropPodState(old, true)
		delete(f.links, name)
	}
}

func (f *FakeKernel) dropRoutesVia(index int) {
	for k, r := range f.routes {
		if r.LinkIndex == index && r.Unicast() {
			delete(f.routes, k)
		}
	}
}

// PutRoute stores r with protocol as someone else (an operator, another
// daemon, or a previous agent) would, overwriting its slot.
func (f *FakeKernel) PutRoute(r Route, protocol int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routes[r.key()] = FakeRoute{r, protocol}
}

// RemoveRoute deletes the route in r's slot whatever its protocol, as an
// operator's `ip route del` would.
func (f *FakeKernel) RemoveRoute(r Route) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.routes, r.key())
}

// Table returns every route in the fake main table, sorted.
func (f *FakeKernel) Table() []FakeRoute {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]FakeRoute, 0, len(f.routes))
	for _, r := range f.routes {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b FakeRoute) int { return compareRoutes(a.Route, b.Route) })
	return out
}

// Forwarding reports whether forwarding was turned on for family.
func (f *FakeKernel) Forwarding(family Family) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.forwarding[family]
}

// SwitchOffForwarding turns forwarding off for family, as something else
// on the host might.
func (f *FakeKernel) SwitchOffForwarding(family Family) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forwarding[family] = false
}

// Masquerade returns the IPv4 pool being masqueraded; zero when the table is
// absent.
func (f *FakeKernel) Masquerade() netip.Prefix {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.masquerade[IPv4]
}

// Masquerade6 returns the IPv6 pool being masqueraded; zero when the table
// is absent.
func (f *FakeKernel) Masquerade6() netip.Prefix {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.masquerade[IPv6]
}

// Writes counts the calls that changed something: route adds, replaces and
// deletes, and ensures that were not already satisfied.
func (f *FakeKernel) Writes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes
}

// Link implements Kernel.
func (f *FakeKernel) Link(name string) (Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpLink, netip.Prefix{}); err != nil {
		return Link{}, err
	}
	l, ok := f.links[name]
	if !ok {
		return Link{}, fmt.Errorf("interface %q: %w", name, ErrLinkNotFound)
	}
	l.Addrs = slices.Clone(l.Addrs)
	return l, nil
}

// Routes implements Kernel.
func (f *FakeKernel) Routes() ([]Route, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpRoutes, netip.Prefix{}); err != nil {
		return nil, err
	}
	var out []Route
	for _, r := range f.routes {
		if r.Protocol == RouteProtocol {
			out = append(out, r.Route)
		}
	}
	return out, nil
}

// AddRoute implements Kernel.
func (f *FakeKernel) AddRoute(r Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpAdd, r.Dst); err != nil {
		return err
	}
	if _, taken := f.routes[r.key()]; taken {
		return fmt.Errorf("add route %s: %w", r, ErrRouteExists)
	}
	if err := f.checkNextHop(r); err != nil {
		return err
	}
	f.routes[r.key()] = FakeRoute{r, RouteProtocol}
	f.writes++
	return nil
}

// ReplaceRoute implements Kernel.
func (f *FakeKernel) ReplaceRoute(r Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpReplace, r.Dst); err != nil {
		return err
	}
	if err := f.checkNextHop(r); err != nil {
		return err
	}
	f.routes[r.key()] = FakeRoute{r, RouteProtocol}
	f.writes++
	return nil
}

func (f *FakeKernel) checkNextHop(r Route) error {
	if !r.Unicast() {
		return nil
	}
	for _, l := range f.links {
		if l.Index == r.LinkIndex {
			if !l.Up {
				return fmt.Errorf("route %s: link %s is down", r, l.Name)
			}
			return nil
		}
	}
	return fmt.Errorf("route %s: no link with index %d", r, r.LinkIndex)
}

// DeleteRoute implements Kernel. Like the kernel given a protocol, it
// leaves a slot held by another protocol alone.
func (f *FakeKernel) DeleteRoute(r Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpDelete, r.Dst); err != nil {
		return err
	}
	if cur, ok := f.routes[r.key()]; ok && cur.Protocol == RouteProtocol {
		delete(f.routes, r.key())
		f.writes++
	}
	return nil
}

// EnsureForwarding implements Kernel.
func (f *FakeKernel) EnsureForwarding(family Family) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpForwarding, netip.Prefix{}); err != nil {
		return false, err
	}
	if f.forwarding[family] {
		return false, nil
	}
	f.forwarding[family] = true
	f.writes++
	return true, nil
}

// EnsureMasquerade implements Kernel.
func (f *FakeKernel) EnsureMasquerade(pool netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpMasquerade, netip.Prefix{}); err != nil {
		return err
	}
	if err := checkMasqueradePool(pool); err != nil {
		return err
	}
	if f.masquerade[familyOf(pool)] != pool {
		if f.masquerade == nil {
			f.masquerade = make(map[Family]netip.Prefix)
		}
		f.masquerade[familyOf(pool)] = pool
		f.writes++
	}
	return nil
}

// RemoveMasquerade implements Kernel.
func (f *FakeKernel) RemoveMasquerade(family Family) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpMasquerade, netip.Prefix{}); err != nil {
		return err
	}
	if _, ok := f.masquerade[family]; ok {
		delete(f.masquerade, family)
		f.writes++
	}
	return nil
}

type fakeForwardChain struct {
	policy string
	rules  [][]string
}

// SetForwardPolicy gives backend (BackendNFT, BackendLegacy) a filter
// table whose FORWARD chain has policy, as a firewall would; "" removes the
// table.
func (f *FakeKernel) SetForwardPolicy(backend, policy string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if policy == "" {
		delete(f.forward, backend)
		return
	}
	if f.forward == nil {
		f.forward = make(map[string]*fakeForwardChain)
	}
	if c, ok := f.forward[backend]; ok {
		c.policy = policy
		return
	}
	f.forward[backend] = &fakeForwardChain{policy: policy}
}

// ForwardRules returns backend's FORWARD rules in order; nil without a
// filter table.
func (f *FakeKernel) ForwardRules(backend string) [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.forward[backend]
	if !ok {
		return nil
	}
	return slices.Clone(c.rules)
}

// ForwardReads counts the calls of ForwardChains.
func (f *FakeKernel) ForwardReads() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.forwardReads
}

// ForwardChains implements ForwardKernel.
func (f *FakeKernel) ForwardChains() ([]ForwardChain, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forwardReads++
	if err := f.fault(OpForward, netip.Prefix{}); err != nil {
		return nil, err
	}
	var chains []ForwardChain
	for _, b := range []string{BackendNFT, BackendLegacy} {
		c, ok := f.forward[b]
		if !ok {
			continue
		}
		fc := ForwardChain{Backend: b, Policy: c.policy}
		for _, r := range c.rules {
			if IsOurForwardRule(r) {
				fc.Ours = append(fc.Ours, ForwardRule{Backend: b, Spec: slices.Clone(r)})
			}
		}
		chains = append(chains, fc)
	}
	return chains, nil
}

// InsertForwardRule implements ForwardKernel.
func (f *FakeKernel) InsertForwardRule(r ForwardRule) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpForward, netip.Prefix{}); err != nil {
		return err
	}
	c, ok := f.forward[r.Backend]
	if !ok {
		return fmt.Errorf("forward: %s has no filter table", r.Backend)
	}
	c.rules = slices.Insert(c.rules, 0, slices.Clone(r.Spec))
	f.writes++
	return nil
}

// DeleteForwardRule implements ForwardKernel.
func (f *FakeKernel) DeleteForwardRule(r ForwardRule) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpForward, netip.Prefix{}); err != nil {
		return err
	}
	c, ok := f.forward[r.Backend]
	if !ok {
		return nil
	}
	if i := slices.IndexFunc(c.rules, func(s []string) bool { return slices.Equal(s, r.Spec) }); i >= 0 {
		c.rules = slices.Delete(c.rules, i, i+1)
		f.writes++
	}
	return nil
}
