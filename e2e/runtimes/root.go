// Package runtimes runs real container runtimes (containerd with its CRI
// plugin, driven by crictl, and podman with its CNI backend) on a lab host,
// so the end-to-end tests can start pods through them on Grapevine.
//
// A runtime writes to fixed paths: containerd's shim sockets under
// /run/containerd/s, pod namespaces under /run/netns, libcni's cache under
// /var/lib/cni, podman's locks in /dev/shm. Each runtime therefore runs in
// a Root: a private mount namespace inside the lab host's network
// namespace, where /run, /var/lib and /var/tmp are directories of the test
// and /dev/shm is a tmpfs of its own. The machine's /etc, /opt, /run and
// /var/lib are never written; the CNI directories are given to the runtime
// in its own configuration file.
package runtimes

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
)

// shadowed are the machine's directories a runtime writes to by fixed
// paths; in a Root each is a directory of the test.
var shadowed = []string{"/run", "/var/lib", "/var/tmp"}

// Root is a private mount namespace inside a network namespace, kept alive
// by a holder process; commands run in it through nsenter.
type Root struct {
	// Dir holds the shadowed directories and the runtimes' configuration.
	Dir string
	// CgroupParent is the cgroup the runtime's pods and containers go in;
	// Close removes it.
	CgroupParent string

	holder *exec.Cmd
	exited chan struct{}
	mntNS  string // "mnt:[inode]" of the namespace, to find its processes
}

// RootConfig describes a Root.
type RootConfig struct {
	// NetNS is the path of the network namespace the Root lives in.
	NetNS string
	// Dir holds the shadowed directories and the runtimes' configuration.
	Dir string
	// Name makes the cgroup parent unique. It must contain the lab host's
	// namespace name ("gvl<id>-hN"), so that lab.Down finds the cgroups of
	// a run that was killed.
	Name string
	// Keep lists directories under the shadowed ones that the runtime must
	// still see as they are (the lab's directory with the agent's node.json,
	// the conflist and the IPAM store).
	Keep []string
	// Shadow adds directories to the shadowed ones (a kubelet writes
	// /var/log/pods). One under an Overlay directory need not exist on
	// the machine.
	Shadow []string
	// Overlay lists directories that stay readable as they are but whose
	// changes land in Dir (an overlay with the machine's directory as its
	// lower layer): a kubelet node's hostPath volumes create /etc/cni/net.d
	// and /opt/cni/bin, which must not appear on the machine.
	Overlay []string
	// Masks maps files to the content the Root's processes read instead,
	// and write to instead: a kubelet sets vm.overcommit_memory and the
	// kernel.panic* sysctls, which are the machine's, not the namespace's.
	Masks map[string]string
}

