package plugin

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	cnins "github.com/containernetworking/cni/pkg/ns"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/grapevine-net/grapevine/ipam"
	"github.com/grapevine-net/grapevine/netpol/admit"
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
	if node.PolicySocket != "" && att.podName == "" {
		return types.NewError(types.ErrInvalidEnvironmentVariables,
			"network policy is on, and it needs the pod's identity in CNI_ARGS (K8S_POD_NAMESPACE and K8S_POD_NAME)", "")
	}
	podNS, err := openPodNS(args.Netns)
	if err != nil {
		return err
	}
	defer podNS.Close()

	alias := att.alias(conf.Name)
	hostVeth, leftover, err := pickHostVeth(att, alias)
	if err != nil {
		return err
	}
	addrs := newAddressSource(conf, args)
	podIPs, reserved, err := addrs.allocate(ctx, node)
	if err != nil {
		return err
	}
	created := false
	defer func() {
		if err != nil {
			err = withUndo(err, undoAdd(ctx, addrs, hostVeth, alias, created, reserved))
		}
	}()

	if created, err = createVeth(hostVeth, args.IfName, alias, mtu, podNS, leftover); err != nil {
		return err
	}
	pod, err := configurePod(podNS, args.IfName, podIPs)
	if err != nil {
		return err
	}
	host, err := configureHost(hostVeth, podIPs, pod.mac)
	if err != nil {
		return err
	}

	// The lease may have ended while the pod was wired: hand the address
	// out only if it still holds now that the pod has it (the deferred
	// undo removes what this ADD created).
	if lerr := ipam.LeaseHolds(node); lerr != nil {
		return lerr
	}
	if err := admitPod(ctx, node.PolicySocket, att, podIPs); err != nil {
		return err
	}
	result := ipam.Result(podIPs.all()...)
	result.Interfaces = []*current.Interface{
		{Name: hostVeth, Mac: host.Attrs().HardwareAddr.String(), Mtu: host.Attrs().MTU},
		{Name: args.IfName, Mac: pod.mac.String(), Mtu: pod.mtu, Sandbox: args.Netns},
	}
	for _, ipc := range result.IPs {
		ipc.Interface = current.Int(1)
	}
	result.DNS = conf.DNS
	return types.PrintResult(result, conf.CNIVersion)
}

// admitPod tells the policy enforcer at socket (node.json's policySocket;
// "" when network policy is off) the new pod and waits until the pod's
// policies are in force, so that no packet of the pod passes before them.
// An enforcer that does not answer in time is CNI error 11 (try again
// later); one that refuses, error 999 with its reason. Either way the deferred undo removes
// what ADD made and frees the address.
func admitPod(ctx context.Context, socket string, att attachment, podIPs podAddrs) error {
	if socket == "" {
		return nil
	}
	namespace, name, _ := strings.Cut(att.podName, "/")
	ctx, cancel := context.WithTimeout(ctx, admit.Timeout)
	defer cancel()
	err := admit.Ask(ctx, socket, admit.Request{Namespace: namespace, Name: name, ContainerID: att.ContainerID, IPs: podIPs.all()})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, admit.ErrUnreachable):
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("network policy for pod %s is not in force: %v", att.podName, err), "is grapevine-policy running on this node?")
	default:
		return types.NewError(types.ErrInternal, fmt.Sprintf("network policy for pod %s is not in force: %v", att.podName, err), "")
	}
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

// undoAdd removes what a failed ADD made and nothing else: the host veth if
// it created it (the pod side, and both families' routes, addresses and
// neighbour entries go with it), the addresses it reserved.
// What the attachment had before, when the ADD repeated a running one,
// stays its own.
func undoAdd(ctx context.Context, addrs addressSource, hostVeth, alias string, created bool, reserved []netip.Addr) error {
	var errs []error
	if created {
		errs = append(errs, deleteCreatedVeth(hostVeth, alias))
	}
	if len(reserved) > 0 {
		errs = append(errs, addrs.undoAllocate(ctx, reserved))
	}
	return errors.Join(errs...)
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

// cmdDel removes the attachment's veth pair and frees its address: only a
// host veth whose alias names this container ID and interface, and only
// reservations holding them, so a DEL naming another container (or a late
// one from an older sandbox sharing the pod's name or namespace) is a
// success that changes nothing. Everything already gone (the namespace,
// the link, the reservation) counts as done. The link goes first so an
// address is freed only once no pod can still use it.
func cmdDel(args *skel.CmdArgs) error {
	ctx := context.Background()
	conf, att, err := parseArgs(args)
	if err != nil {
		return err
	}
	link, err := findHostVeth(att, att.alias(conf.Name))
	if err != nil {
		return err
	}
	if link != nil {
		if err := deleteLink(link); err != nil {
			return err
		}
	}
	return newAddressSource(conf, args).release(ctx)
}

// cmdStatus reports whether an ADD could succeed now: node.json must hold a
// block, and the IPAM must be able to hand out an address (CNI error 50
// otherwise, saying why).
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
