package plugin

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/grapevine-net/grapevine/internal/hostveth"
	"github.com/grapevine-net/grapevine/ipam"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

// HostVethPrefix starts the name of every host-side veth grapevine creates.
const HostVethPrefix = "gv"

// Config is grapevine-cni's network configuration.
type Config struct {
	types.PluginConf

	// RunDir holds the agent's node.json.
	RunDir string `json:"runDir"`
	// MTU of both veth ends; 0 takes the MTU from node.json, and if that is
	// 0 too, the kernel default.
	MTU int `json:"mtu"`

	// ipam is set when the IPAM type is grapevine-ipam, which then runs
	// in-process instead of being executed.
	ipam *ipam.Config
}

// ParseConfig decodes and validates a network configuration. Syntax errors
// are CNI error 6, missing or out-of-range values CNI error 7.
func ParseConfig(stdin []byte) (*Config, error) {
	var conf Config
	if err := json.Unmarshal(stdin, &conf); err != nil {
		return nil, ipam.DecodeError(err)
	}
	if conf.RunDir == "" {
		conf.RunDir = nodestate.DefaultRunDir
	}
	switch {
	case conf.Name == "":
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "network name is missing", "")
	case !filepath.IsAbs(conf.RunDir):
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("runDir %q is not an absolute path", conf.RunDir), "")
	case nodestate.CheckMTU(conf.MTU) != nil:
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("mtu %d is out of range: 0 (from node.json) or %d-%d", conf.MTU, nodestate.MinMTU, nodestate.MaxMTU), "")
	case conf.IPAM.Type == "":
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "ipam.type is missing", "")
	}
	if conf.IPAM.Type == ipam.Type {
		cfg, err := ipam.ParseConfig(stdin)
		if err != nil {
			return nil, err
		}
		conf.ipam = &cfg
	}
	return &conf, nil
}

// podArgs are the CNI_ARGS keys grapevine reads (field names are the keys);
// the rest are ignored.
type podArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE types.UnmarshallableString
	K8S_POD_NAME      types.UnmarshallableString
}

// attachment is one pod interface on the network, as the runtime names it.
type attachment struct {
	ContainerID string
	IfName      string
	// podName is "namespace/name" when the runtime passed the Kubernetes
	// pod identity, empty otherwise.
	podName string
}

// parseArgs reads the network configuration and the attachment of a call
// that acts on one pod interface (ADD, DEL, CHECK).
func parseArgs(args *skel.CmdArgs) (*Config, attachment, error) {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return nil, attachment{}, err
	}
	att, err := parseAttachment(args.ContainerID, args.IfName, args.Args)
	if err != nil {
		return nil, attachment{}, err
	}
	return conf, att, nil
}

func parseAttachment(containerID, ifName, cniArgs string) (attachment, error) {
	var pa podArgs
	pa.IgnoreUnknown = true
	if err := types.LoadArgs(cniArgs, &pa); err != nil {
		return attachment{}, types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("CNI_ARGS: %v", err), "")
	}
	a := attachment{ContainerID: containerID, IfName: ifName}
	if pa.K8S_POD_NAMESPACE != "" && pa.K8S_POD_NAME != "" {
		a.podName = string(pa.K8S_POD_NAMESPACE) + "/" + string(pa.K8S_POD_NAME)
	}
	return a, nil
}

// HostVethName is the host-side veth's usual name: the prefix and 13 hex
// digits of a hash of the pod's identity (its Kubernetes namespace and name
// when known, else the container ID and interface name). Being derived, not
// random, lets a retried ADD and a DEL find the link without any stored
// state. When a link of that name belongs to another attachment, ADD uses
// the name derived from the container ID and interface (hostVethNames).
func (a attachment) HostVethName() string {
	if a.podName == "" {
		return hostVethNameOf(a.ContainerID + "/" + a.IfName)
	}
	return hostVethNameOf(a.podName)
}

// hostVethNames are the names ADD may give the host veth, in the order it
// tries them: HostVethName, then the one derived from the container ID and
// interface, used when another sandbox of the same pod holds the first.
func (a attachment) hostVethNames() []string {
	own := hostVethNameOf(a.ContainerID + "/" + a.IfName)
	if first := a.HostVethName(); first != own {
		return []string{first, own}
	}
	return []string{own}
}

func hostVethNameOf(id string) string {
	sum := sha256.Sum256([]byte(id))
	return HostVethPrefix + hex.EncodeToString(sum[:])[:13]
}

// alias is stored on the host veth (IFLA_IFALIAS) so that DEL and GC can tell
// which attachment a link belongs to (see hostveth.Alias).
func (a attachment) alias(network string) string {
	return hostveth.Alias(network, a.ContainerID, a.IfName)
}