// NewRoot starts a Root as cfg says.
func NewRoot(ctx context.Context, cfg RootConfig) (_ *Root, err error) {
	dir, name := cfg.Dir, cfg.Name
	r := &Root{Dir: dir, CgroupParent: "/" + lab.CgroupPrefix + name, exited: make(chan struct{})}
	script := []string{"set -e"}
	shadow := append(slices.Clone(shadowed), cfg.Shadow...)
	for i, o := range cfg.Overlay {
		// The overlay needs the machine's directory as its lower layer; never
		// create it on the machine.
		if fi, err := os.Stat(o); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("root %s: overlay on %s: not a directory on this machine", name, o)
		}
		upper, work := filepath.Join(dir, "overlay", strconv.Itoa(i), "upper"), filepath.Join(dir, "overlay", strconv.Itoa(i), "work")
		for _, d := range []string{upper, work} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return nil, err
			}
		}
		script = append(script, "mount -n -t overlay overlay -o "+quote("lowerdir="+o+",upperdir="+upper+",workdir="+work)+" "+quote(o))
	}
	for _, k := range cfg.Keep {
		k = filepath.Clean(k)
		if !underAny(k, shadow) {
			continue // visible anyway
		}
		if err := os.MkdirAll(filepath.Join(dir, k), 0o755); err != nil {
			return nil, err
		}
		script = append(script, "mount -n --bind "+quote(k)+" "+quote(filepath.Join(dir, k)))
	}
	for _, s := range shadow {
		if err := os.MkdirAll(filepath.Join(dir, s), 0o755); err != nil {
			return nil, err
		}
		if underAny(s, cfg.Overlay) {
			// The mount point is made in the overlay, not on the machine.
			script = append(script, "mkdir -p "+quote(s))
		}
		// --rbind carries the kept directories bound inside it.
		script = append(script, "mount -n --rbind "+quote(filepath.Join(dir, s))+" "+s)
	}
	maskDir := filepath.Join(dir, "masks")
	i := 0
	for _, target := range slices.Sorted(maps.Keys(cfg.Masks)) {
		if err := os.MkdirAll(maskDir, 0o755); err != nil {
			return nil, err
		}
		file := filepath.Join(maskDir, strconv.Itoa(i))
		i++
		if err := os.WriteFile(file, []byte(cfg.Masks[target]), 0o644); err != nil {
			return nil, err
		}
		script = append(script, "mount -n --bind "+quote(file)+" "+quote(target))
	}
	script = append(script,
		"mount -n -t tmpfs -o size=64m,mode=1777 shm /dev/shm",
		"echo ready",
		"exec sleep 2147483647")

	// nsenter rather than `ip netns exec`: the latter mounts a fresh /sys,
	// which hides the cgroup mounts that runc needs.
	cmd := exec.Command("nsenter", "--net="+cfg.NetNS, "unshare", "--mount", "--propagation", "private",
		"sh", "-c", strings.Join(script, "\n"))
	// The holder dies with the test process; nsenter, unshare and sh
	// exec in place, so the signal reaches sleep itself.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("root %s: %w", name, err)
	}
	r.holder = cmd
	go func() {
		cmd.Wait()
		close(r.exited)
	}()
	defer func() {
		if err != nil {
			r.Close()
		}
	}()

	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("unexpected output %q", line)
		}
		ready <- err
		io.Copy(io.Discard, stdout)
	}()
	select {
	case err := <-ready:
		if err != nil {
			<-r.exited
			return nil, fmt.Errorf("root %s: mounts failed: %w: %s", name, err, stderr.String())
		}
	case <-ctx.Done():
		return nil, fmt.Errorf("root %s: %w: %s", name, ctx.Err(), stderr.String())
	}
	if r.mntNS, err = os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", cmd.Process.Pid)); err != nil {
		return nil, fmt.Errorf("root %s: %w", name, err)
	}
	return r, nil
}

func underAny(path string, dirs []string) bool {
	for _, s := range dirs {
		if path == s || strings.HasPrefix(path, s+"/") {
			return true
		}
	}
	return false
}

// quote makes s one word for sh.
func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// Command prepares a command that runs inside the Root: its mount and
// network namespaces.
func (r *Root) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{
		"--target", strconv.Itoa(r.holder.Process.Pid), "--mount", "--net", "--", name}, args...)...)
}

// Run runs a command inside the Root and returns its standard output; the
// error carries the command line and standard error.
func (r *Root) Run(ctx context.Context, env []string, name string, args ...string) ([]byte, error) {
	cmd := r.Command(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Processes lists the processes in the Root's mount namespace: the holder,
// the runtime and everything it started (shims, conmon, containers).
func (r *Root) Processes() ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if r.holds(pid) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// holds reports whether process pid runs in the Root's mount namespace.
func (r *Root) holds(pid int) bool {
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	return err == nil && ns == r.mntNS
}

// Close kills every process left in the Root (runtimes should have been
// stopped before) and removes its cgroup parent. The directories stay for
// the test's temporary directory to remove.
func (r *Root) Close() error {
	var errs []error
	if r.mntNS != "" {
		deadline := time.Now().Add(10 * time.Second)
		for {
			pids, err := r.Processes()
			if err != nil {
				errs = append(errs, err)
				break
			}
			if len(pids) == 0 {
				break
			}
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("root %s: processes %v survive SIGKILL", r.Dir, pids))
				break
			}
			for _, pid := range pids {
				lab.SignalIf(pid, syscall.SIGKILL, r.holds)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if r.holder != nil && r.holder.Process != nil {
		r.holder.Process.Kill()
		<-r.exited
	}
	errs = append(errs, lab.RemoveCgroup(r.CgroupParent))
	return errors.Join(errs...)
}
