package plugin

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/grapevine-net/grapevine/ipam"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// addressSource is the IPAM side of one CNI call: grapevine-ipam in-process,
// or any IPAM plugin executed the standard way.
type addressSource interface {
	// allocate returns the attachment's addresses in node's blocks (an
	// IPv6 one only on a dual-stack node) and those of them this call
	// reserved (not those the attachment held already).
	allocate(ctx context.Context, node nodestate.State) (addrs podAddrs, reserved []netip.Addr, err error)
	// undoAllocate frees reserved, which allocate reserved, when the ADD
	// fails, and nothing the attachment held before.
	undoAllocate(ctx context.Context, reserved []netip.Addr) error
	// release frees everything the attachment holds (DEL).
	release(ctx context.Context) error
	check(ctx context.Context, prev *current.Result) error
	gc(ctx context.Context, valid []types.GCAttachment) error
	status(ctx context.Context) error
}

// podAddrs are a pod's addresses, one per family of the node's blocks: an
// IPv4 one on an IPv4-only node, both on a dual-stack node, an IPv6 one on
// an IPv6-only node (the zero Addr for a family the pod lacks).
type podAddrs struct {
	v4, v6 netip.Addr
}

// all lists the addresses the pod has, IPv4 first.
func (p podAddrs) all() []netip.Addr {
	var all []netip.Addr
	for _, a := range []netip.Addr{p.v4, p.v6} {
		if a.IsValid() {
			all = append(all, a)
		}
	}
	return all
}

// slot is where an address of addr's family goes.
func (p *podAddrs) slot(addr netip.Addr) *netip.Addr {
	if addr.Is4() {
		return &p.v4
	}
	return &p.v6
}

func newAddressSource(conf *Config, args *skel.CmdArgs) addressSource {
	if conf.ipam != nil {
		return &localIPAM{cfg: *conf.ipam, containerID: args.ContainerID, ifName: args.IfName}
	}
	alias := attachment{ContainerID: args.ContainerID, IfName: args.IfName}.alias(conf.Name)
	return &delegatedIPAM{typ: conf.IPAM.Type, stdin: args.StdinData, alias: alias}
}

// localIPAM calls package ipam directly, sparing an exec per ADD and DEL.
type localIPAM struct {
	cfg                 ipam.Config
	containerID, ifName string
}

func (l *localIPAM) withAllocator(fn func(*ipam.Allocator) error) error {
	alloc, err := ipam.Open(l.cfg)
	if err != nil {
		return err
	}
	defer alloc.Close()
	return fn(alloc)
}

func (l *localIPAM) allocate(_ context.Context, node nodestate.State) (addrs podAddrs, reserved []netip.Addr, err error) {
	err = l.withAllocator(func(a *ipam.Allocator) error {
		got, fresh, err := ipam.AllocateFromState(a, node, l.containerID, l.ifName)
		if err != nil {
			return err
		}
		reserved = fresh
		for _, addr := range got {
			*addrs.slot(addr) = addr
		}
		return nil
	})
	return addrs, reserved, err
}

func (l *localIPAM) undoAllocate(_ context.Context, reserved []netip.Addr) error {
	return l.withAllocator(func(a *ipam.Allocator) error { return a.ReleaseAddrs(reserved, l.containerID, l.ifName) })
}

func (l *localIPAM) release(context.Context) error {
	return l.withAllocator(func(a *ipam.Allocator) error { return a.Release(l.containerID, l.ifName) })
}

func (l *localIPAM) check(_ context.Context, prev *current.Result) error {
	return l.withAllocator(func(a *ipam.Allocator) error {
		held, err := a.Held(l.containerID, l.ifName)
		if err != nil {
			return err
		}
		if len(held) == 0 {
			return fmt.Errorf("ipam: no address is reserved for %s/%s in %s", l.containerID, l.ifName, l.cfg.StoreDir())
		}
		return ipam.CheckHeld(held, prev, l.containerID, l.ifName)
	})
}

