package runtimes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
)

// The images the tests load into every runtime.
var (
	PauseImage   = Image{Ref: "localhost/grapevine-e2e/pause:1", Entrypoint: []string{"/bin/sleep", "2147483647"}}
	BusyboxImage = Image{Ref: "localhost/grapevine-e2e/busybox:1",
		// Exits on SIGTERM, so a stop does not wait for the kill timeout.
		Entrypoint: []string{"/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 1; done"}}
)

// containerdSocket is containerd's default address, inside its Root.
const containerdSocket = "/run/containerd/containerd.sock"

// CNIDirs are the CNI directories a runtime is configured with: the
// agent's --cni-conf-dir, so the runtime reads the conflist exactly as the
// agent wrote it, and the directory with the plugin binaries.
type CNIDirs struct {
	ConfDir string
	BinDir  string
}

// Containerd is containerd with its CRI plugin running in a Root, driven by
// crictl inside the same Root.
type Containerd struct {
	root   *Root
	crictl string
	log    string
	cmd    *exec.Cmd
	exited chan struct{}
	pods   atomic.Int64
}

// containerdConfig is containerd 1.6/1.7's configuration (version 2) for a
// Root: default paths, which the Root makes private, and the CNI
// directories given.
const containerdConfig = `version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %[1]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[2]q
  # Small VMs and CI runners often lack CAP_SYS_RESOURCE: without this
  # containerd tries to give the sandbox a lower oom_score_adj than its
  # own, and every sandbox fails with "permission denied".
  restrict_oom_score_adj = true
  # Loading containerd's AppArmor profile would change the machine's
  # kernel state; the tests are about the network.
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[3]q
    conf_dir = %[4]q
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # cgroupfs: the hosts of these tests may run without systemd.
        SystemdCgroup = false
`

