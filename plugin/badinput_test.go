package plugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
)

// execPlugin runs grapevine-cni in the lab's host namespace with env and
// stdin, the way a runtime does, and returns its stdout and exit error.
func (l *lab) execPlugin(env []string, stdin string) ([]byte, error) {
	var stdout bytes.Buffer
	var runErr error
	err := l.inHost(func() error {
		cmd := exec.Command(filepath.Join(cniBinDir, "grapevine-cni"))
		cmd.Env = env
		cmd.Stdin = strings.NewReader(stdin)
		cmd.Stdout = &stdout
		runErr = cmd.Run()
		return nil
	})
	if err != nil {
		l.t.Fatal(err)
	}
	return stdout.Bytes(), runErr
}

func TestBadInputIsASpecErrorAndLeavesNothing(t *testing.T) {
	l := newLab(t)
	p := l.newPod("bad")
	good := func(cniVersion string) string {
		return `{"cniVersion": "` + cniVersion + `", "name": "grapevine", "type": "grapevine-cni", "runDir": "` + l.runDir +
			`", "ipam": {"type": "grapevine-ipam", "dataDir": "` + l.dataDir + `"}}`
	}
	env := func(drop string, override ...string) []string {
		vars := map[string]string{
			"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr-bad", "CNI_NETNS": p.netns.Path(),
			"CNI_IFNAME": "eth0", "CNI_PATH": cniBinDir,
		}
		for i := 0; i+1 < len(override); i += 2 {
			vars[override[i]] = override[i+1]
		}
		delete(vars, drop)
		var out []string
		for k, v := range vars {
			out = append(out, k+"="+v)
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		env   []string
		stdin string
		code  uint
		msg   string
	}{
		{"malformed JSON", env(""), `{"cniVersion": "1.1.0", "name": "grapevine",`, types.ErrDecodingFailure, "unmarshal"},
		{"mtu is a string", env(""), strings.Replace(good("1.1.0"), `"name"`, `"mtu": "1500", "name"`, 1), types.ErrInvalidNetworkConfig, `"mtu"`},
		{"runDir is a number", env(""), strings.Replace(good("1.1.0"), `"runDir": "`+l.runDir+`"`, `"runDir": 5`, 1), types.ErrInvalidNetworkConfig, `"runDir"`},
		{"mtu out of range", env(""), strings.Replace(good("1.1.0"), `"name"`, `"mtu": 70000, "name"`, 1), types.ErrInvalidNetworkConfig, "mtu 70000"},
		{"no ipam type", env(""), strings.Replace(good("1.1.0"), `"type": "grapevine-ipam", `, "", 1), types.ErrInvalidNetworkConfig, "ipam.type"},
		{"no CNI_CONTAINERID", env("CNI_CONTAINERID"), good("1.1.0"), types.ErrInvalidEnvironmentVariables, "CNI_CONTAINERID"},
		{"no CNI_NETNS", env("CNI_NETNS"), good("1.1.0"), types.ErrInvalidEnvironmentVariables, "CNI_NETNS"},
		{"no CNI_IFNAME", env("CNI_IFNAME"), good("1.1.0"), types.ErrInvalidEnvironmentVariables, "CNI_IFNAME"},
		{"no CNI_PATH", env("CNI_PATH"), good("1.1.0"), types.ErrInvalidEnvironmentVariables, "CNI_PATH"},
		{"unknown CNI_COMMAND", env("", "CNI_COMMAND", "ATTACH"), good("1.1.0"), types.ErrInvalidEnvironmentVariables, "CNI_COMMAND"},
		{"netns does not exist", env("", "CNI_NETNS", "/run/netns/gvcni-missing"), good("1.1.0"), types.ErrUnknownContainer, "gvcni-missing"},
		{"netns is the host's", env("", "CNI_NETNS", "/proc/self/ns/net"), good("1.1.0"), types.ErrInvalidNetNS, "own network namespace"},
		{"unknown cniVersion", env(""), good("9.9.9"), types.ErrIncompatibleCNIVersion, "incompatible"},
		{"bad CNI_ARGS", env("", "CNI_ARGS", "K8S_POD_NAME"), good("1.1.0"), types.ErrInvalidEnvironmentVariables, "CNI_ARGS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, err := l.execPlugin(tc.env, tc.stdin)
			var exitErr *exec.ExitError
			if !errors.As(err, &exitErr) || exitErr.ExitCode() == 0 {
				t.Errorf("exit: %v, want a non-zero exit status", err)
			}
			var cniErr types.Error
			if err := json.Unmarshal(stdout, &cniErr); err != nil {
				t.Fatalf("stdout %q is not the spec's error JSON: %v", stdout, err)
			}
			if cniErr.Code != tc.code || !strings.Contains(cniErr.Msg+cniErr.Details, tc.msg) {
				t.Errorf("error %+v, want code %d mentioning %q", cniErr, tc.code, tc.msg)
			}
			l.assertNothingLeft()
		})
	}
	// Nothing reached the pod either.
	inNS(t, p.netns, func() error {
		if _, err := netlink.LinkByName("eth0"); err == nil {
			t.Error("pod has eth0 after only failed ADDs")
		}
		return nil
	})
}
