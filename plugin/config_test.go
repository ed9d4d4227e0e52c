package plugin

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/grapevine-net/grapevine/ipam"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

func TestParseConfigDefaults(t *testing.T) {
	conf, err := ParseConfig([]byte(`{"cniVersion": "1.1.0", "name": "grapevine", "type": "grapevine-cni", "ipam": {"type": "grapevine-ipam"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if conf.RunDir != nodestate.DefaultRunDir || conf.MTU != 0 {
		t.Errorf("defaults: runDir %q mtu %d", conf.RunDir, conf.MTU)
	}
	if conf.ipam == nil || conf.ipam.DataDir != ipam.DefaultDataDir || conf.ipam.RunDir != nodestate.DefaultRunDir {
		t.Errorf("in-process IPAM config = %+v, want defaults", conf.ipam)
	}
	other, err := ParseConfig([]byte(`{"cniVersion": "1.1.0", "name": "grapevine", "ipam": {"type": "host-local"}}`))
	if err != nil || other.ipam != nil {
		t.Errorf("host-local IPAM: %+v, %v; want it delegated", other, err)
	}
}

func TestHostVethName(t *testing.T) {
	k8s, err := parseAttachment("ctr1", "eth0", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1")
	if err != nil {
		t.Fatal(err)
	}
	recreated, _ := parseAttachment("ctr2", "eth0", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;IgnoreUnknown=1")
	bare, _ := parseAttachment("ctr1", "eth0", "")
	other, _ := parseAttachment("ctr1", "net1", "")
	names := map[string]string{"k8s": k8s.HostVethName(), "bare": bare.HostVethName(), "other": other.HostVethName()}
	for what, name := range names {
		if len(name) != 15 || !strings.HasPrefix(name, HostVethPrefix) {
			t.Errorf("%s: %q is not gv + 13 hex digits", what, name)
		}
	}
	if recreated.HostVethName() != names["k8s"] {
		t.Error("a recreated sandbox of the same pod gets another veth name")
	}
	if names["k8s"] == names["bare"] || names["bare"] == names["other"] {
		t.Errorf("distinct identities share a veth name: %v", names)
	}
}

// FuzzParseConfig feeds arbitrary bytes to the config parser: it must never
// panic, must fail with a CNI error, and whatever it accepts must be usable.
func FuzzParseConfig(f *testing.F) {
	for _, seed := range []string{
		`{"cniVersion": "1.1.0", "name": "grapevine", "type": "grapevine-cni", "runDir": "/run/grapevine", "mtu": 0, "ipam": {"type": "grapevine-ipam", "dataDir": "/var/lib/grapevine/ipam"}}`,
		`{"cniVersion": "0.3.1", "name": "n", "mtu": 1450, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/24"}]]}}`,
		`{"name": "grapevine", "mtu": "1500", "ipam": {"type": "grapevine-ipam"}}`,
		`{"name": "grapevine", "runDir": "relative", "ipam": {"type": "grapevine-ipam"}}`,
		`{"name": "g", "ipam": {"type": "grapevine-ipam", "dataDir": 3}, "prevResult": {"ips": []}}`,
		`{"name": "g", "dns": {"nameservers": ["10.96.0.10"]}, "ipam": {"type": "x"}, "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]}`,
		`[]`, `null`, `{`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		conf, err := ParseConfig(data)
		if err != nil {
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || (cniErr.Code != types.ErrDecodingFailure && cniErr.Code != types.ErrInvalidNetworkConfig) {
				t.Fatalf("ParseConfig(%q) = %v, want CNI error 6 or 7", data, err)
			}
			return
		}
		switch {
		case conf.Name == "" || conf.IPAM.Type == "":
			t.Fatalf("accepted %q without a name or IPAM type", data)
		case !filepath.IsAbs(conf.RunDir):
			t.Fatalf("accepted relative runDir %q", conf.RunDir)
		case conf.MTU != 0 && (conf.MTU < 576 || conf.MTU > 65535):
			t.Fatalf("accepted mtu %d", conf.MTU)
		case (conf.IPAM.Type == ipam.Type) != (conf.ipam != nil):
			t.Fatalf("IPAM type %q but in-process config %v", conf.IPAM.Type, conf.ipam)
		case conf.ipam != nil && (!filepath.IsAbs(conf.ipam.DataDir) || conf.ipam.RunDir != conf.RunDir):
			t.Fatalf("in-process IPAM config %+v does not match runDir %q", conf.ipam, conf.RunDir)
		}
	})
}