// StartContainerd writes containerd's configuration into the Root, starts
// containerd there and waits until its CRI service answers crictl.
func StartContainerd(ctx context.Context, r *Root, cni CNIDirs, crictl string) (_ *Containerd, err error) {
	confPath := filepath.Join(r.Dir, "containerd.toml")
	conf := fmt.Sprintf(containerdConfig, containerdSocket, PauseImage.Ref, cni.BinDir, cni.ConfDir)
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	crictlConf := fmt.Sprintf("runtime-endpoint: unix://%[1]s\nimage-endpoint: unix://%[1]s\ntimeout: 60\n", containerdSocket)
	if err := os.WriteFile(filepath.Join(r.Dir, "crictl.yaml"), []byte(crictlConf), 0o644); err != nil {
		return nil, err
	}
	c := &Containerd{root: r, crictl: crictl, log: filepath.Join(r.Dir, "containerd.log"), exited: make(chan struct{})}
	logf, err := os.Create(c.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	// Not CommandContext: containerd lives until Stop, not until ctx ends.
	c.cmd = r.Command(context.Background(), "containerd", "--config", confPath)
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	go func() {
		c.cmd.Wait()
		close(c.exited)
	}()
	defer func() {
		if err != nil {
			c.Stop(context.WithoutCancel(ctx))
		}
	}()
	for {
		_, err := c.Crictl(ctx, "info")
		if err == nil {
			return c, nil
		}
		select {
		case <-c.exited:
			return nil, fmt.Errorf("containerd exited: %s", c.LogTail(20))
		case <-ctx.Done():
			return nil, fmt.Errorf("containerd did not answer: %w; last: %w; log: %s", ctx.Err(), err, c.LogTail(20))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Crictl runs crictl against this containerd.
func (c *Containerd) Crictl(ctx context.Context, args ...string) ([]byte, error) {
	return c.root.Run(ctx, nil, c.crictl, append([]string{"--config", filepath.Join(c.root.Dir, "crictl.yaml")}, args...)...)
}

// Import loads an image archive into the namespace the CRI plugin uses.
func (c *Containerd) Import(ctx context.Context, archive string) error {
	_, err := c.root.Run(ctx, nil, "ctr", "--address", containerdSocket, "--namespace", "k8s.io", "images", "import", archive)
	return err
}

// NetworkReady is the NetworkReady condition of `crictl info`, with its
// reason and message when false.
func (c *Containerd) NetworkReady(ctx context.Context) (bool, string, error) {
	out, err := c.Crictl(ctx, "info", "-o", "json")
	if err != nil {
		return false, "", err
	}
	var info struct {
		Status struct {
			Conditions []struct {
				Type    string `json:"type"`
				Status  bool   `json:"status"`
				Reason  string `json:"reason"`
				Message string `json:"message"`
			} `json:"conditions"`
		} `json:"status"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return false, "", fmt.Errorf("crictl info: %w", err)
	}
	for _, cond := range info.Status.Conditions {
		if cond.Type == "NetworkReady" {
			return cond.Status, strings.TrimSpace(cond.Reason + " " + cond.Message), nil
		}
	}
	return false, "", fmt.Errorf("crictl info has no NetworkReady condition: %s", out)
}

// Sandbox is a pod sandbox as crictl reports it.
type Sandbox struct {
	ID string
	IP netip.Addr
	// IPs are every address of the sandbox as the runtime reports them:
	// IP first, then its additional IPs (a dual-stack pod's IPv6 address).
	IPs []netip.Addr
	PID int // the sandbox's first process, whose namespaces are the pod's
	// RunpTook is how long `crictl runp` took to return the sandbox ready.
	RunpTook time.Duration

	config string // the configuration runp was given, which create needs again
}

// RunPodSandbox runs `crictl runp` for a pod named name in namespace
// "e2e" and returns the ready sandbox.
func (c *Containerd) RunPodSandbox(ctx context.Context, name string) (Sandbox, error) {
	conf, err := c.podConfig(name)
	if err != nil {
		return Sandbox{}, err
	}
	start := time.Now()
	out, err := c.Crictl(ctx, "runp", conf)
	took := time.Since(start)
	if err != nil {
		return Sandbox{}, err
	}
	sb, err := c.InspectPod(ctx, strings.TrimSpace(string(out)))
	sb.config, sb.RunpTook = conf, took
	return sb, err
}

// podConfig writes the sandbox configuration crictl takes.
func (c *Containerd) podConfig(name string) (string, error) {
	n := c.pods.Add(1)
	dir := filepath.Join(c.root.Dir, "pods", fmt.Sprintf("%s-%d", name, n))
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return "", err
	}
	conf, err := json.Marshal(map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "e2e", "uid": fmt.Sprintf("%s-%d", name, n), "attempt": 0},
		"log_directory": filepath.Join(dir, "logs"),
		"linux":         map[string]any{"cgroup_parent": c.root.CgroupParent},
	})
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "pod.json")
	return path, os.WriteFile(path, conf, 0o644)
}

// InspectPod returns the sandbox's state; it must be ready.
func (c *Containerd) InspectPod(ctx context.Context, id string) (Sandbox, error) {
	out, err := c.Crictl(ctx, "inspectp", "-o", "json", id)
	if err != nil {
		return Sandbox{}, err
	}
	var st struct {
		Status struct {
			State   string `json:"state"`
			Network struct {
				IP            string      `json:"ip"`
				AdditionalIPs []podIPJSON `json:"additionalIps"`
			} `json:"network"`
		} `json:"status"`
		Info struct {
			PID int `json:"pid"`
		} `json:"info"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return Sandbox{}, fmt.Errorf("crictl inspectp %s: %w", id, err)
	}
	if st.Status.State != "SANDBOX_READY" {
		return Sandbox{}, fmt.Errorf("sandbox %s is %s", id, st.Status.State)
	}
	var ips []netip.Addr
	for _, s := range append([]podIPJSON{{st.Status.Network.IP}}, st.Status.Network.AdditionalIPs...) {
		ip, err := netip.ParseAddr(s.IP)
		if err != nil {
			return Sandbox{}, fmt.Errorf("sandbox %s: address %q: %w", id, s.IP, err)
		}
		ips = append(ips, ip)
	}
	return Sandbox{ID: id, IP: ips[0], IPs: ips, PID: st.Info.PID}, nil
}

// podIPJSON is one of a sandbox's addresses in `crictl inspectp -o json`.
type podIPJSON struct {
	IP string `json:"ip"`
}

// StartBusybox creates and starts a busybox container in the sandbox.
func (c *Containerd) StartBusybox(ctx context.Context, sandbox Sandbox) (string, error) {
	if sandbox.config == "" {
		return "", fmt.Errorf("sandbox %s was not started by RunPodSandbox", sandbox.ID)
	}
	dir := filepath.Dir(sandbox.config)
	ctrConf := filepath.Join(dir, "container.json")
	conf := fmt.Sprintf(`{"metadata": {"name": "busybox"}, "image": {"image": %q}, "log_path": "busybox.log"}`, BusyboxImage.Ref)
	if err := os.WriteFile(ctrConf, []byte(conf), 0o644); err != nil {
		return "", err
	}
	out, err := c.Crictl(ctx, "create", sandbox.ID, ctrConf, sandbox.config)
	if err != nil {
		return "", err
	}
	id := strings.TrimSpace(string(out))
	if _, err := c.Crictl(ctx, "start", id); err != nil {
		return "", err
	}
	return id, nil
}

// Exec runs a command in a container and returns its output. A failure
// says what state the container is in, and why it ended if it did.
func (c *Containerd) Exec(ctx context.Context, container string, cmd ...string) ([]byte, error) {
	out, err := c.Crictl(ctx, append([]string{"exec", "--sync", "--timeout", "30", container}, cmd...)...)
	if err != nil {
		err = fmt.Errorf("%w; container %s: %s", err, container, c.containerState(ctx, container))
	}
	return out, err
}

// containerState is the container's state, exit code, reason and end as
// `crictl inspect` tells them, and the last lines of its log.
func (c *Containerd) containerState(ctx context.Context, container string) string {
	raw, err := c.Crictl(ctx, "inspect", "--output", "json", container)
	if err != nil {
		return fmt.Sprintf("inspect: %v", err)
	}
	var st struct {
		Status struct {
			State      string `json:"state"`
			ExitCode   int    `json:"exitCode"`
			Reason     string `json:"reason"`
			Message    string `json:"message"`
			FinishedAt string `json:"finishedAt"`
		} `json:"status"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return fmt.Sprintf("inspect: %v", err)
	}
	logs, _ := c.Crictl(ctx, "logs", "--tail", "20", container)
	return fmt.Sprintf("%s, exit code %d, reason %q, message %q, finished at %s; log: %q",
		st.Status.State, st.Status.ExitCode, st.Status.Reason, st.Status.Message, st.Status.FinishedAt, logs)
}

// RemovePod stops and removes a sandbox and its containers.
func (c *Containerd) RemovePod(ctx context.Context, id string) error {
	if _, err := c.Crictl(ctx, "stopp", id); err != nil {
		return err
	}
	_, err := c.Crictl(ctx, "rmp", id)
	return err
}

// Version is `containerd --version`.
func (c *Containerd) Version(ctx context.Context) (string, error) {
	out, err := c.root.Run(ctx, nil, "containerd", "--version")
	return strings.TrimSpace(string(out)), err
}

// LogTail returns the last n lines of containerd's log.
func (c *Containerd) LogTail(n int) string {
	tail, err := lab.TailFile(c.log, n)
	if err != nil {
		return err.Error()
	}
	return tail
}

// Stop removes every pod, which runs CNI DEL for each, then stops
// containerd: SIGTERM, and SIGKILL after a grace period.
func (c *Containerd) Stop(ctx context.Context) error {
	var errs []error
	select {
	case <-c.exited:
	default:
		if _, err := c.Crictl(ctx, "rmp", "--force", "--all"); err != nil {
			errs = append(errs, err)
		}
		c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(10 * time.Second):
			c.cmd.Process.Kill()
			<-c.exited
			errs = append(errs, errors.New("containerd ignored SIGTERM"))
		}
	}
	return errors.Join(errs...)
}
