// Command grapevine-ipam is the grapevine IPAM plugin: a CNI IPAM plugin that
// hands out pod addresses from the block named in the agent's node.json.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/grapevine-net/grapevine/ipam"
)

func main() {
	skel.PluginMainFuncs(ipam.Funcs(), ipam.SupportedVersions(), "grapevine-ipam: addresses from this node's block")
}
