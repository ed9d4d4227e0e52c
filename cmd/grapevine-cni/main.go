// Command grapevine-cni is the grapevine CNI plugin: it wires a pod into the
// routed L3 network with a veth pair, a /32 and a link-local gateway.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/grapevine-net/grapevine/ipam"
	"github.com/grapevine-net/grapevine/plugin"
)

func main() {
	skel.PluginMainFuncs(plugin.Funcs(), ipam.SupportedVersions(), "grapevine-cni: routed L3 pod networking")
}