func (l *localIPAM) gc(_ context.Context, valid []types.GCAttachment) error {
	return l.withAllocator(func(a *ipam.Allocator) error { return a.GC(valid) })
}

// status is ipam.Status: a block, a writable store and a free address.
func (l *localIPAM) status(context.Context) error { return ipam.Status(l.cfg) }

// delegatedIPAM executes another IPAM plugin found on CNI_PATH.
type delegatedIPAM struct {
	typ   string
	stdin []byte
	// alias is the attachment's host veth alias: whether a link carries it
	// tells whether the attachment exists beside a failed ADD.
	alias string
}

// allocate cannot learn from the delegate whether the addresses are new,
// so it reports them reserved; undoAllocate checks for the attachment
// instead.
func (d *delegatedIPAM) allocate(ctx context.Context, node nodestate.State) (podAddrs, []netip.Addr, error) {
	res, err := invoke.DelegateAdd(ctx, d.typ, d.stdin, nil)
	if err != nil {
		return podAddrs{}, nil, err
	}
	addrs, err := d.addrsFromResult(res, node)
	if err != nil {
		return podAddrs{}, nil, errors.Join(err, d.undoAllocate(ctx, nil))
	}
	return addrs, addrs.all(), nil
}

// addrsFromResult takes the delegate's first address of the node's block's
// family (IPv4, or IPv6 on an IPv6-only node), which must be in the
// block, and on a dual-stack node its first IPv6 address, which must be in
// the IPv6 block (a delegate configured for IPv4 only leaves the pod
// IPv4-only). Addresses of a family the node has no block of are ignored,
// as IPv6 ones on an IPv4-only node always were.
func (d *delegatedIPAM) addrsFromResult(res types.Result, node nodestate.State) (podAddrs, error) {
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		return podAddrs{}, fmt.Errorf("ipam %s: convert result: %w", d.typ, err)
	}
	var addrs podAddrs
	for _, ipc := range cur.IPs {
		addr, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			continue
		}
		addr = addr.Unmap()
		block := node.Block
		if addr.Is4() != block.Addr().Is4() {
			block = node.Block6
		}
		slot := addrs.slot(addr)
		if slot.IsValid() || !block.IsValid() || block.Addr().Is4() != addr.Is4() {
			continue
		}
		if !block.Contains(addr) {
			// Other nodes route only this node's block here: the pod
			// would be unreachable from them.
			return podAddrs{}, fmt.Errorf("ipam %s returned %s, outside this node's block %s", d.typ, addr, block)
		}
		*slot = addr
	}
	if !addrs.slot(node.Block.Addr()).IsValid() {
		return podAddrs{}, fmt.Errorf("ipam %s returned no address in this node's block %s", d.typ, node.Block)
	}
	return addrs, nil
}

// undoAllocate frees the attachment's addresses through the delegate's DEL
// unless a host veth still carries the attachment's alias: then the ADD
// repeated a running attachment and what the delegate returned was its.
func (d *delegatedIPAM) undoAllocate(ctx context.Context, _ []netip.Addr) error {
	link, err := linkWithAlias(d.alias)
	if err != nil {
		return err
	}
	if link != nil {
		return nil
	}
	return d.release(ctx)
}

func (d *delegatedIPAM) release(ctx context.Context) error {
	return invoke.DelegateDel(ctx, d.typ, d.stdin, nil)
}

func (d *delegatedIPAM) check(ctx context.Context, _ *current.Result) error {
	return invoke.DelegateCheck(ctx, d.typ, d.stdin, nil)
}

func (d *delegatedIPAM) gc(ctx context.Context, _ []types.GCAttachment) error {
	return invoke.DelegateGC(ctx, d.typ, d.stdin, nil)
}

func (d *delegatedIPAM) status(ctx context.Context) error {
	return invoke.DelegateStatus(ctx, d.typ, d.stdin, nil)
}
