package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/grapevine-net/grapevine/node/nodestate"
)

// Gateway is the link-local next hop every pod routes through. No host holds
// it: the host veth answers ARP for it by proxy.
func Gateway() netip.Addr { return netip.AddrFrom4([4]byte{169, 254, 1, 1}) }

// Gateway6 is the IPv6 next hop every dual-stack pod routes through: the
// link-local address the host veth's MAC ee:ee:ee:ee:ee:ee gives (EUI-64),
// which the plugin puts on every host veth.
func Gateway6() netip.Addr { return netip.MustParseAddr("fe80::ecee:eeff:feee:eeee") }

// SupportedVersions are the CNI spec versions grapevine speaks.
func SupportedVersions() version.PluginInfo {
	return version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
}

// Funcs are grapevine-ipam's CNI commands, for skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus}
}

// Result is the IPAM result for addrs, one per family: a /32 (IPv4) or
// /128 (IPv6) each with its family's link-local gateway and a default route
// through it.
func Result(addrs ...netip.Addr) *current.Result {
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	for _, addr := range addrs {
		gw, bits := Gateway(), 32
		if !addr.Is4() {
			gw, bits = Gateway6(), 128
		}
		res.IPs = append(res.IPs, &current.IPConfig{
			Address: net.IPNet{IP: net.IP(addr.AsSlice()), Mask: net.CIDRMask(bits, bits)},
			Gateway: net.IP(gw.AsSlice()),
		})
		res.Routes = append(res.Routes, &types.Route{
			Dst: net.IPNet{IP: make(net.IP, bits/8), Mask: net.CIDRMask(0, bits)},
			GW:  net.IP(gw.AsSlice()),
		})
	}
	return res
}

func cmdAdd(args *skel.CmdArgs) error {
	cfg, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	st, err := ReadNodeState(cfg.RunDir)
	if err != nil {
		return err
	}
	alloc, err := Open(cfg)
	if err != nil {
		return err
	}
	defer alloc.Close()
	addrs, reserved, err := AllocateFromState(alloc, st, args.ContainerID, args.IfName)
	if err != nil {
		return err
	}
	// The lease may have ended while the store was locked: hand the
	// addresses out only if it held once they were taken. Only addresses
	// this ADD reserved are freed again.
	if lerr := LeaseHolds(st); lerr != nil {
		if err := alloc.ReleaseAddrs(reserved, args.ContainerID, args.IfName); err != nil {
			return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("%s; freeing %v again failed: %v", lerr.Msg, reserved, err), "")
		}
		return lerr
	}
	var vc struct {
		CNIVersion string `json:"cniVersion"`
	}
	if err := json.Unmarshal(args.StdinData, &vc); err != nil {
		return DecodeError(err)
	}
	return types.PrintResult(Result(addrs...), vc.CNIVersion)
}

// openFromConfig parses the network configuration and opens its store.
func openFromConfig(stdin []byte) (Config, *Allocator, error) {
	cfg, err := ParseConfig(stdin)
	if err != nil {
		return cfg, nil, err
	}
	alloc, err := Open(cfg)
	return cfg, alloc, err
}

func cmdDel(args *skel.CmdArgs) error {
	_, alloc, err := openFromConfig(args.StdinData)
	if err != nil {
		return err
	}
	defer alloc.Close()
	return alloc.Release(args.ContainerID, args.IfName)
}

// cmdCheck verifies that the attachment still holds an address, and the one
// the previous result reported when there is one.
func cmdCheck(args *skel.CmdArgs) error {
	cfg, alloc, err := openFromConfig(args.StdinData)
	if err != nil {
		return err
	}
	defer alloc.Close()
	held, err := alloc.Held(args.ContainerID, args.IfName)
	if err != nil {
		return err
	}
	if len(held) == 0 {
		return fmt.Errorf("no address is reserved for %s/%s in %s", args.ContainerID, args.IfName, cfg.StoreDir())
	}
	var conf types.PluginConf
	if err := json.Unmarshal(args.StdinData, &conf); err != nil {
		return DecodeError(err)
	}
	if conf.RawPrevResult == nil {
		return nil
	}
	prev, err := PrevResult(&conf)
	if err != nil {
		return err
	}
	return CheckHeld(held, prev, args.ContainerID, args.IfName)
}

