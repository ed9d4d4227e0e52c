package runtimes

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Podman is podman with its CNI backend in a Root. Each call is one podman
// process inside the Root; containers outlive it under conmon.
type Podman struct {
	root *Root
	env  []string
}

// podmanConf is podman 4's containers.conf for a Root, read through
// CONTAINERS_CONF instead of /etc/containers/containers.conf.
const podmanConf = `[containers]
# Podman raises a container's open-file and process limits to its own hard
# limits unless told otherwise; without CAP_SYS_RESOURCE (small VMs, CI
# runners) that fails for limits above the caller's, so ask for modest ones.
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
# Loading podman's AppArmor profile would change the machine's kernel
# state; the tests are about the network.
apparmor_profile = "unconfined"

[network]
network_backend = "cni"
cni_plugin_dirs = [%[1]q]
network_config_dir = %[2]q

[engine]
# cgroupfs and a file for events: the hosts of these tests may run without
# systemd.
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
`

// podmanStorage keeps images and containers in the Root's /var/lib and /run.
const podmanStorage = `[storage]
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
`

// NewPodman configures podman in the Root with the given CNI directories.
// Podman's CNI backend keeps a lock file, cni.lock, in the configuration
// directory.
func NewPodman(r *Root, cni CNIDirs) (*Podman, error) {
	conf, storage := filepath.Join(r.Dir, "containers.conf"), filepath.Join(r.Dir, "storage.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(podmanConf, cni.BinDir, cni.ConfDir)), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(storage, []byte(podmanStorage), 0o644); err != nil {
		return nil, err
	}
	return &Podman{root: r, env: []string{"CONTAINERS_CONF=" + conf, "CONTAINERS_STORAGE_CONF=" + storage}}, nil
}

// Podman runs podman with args and returns its standard output.
func (p *Podman) Podman(ctx context.Context, args ...string) ([]byte, error) {
	return p.root.Run(ctx, p.env, "podman", args...)
}

// Load loads an image archive.
func (p *Podman) Load(ctx context.Context, archive string) error {
	_, err := p.Podman(ctx, "load", "--input", archive)
	return err
}

// Container is a running podman container.
type Container struct {
	ID string
	IP netip.Addr
	// IPs are the container's addresses on the network as podman inspect
	// reports them: IP, then the IPv6 address of a dual-stack network.
	IPs []netip.Addr
	PID int
}

// RunBusybox runs `podman run -d --network <network>` with the busybox
// image and returns the running container.
func (p *Podman) RunBusybox(ctx context.Context, name, network string) (Container, error) {
	out, err := p.Podman(ctx, "run", "--detach", "--name", name, "--network", network,
		"--cgroup-parent", p.root.CgroupParent, BusyboxImage.Ref)
	if err != nil {
		return Container{}, err
	}
	id := strings.TrimSpace(string(out))
	// GlobalIPv6Address is empty on an IPv4-only network.
	format := fmt.Sprintf(`{{.State.Pid}} {{with index .NetworkSettings.Networks %q}}{{.IPAddress}} {{.GlobalIPv6Address}}{{end}}`, network)
	out, err = p.Podman(ctx, "inspect", "--format", format, id)
	if err != nil {
		return Container{}, err
	}
	fields := strings.Fields(string(out))
	if len(fields) != 2 && len(fields) != 3 {
		return Container{}, fmt.Errorf("podman inspect %s: %q", name, out)
	}
	pid, err := strconv.Atoi(fields[0])
	if err != nil {
		return Container{}, fmt.Errorf("podman inspect %s: pid %q", name, fields[0])
	}
	var ips []netip.Addr
	for _, f := range fields[1:] {
		ip, err := netip.ParseAddr(f)
		if err != nil {
			return Container{}, fmt.Errorf("podman inspect %s: address %q", name, f)
		}
		ips = append(ips, ip)
	}
	return Container{ID: id, IP: ips[0], IPs: ips, PID: pid}, nil
}

// Exec runs a command in a container and returns its output.
func (p *Podman) Exec(ctx context.Context, container string, cmd ...string) ([]byte, error) {
	return p.Podman(ctx, append([]string{"exec", container}, cmd...)...)
}

// Remove stops and removes a container, which runs CNI DEL.
func (p *Podman) Remove(ctx context.Context, container string) error {
	if _, err := p.Podman(ctx, "stop", "--time", "5", container); err != nil {
		return err
	}
	_, err := p.Podman(ctx, "rm", container)
	return err
}

// RemoveAll removes every container, for cleanup.
func (p *Podman) RemoveAll(ctx context.Context) error {
	_, err := p.Podman(ctx, "rm", "--all", "--force", "--time", "0")
	return err
}

// Version is `podman --version`.
func (p *Podman) Version(ctx context.Context) (string, error) {
	out, err := p.Podman(ctx, "--version")
	return strings.TrimSpace(string(out)), err
}
