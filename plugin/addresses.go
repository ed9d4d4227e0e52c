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
	allocate(ctx context.Context, block netip.Prefix) (netip.Addr, error)
	release(ctx context.Context) error
	check(ctx context.Context, prev *current.Result) error
	gc(ctx context.Context, valid []types.GCAttachment) error
	status(ctx context.Context) error
}

func newAddressSource(conf *Config, args *skel.CmdArgs) addressSource {
	if conf.ipam != nil {
		return &localIPAM{cfg: *conf.ipam, containerID: args.ContainerID, ifName: args.IfName}
	}
	return &delegatedIPAM{typ: conf.IPAM.Type, stdin: args.StdinData}
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

func (l *localIPAM) allocate(_ context.Context, block netip.Prefix) (netip.Addr, error) {
	var addr netip.Addr
	err := l.withAllocator(func(a *ipam.Allocator) error {
		var err error
		addr, err = a.Allocate(block, l.containerID, l.ifName)
		return err
	})
	return addr, err
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

// status has nothing to add: grapevine-ipam needs only a block in
// node.json, which cmdStatus checks before asking the address source.
func (l *localIPAM) status(context.Context) error { return nil }

// delegatedIPAM executes another IPAM plugin found on CNI_PATH.
type delegatedIPAM struct {
	typ   string
	stdin []byte
}

func (d *delegatedIPAM) allocate(ctx context.Context, block netip.Prefix) (netip.Addr, error) {
	res, err := invoke.DelegateAdd(ctx, d.typ, d.stdin, nil)
	if err != nil {
		return netip.Addr{}, err
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("ipam %s: convert result: %w", d.typ, err)
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
				d.release(ctx))
		}
		return addr, nil
	}
	return netip.Addr{}, errors.Join(
		fmt.Errorf("ipam %s returned no IPv4 address", d.typ),
		d.release(ctx))
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
