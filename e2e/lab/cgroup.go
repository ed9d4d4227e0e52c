package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// CgroupPrefix starts the name of the cgroup parent of every container
// runtime or kubelet run on a lab host; the rest of the name carries the
// host's namespace name, so Down finds the cgroups of a run that was killed.
const CgroupPrefix = "grapevine-e2e-"

// removeCgroups removes every cgroup parent of lab id's hosts, with the
// processes still in them.
func removeCgroups(id string) error {
	matches, err := filepath.Glob("/sys/fs/cgroup/*/" + CgroupPrefix + "*" + NamePrefix + id + "-*")
	if err != nil {
		return err
	}
	parents := map[string]bool{}
	for _, m := range matches {
		parents["/"+filepath.Base(m)] = true
	}
	var errs []error
	for p := range parents {
		errs = append(errs, RemoveCgroup(p))
	}
	return errors.Join(errs...)
}

// RemoveCgroup removes the cgroup parent and whatever the runtimes left
// below it, under every hierarchy: cgroup v1 has one per controller.
func RemoveCgroup(parent string) error {
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
		// Containers run in mount namespaces of their own, so the Root's
		// sweep misses those a runtime that was killed left behind; their
		// cgroups still hold them.
		errs = append(errs, killCgroupTree(parent, tree))
		for i := len(tree) - 1; i >= 0; i-- {
			if err := syscall.Rmdir(tree[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", tree[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

// killCgroupTree kills every process in the cgroups, the tree of parent,
// and waits until they are gone.
func killCgroupTree(parent string, tree []string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		var pids []int
		for _, d := range tree {
			data, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			for _, f := range strings.Fields(string(data)) {
				if pid, err := strconv.Atoi(f); err == nil {
					pids = append(pids, pid)
				}
			}
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v in cgroup %s survive SIGKILL", pids, tree[0])
		}
		for _, pid := range pids {
			SignalIf(pid, syscall.SIGKILL, func(pid int) bool { return InCgroup(pid, parent) })
		}
		time.Sleep(50 * time.Millisecond)
	}
}