// PrevResult decodes conf's prevResult, which must be present, into the
// current result version. Failures are CNI error 6.
func PrevResult(conf *types.PluginConf) (*current.Result, error) {
	if err := version.ParsePrevResult(conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("parse prevResult: %v", err), "")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("convert prevResult: %v", err), "")
	}
	return prev, nil
}

// CheckHeld reports an error naming every address of prev (either family)
// that is not among held, the reservations of (containerID, ifname).
func CheckHeld(held []netip.Addr, prev *current.Result, containerID, ifname string) error {
	var errs []error
	for _, ipc := range prev.IPs {
		addr, ok := netip.AddrFromSlice(ipc.Address.IP)
		if ok && !slices.Contains(held, addr.Unmap()) {
			errs = append(errs, fmt.Errorf("address %s is not reserved for %s/%s (it holds %v)", addr, containerID, ifname, held))
		}
	}
	return errors.Join(errs...)
}

func cmdGC(args *skel.CmdArgs) error {
	cfg, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	var conf types.PluginConf
	if err := json.Unmarshal(args.StdinData, &conf); err != nil {
		return DecodeError(err)
	}
	if err := RequireValidAttachments(args.StdinData); err != nil {
		return err
	}
	alloc, err := Open(cfg)
	if err != nil {
		return err
	}
	defer alloc.Close()
	return alloc.GC(conf.ValidAttachments)
}

// validAttachmentsKey is where GC's network configuration lists the
// attachments the runtime still runs.
const validAttachmentsKey = "cni.dev/valid-attachments"

// RequireValidAttachments refuses a GC whose configuration lacks
// cni.dev/valid-attachments with CNI error 7: without the list every
// attachment would count as gone. An empty list (or null, as a runtime
// written in Go encodes an empty slice) is a node without pods.
func RequireValidAttachments(stdin []byte) error {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(stdin, &keys); err != nil {
		return DecodeError(err)
	}
	if _, ok := keys[validAttachmentsKey]; !ok {
		return types.NewError(types.ErrInvalidNetworkConfig,
			"GC needs "+validAttachmentsKey+" in the network config, the attachments still in use; without it nothing is collected", "")
	}
	return nil
}

// cmdStatus succeeds only when an ADD could succeed now (see Status).
func cmdStatus(args *skel.CmdArgs) error {
	cfg, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	return Status(cfg)
}

// StatusError is nil when node.json in runDir holds a usable block under a
// lease that holds, and CNI error 50 (plugin not available) saying why
// otherwise.
func StatusError(runDir string) error {
	st, err := nodestate.Read(runDir)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, err.Error(), "")
	}
	if lerr := LeaseHolds(st); lerr != nil {
		return types.NewError(types.ErrPluginNotAvailable, lerr.Msg, "")
	}
	return nil
}

// Status is nil when an ADD could get an address now, and CNI error 50
// (plugin not available) naming the reason otherwise: node.json holds no
// usable block, its lease has ended, the store cannot be written, or the
// block is exhausted.
func Status(cfg Config) error {
	if err := StatusError(cfg.RunDir); err != nil {
		return err
	}
	st, err := nodestate.Read(cfg.RunDir)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, err.Error(), "")
	}
	alloc, err := Open(cfg)
	if err == nil {
		defer alloc.Close()
		for _, block := range st.Blocks() {
			if err = alloc.Status(block); err != nil {
				break
			}
		}
	}
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, err.Error(), "")
	}
	return nil
}
