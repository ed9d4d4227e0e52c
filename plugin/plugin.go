package plugin

import (
	"context"
	"errors"
	"fmt"

	cnins "github.com/containernetworking/cni/pkg/ns"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/grapevine-net/grapevine/ipam"
)

// Funcs are grapevine-cni's CNI commands, for skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus}
}

func cmdAdd(args *skel.CmdArgs) (err error) {
	ctx := context.Background()
	conf, att, err := parseArgs(args)
	if err != nil {
		return err
	}
	node, err := ipam.ReadNodeState(conf.RunDir)
	if err != nil {
		return err
	}
	mtu := conf.MTU
	if mtu == 0 {
		mtu = node.MTU
	}
	podNS, err := openPodNS(args.Netns)
	if err != nil {
		return err
	}
	defer podNS.Close()

	addrs := newAddressSource(conf, args)
	podIP, err := addrs.allocate(ctx, node.Block)
	if err != nil {
		return err
	}
	hostVeth := att.HostVethName()
	defer func() {
		if err != nil {
			// Removing the host side takes the pod side with it; a link
			// that was never created is no error.
			err = withUndo(err, errors.Join(deleteLink(hostVeth), addrs.release(ctx)))
		}
	}()

	if err = createVeth(hostVeth, args.IfName, att.alias(conf.Name), mtu, podNS); err != nil {
		return err
	}
	pod, err := configurePod(podNS, args.IfName, podIP)
	if err != nil {
		return err
	}
	host, err := configureHost(hostVeth, podIP, pod.mac)
	if err != nil {
		return err
	}

	// The lease may have ended while the pod was wired: hand the address
	// out only if it still holds now that the pod has it (the deferred
	// undo removes what this ADD created).
	if lerr := ipam.LeaseHolds(node); lerr != nil {
		return lerr
	}
	result := ipam.Result(podIP)
	result.Interfaces = []*current.Interface{
		{Name: hostVeth, Mac: host.Attrs().HardwareAddr.String(), Mtu: host.Attrs().MTU},
		{Name: args.IfName, Mac: pod.mac.String(), Mtu: pod.mtu, Sandbox: args.Netns},
	}
	result.IPs[0].Interface = current.Int(1)
	result.DNS = conf.DNS
	return types.PrintResult(result, conf.CNIVersion)
}

// openPodNS opens the pod's namespace before anything is allocated, so a bad
// CNI_NETNS leaves nothing behind. skel checks that it is not the plugin's
// own namespace only after ADD returns; checking here keeps ADD from wiring
// the host to itself first.
func openPodNS(path string) (ns.NetNS, error) {
	podNS, err := getPodNS(path)
	if err != nil {
		return nil, err
	}
	same, cerr := cnins.CheckNetNS(path)
	if cerr != nil {
		podNS.Close()
		return nil, cerr
	}
	if same {
		podNS.Close()
		return nil, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("CNI_NETNS %q is the plugin's own network namespace", path), "")
	}
	return podNS, nil
}

// getPodNS opens the pod's namespace; failing that is CNI error 3.
func getPodNS(path string) (ns.NetNS, error) {
	podNS, err := ns.GetNS(path)
	if err != nil {
		return nil, types.NewError(types.ErrUnknownContainer, fmt.Sprintf("open pod network namespace %q: %v", path, err), "")
	}
	return podNS, nil
}

// withUndo adds the failure of an undo to err's message, keeping err's CNI
// code.
func withUndo(err, undoErr error) error {
	if undoErr == nil {
		return err
	}
	code := types.ErrInternal
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		code = cniErr.Code
	}
	return types.NewError(code, fmt.Sprintf("%v; undoing the ADD failed too: %v", err, undoErr), "")
}

// cmdDel removes the veth pair and frees the address. Everything already
// gone (the namespace, the link, the reservation) counts as done. The link
// goes first so an address is freed only once no pod can still use it.
func cmdDel(args *skel.CmdArgs) error {
	ctx := context.Background()
	conf, att, err := parseArgs(args)
	if err != nil {
		return err
	}
	deleted, err := deleteHostVeth(att.HostVethName(), att.alias(conf.Name))
	if err != nil {
		return err
	}
	if !deleted {
		if err := deletePodSide(args.Netns, args.IfName); err != nil {
			return err
		}
	}
	return newAddressSource(conf, args).release(ctx)
}

// deletePodSide removes ifName from the pod's namespace when both still
// exist and the host side was not found: it may carry another name when the
// runtime passed different CNI_ARGS to ADD and DEL.
func deletePodSide(netnsPath, ifName string) error {
	if netnsPath == "" {
		return nil
	}
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		return deleteVethByName(ifName)
	})
	var notExist ns.NSPathNotExistErr
	if errors.As(err, &notExist) {
		return nil
	}
	return err
}

// cmdStatus reports whether an ADD could succeed now: node.json must hold a
// block (CNI error 50 otherwise), and the IPAM must be available.
func cmdStatus(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := ipam.StatusError(conf.RunDir); err != nil {
		return err
	}
	return newAddressSource(conf, args).status(context.Background())
}
