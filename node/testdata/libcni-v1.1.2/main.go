// Command libcni-v1.1.2 reads a conflist the way runtimes built with
// containernetworking/cni v1.1.2 do (containerd 1.6 and 1.7, podman 4) and
// prints what they make of it as JSON. The node package's tests run it to
// prove that such runtimes accept the conflist the agent writes.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types/create"
)

// report is what an old runtime sees: the list's version and name, each
// plugin's type, and whether a result in a given version decodes, which is
// the step that fails with "unsupported CNI result version".
type report struct {
	CNIVersion    string            `json:"cniVersion"`
	Name          string            `json:"name"`
	PluginTypes   []string          `json:"pluginTypes"`
	ResultDecodes map[string]string `json:"resultDecodes"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: libcni-v1.1.2 CONFLIST [RESULT-VERSION...]")
		os.Exit(2)
	}
	list, err := libcni.ConfListFromFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	r := report{CNIVersion: list.CNIVersion, Name: list.Name, ResultDecodes: map[string]string{}}
	for _, p := range list.Plugins {
		r.PluginTypes = append(r.PluginTypes, p.Network.Type)
	}
	// A plugin answers in the version the list names; the other versions
	// asked for show where this libcni stops.
	for _, v := range append([]string{list.CNIVersion}, os.Args[2:]...) {
		res := fmt.Sprintf(`{"cniVersion": %q, "ips": [{"address": "10.244.36.1/32", "gateway": "169.254.1.1"}]}`, v)
		if _, err := create.Create(v, []byte(res)); err != nil {
			r.ResultDecodes[v] = err.Error()
		} else {
			r.ResultDecodes[v] = "ok"
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
