package node

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
)

// Operations of TunnelKernel for FakeKernel.InjectError.
const (
	OpTunnel      FakeOp = "tunnel"       // Tunnel, AddTunnel, DeleteTunnel, SetTunnelUp, addresses
	OpTunnelEntry FakeOp = "tunnel-entry" // TunnelEntries and the entry writes
)

// fakeTunnel is the fake's VXLAN device: a link named TunnelName in the
// links map plus what only a VXLAN device has. Deleting the link (DeleteLink,
// as an operator's `ip link del gv.vxlan`) takes the device and its entries
// with it, as in the kernel.
type fakeTunnel struct {
	cfg    Tunnel
	index  int
	neighs map[netip.Addr]Neighbour
	fdb    map[MAC]FDBEntry
}

// tunnelLocked returns the device if its link still exists, and forgets it
// otherwise.
func (f *FakeKernel) tunnelLocked() *fakeTunnel {
	if f.tunnel == nil {
		return nil
	}
	if l, ok := f.links[TunnelName]; !ok || l.Index != f.tunnel.index {
		f.tunnel = nil
		return nil
	}
	return f.tunnel
}

// Tunnel implements TunnelKernel.
func (f *FakeKernel) Tunnel() (TunnelState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpTunnel, netip.Prefix{}); err != nil {
		return TunnelState{}, err
	}
	l, ok := f.links[TunnelName]
	if !ok {
		return TunnelState{}, fmt.Errorf("interface %q: %w", TunnelName, ErrLinkNotFound)
	}
	t := f.tunnelLocked()
	if t == nil {
		return TunnelState{Kind: "dummy", Index: l.Index, Up: l.Up, Addrs: slices.Clone(l.Addrs)}, nil
	}
	return TunnelState{Kind: "vxlan", Index: l.Index, Up: l.Up, Tunnel: t.cfg, Addrs: slices.Clone(l.Addrs)}, nil
}

// AddTunnel implements TunnelKernel.
func (f *FakeKernel) AddTunnel(t Tunnel) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpTunnel, netip.Prefix{}); err != nil {
		return err
	}
	if _, ok := f.links[TunnelName]; ok {
		return fmt.Errorf("add %s: file exists", TunnelName)
	}
	index := 1
	for _, l := range f.links {
		index = max(index, l.Index+1)
	}
	cfg := t
	cfg.Addr, cfg.Addr6 = netip.Addr{}, netip.Addr{}
	f.setLink(Link{Name: TunnelName, Index: index})
	f.tunnel = &fakeTunnel{cfg: cfg, index: index, neighs: make(map[netip.Addr]Neighbour), fdb: make(map[MAC]FDBEntry)}
	f.writes++
	return nil
}

// DeleteTunnel implements TunnelKernel.
func (f *FakeKernel) DeleteTunnel() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpTunnel, netip.Prefix{}); err != nil {
		return err
	}
	if f.tunnelLocked() == nil {
		return nil
	}
	f.dropRoutesVia(f.tunnel.index)
	delete(f.links, TunnelName)
	f.tunnel = nil
	f.writes++
	return nil
}

// SetTunnelUp implements TunnelKernel.
func (f *FakeKernel) SetTunnelUp() error {
	return f.changeTunnelLink(func(l *Link) { l.Up = true })
}

// AddTunnelAddr implements TunnelKernel.
func (f *FakeKernel) AddTunnelAddr(p netip.Prefix) error {
	return f.changeTunnelLink(func(l *Link) {
		if !slices.Contains(l.Addrs, p) {
			l.Addrs = append(l.Addrs, p)
		}
	})
}

// DeleteTunnelAddr implements TunnelKernel.
func (f *FakeKernel) DeleteTunnelAddr(p netip.Prefix) error {
	return f.changeTunnelLink(func(l *Link) {
		l.Addrs = slices.DeleteFunc(l.Addrs, func(a netip.Prefix) bool { return a == p })
	})
}

func (f *FakeKernel) changeTunnelLink(change func(*Link)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpTunnel, netip.Prefix{}); err != nil {
		return err
	}
	if f.tunnelLocked() == nil {
		return fmt.Errorf("interface %q: %w", TunnelName, ErrLinkNotFound)
	}
	l := f.links[TunnelName]
	l.Addrs = slices.Clone(l.Addrs)
	change(&l)
	f.links[TunnelName] = l
	f.writes++
	return nil
}

// TunnelEntries implements TunnelKernel.
func (f *FakeKernel) TunnelEntries() ([]Neighbour, []FDBEntry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpTunnelEntry, netip.Prefix{}); err != nil {
		return nil, nil, err
	}
	t := f.tunnelLocked()
	if t == nil {
		return nil, nil, fmt.Errorf("interface %q: %w", TunnelName, ErrLinkNotFound)
	}
	return slices.Collect(maps.Values(t.neighs)), slices.Collect(maps.Values(t.fdb)), nil
}

// SetNeighbour implements TunnelKernel.
func (f *FakeKernel) SetNeighbour(n Neighbour) error {
	return f.changeEntries(func(t *fakeTunnel) {
		n.Permanent = true
		t.neighs[n.IP] = n
	})
}

// DeleteNeighbour implements TunnelKernel.
func (f *FakeKernel) DeleteNeighbour(n Neighbour) error {
	return f.changeEntries(func(t *fakeTunnel) { delete(t.neighs, n.IP) })
}

// SetFDB implements TunnelKernel.
func (f *FakeKernel) SetFDB(e FDBEntry) error {
	return f.changeEntries(func(t *fakeTunnel) { t.fdb[e.MAC] = e })
}

// DeleteFDB implements TunnelKernel.
func (f *FakeKernel) DeleteFDB(e FDBEntry) error {
	return f.changeEntries(func(t *fakeTunnel) {
		if t.fdb[e.MAC] == e {
			delete(t.fdb, e.MAC)
		}
	})
}

func (f *FakeKernel) changeEntries(change func(*fakeTunnel)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fault(OpTunnelEntry, netip.Prefix{}); err != nil {
		return err
	}
	t := f.tunnelLocked()
	if t == nil {
		return fmt.Errorf("interface %q: %w", TunnelName, ErrLinkNotFound)
	}
	change(t)
	f.writes++
	return nil
}

// PutNeighbour stores a neighbour entry on the device as the kernel or an
// operator would, e.g. a stale one, whatever its state.
func (f *FakeKernel) PutNeighbour(n Neighbour) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t := f.tunnelLocked(); t != nil {
		t.neighs[n.IP] = n
	}
}
