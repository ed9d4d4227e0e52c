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
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
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

// NewRoot starts a Root inside the network namespace at netnsPath. keep
// lists directories under the shadowed ones that the runtime must still
// see as they are (the lab's directory with the agent's node.json, the
// conflist and the IPAM store). name makes the cgroup parent unique.
func NewRoot(ctx context.Context, netnsPath, dir, name string, keep ...string) (_ *Root, err error) {
	r := &Root{Dir: dir, CgroupParent: "/grapevine-e2e-" + name, exited: make(chan struct{})}
	script := []string{"set -e"}
	for _, k := range keep {
		k = filepath.Clean(k)
		if !underShadowed(k) {
			continue // visible anyway
		}
		if err := os.MkdirAll(filepath.Join(dir, k), 0o755); err != nil {
			return nil, err
		}
		script = append(script, "mount -n --bind "+quote(k)+" "+quote(filepath.Join(dir, k)))
	}
	for _, s := range shadowed {
		if err := os.MkdirAll(filepath.Join(dir, s), 0o755); err != nil {
			return nil, err
		}
		// --rbind carries the kept directories bound inside it.
		script = append(script, "mount -n --rbind "+quote(filepath.Join(dir, s))+" "+s)
	}
	script = append(script,
		"mount -n -t tmpfs -o size=64m,mode=1777 shm /dev/shm",
		"echo ready",
		"exec sleep 2147483647")

	// nsenter rather than `ip netns exec`: the latter mounts a fresh /sys,
	// which hides the cgroup mounts that runc needs.
	cmd := exec.Command("nsenter", "--net="+netnsPath, "unshare", "--mount", "--propagation", "private",
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

func underShadowed(path string) bool {
	for _, s := range shadowed {
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
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && ns == r.mntNS {
			pids = append(pids, pid)
		}
	}
	return pids, nil
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
				syscall.Kill(pid, syscall.SIGKILL)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if r.holder != nil && r.holder.Process != nil {
		r.holder.Process.Kill()
		<-r.exited
	}
	errs = append(errs, removeCgroup(r.CgroupParent))
	return errors.Join(errs...)
}

// removeCgroup removes the cgroup parent and whatever the runtimes left
// below it, under every hierarchy: cgroup v1 has one per controller.
func removeCgroup(parent string) error {
	dirs := []string{filepath.Join("/sys/fs/cgroup", parent)}
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, h := range hierarchies {
		dirs = append(dirs, filepath.Join(h, parent))
	}
	var errs []error
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "cgroup.procs")); err != nil {
			continue
		}
		// Children first: a cgroup is removed by rmdir once it is empty.
		var tree []string
		filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				tree = append(tree, p)
			}
			return nil
		})
		for i := len(tree) - 1; i >= 0; i-- {
			if err := syscall.Rmdir(tree[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", tree[i], err))
			}
		}
	}
	return errors.Join(errs...)
}
