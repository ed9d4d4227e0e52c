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
)

// addressSource is the IPAM side of one CNI call: grapevine-ipam in-process,
// or any IPAM plugin executed the standard way.
type addressSource interface {
	// allocate returns the attachment's address in block and whether this
	// call reserved it (false: the attachment held it already).
	allocate(ctx context.Context, block netip.Prefix) (addr netip.Addr, reserved bool, err error)
	// undoAllocate frees addr, which allocate reserved, when the ADD
	// fails, and nothing the attachment held before.
	undoAllocate(ctx context.Context, addr netip.Addr) error
	// release frees everything the attachment holds (DEL).
	release(ctx context.Context) error
	check(ctx context.Context, prev *current.Result) error
	gc(ctx context.Context, valid []types.GCAttachment) error
	status(ctx context.Context) error
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

func (l *localIPAM) allocate(_ context.Context, block netip.Prefix) (addr netip.Addr, reserved bool, err error) {
	err = l.withAllocator(func(a *ipam.Allocator) error {
		var err error
		addr, reserved, err = a.Allocate(block, l.containerID, l.ifName)
		return err
	})
	return addr, reserved, err
}

func (l *localIPAM) undoAllocate(_ context.Context, addr netip.Addr) error {
	return l.withAllocator(func(a *ipam.Allocator) error { return a.ReleaseAddr(addr, l.containerID, l.ifName) })
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

// allocate cannot learn from the delegate whether the address is new, so
// it reports it reserved; undoAllocate checks for the attachment instead.
func (d *delegatedIPAM) allocate(ctx context.Context, block netip.Prefix) (netip.Addr, bool, error) {
	res, err := invoke.DelegateAdd(ctx, d.typ, d.stdin, nil)
	if err != nil {
		return netip.Addr{}, false, err
	}
	addr, err := d.addrFromResult(ctx, res, block)
	return addr, err == nil, err
}

func (d *delegatedIPAM) addrFromResult(ctx context.Context, res types.Result, block netip.Prefix) (netip.Addr, error) {
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		return netip.Addr{}, errors.Join(fmt.Errorf("ipam %s: convert result: %w", d.typ, err), d.undoAllocate(ctx, netip.Addr{}))
	}
	for _, ipc := range cur.IPs {
		addr, ok := netip.AddrFromSlice(ipc.Address.IP.To4())
		if !ok {
			continue
		}
		if !block.Contains(addr) {
			// Other nodes route only this node's block here: the pod
			// would be unreachable from them.
			return netip.Addr{}, errors.Join(
				fmt.Errorf("ipam %s returned %s, outside this node's block %s", d.typ, addr, block),
				d.undoAllocate(ctx, netip.Addr{}))
		}
		return addr, nil
	}
	return netip.Addr{}, errors.Join(
		fmt.Errorf("ipam %s returned no IPv4 address", d.typ),
		d.undoAllocate(ctx, netip.Addr{}))
}

// undoAllocate frees the attachment's addresses through the delegate's DEL
// unless a host veth still carries the attachment's alias: then the ADD
// repeated a running attachment and what the delegate returned was its.
func (d *delegatedIPAM) undoAllocate(ctx context.Context, _ netip.Addr) error {
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
