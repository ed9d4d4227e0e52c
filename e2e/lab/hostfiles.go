package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// DoctorWithHostFiles runs `grapevine doctor --json` in the host's
// namespace as DoctorAll does, but seeing files (absolute path -> text)
// in place of the machine's: a host firewall's configuration under /etc,
// say. doctor runs in a private mount namespace (unshare -m) in which each
// top directory of the files (/etc, /usr) is a read-only overlay of a
// staging directory in the lab's state over the machine's own, so the
// machine's files are neither changed nor hidden, and the mounts end with
// the process.
func (h *Host) DoctorWithHostFiles(ctx context.Context, files map[string]string) (stdout []byte, exitCode int, err error) {
	stage, err := os.MkdirTemp(h.Dir, "hostfiles-")
	if err != nil {
		return nil, 0, fmt.Errorf("host %s: %w", h.Name, err)
	}
	defer os.RemoveAll(stage)
	var tops []string
	for path, text := range files {
		clean := filepath.Clean(path)
		parts := strings.Split(strings.TrimPrefix(clean, "/"), "/")
		if !filepath.IsAbs(path) || len(parts) < 2 {
			return nil, 0, fmt.Errorf("host file %q: want an absolute path below a top directory", path)
		}
		top := "/" + parts[0]
		if !slices.Contains(tops, top) {
			tops = append(tops, top)
		}
		dst := filepath.Join(stage, clean)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return nil, 0, err
		}
		if err := os.WriteFile(dst, []byte(text), 0o644); err != nil {
			return nil, 0, err
		}
	}
	// set -e: a failed mount ends the script before doctor runs; the
	// overlays have no upper directory, so nothing can be written
	// through them.
	script := []string{"set -e"}
	for _, top := range tops {
		script = append(script, fmt.Sprintf("mount -t overlay gvlab-hostfiles -o ro,lowerdir=%s:%s %s", filepath.Join(stage, top), top, top))
	}
	script = append(script, `exec ip netns exec "$1" "$2" doctor --json --run-dir "$3"`)
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "sh", "-c", strings.Join(script, "\n"),
		"sh", h.Namespace.Name, filepath.Join(h.lab.BinDir, "grapevine"), h.RunDir())
	var out, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit) && out.Len() > 0:
		return []byte(out.String()), exit.ExitCode(), nil
	case err != nil:
		return nil, 0, fmt.Errorf("host %s: grapevine doctor with host files: %w: %s", h.Name, err, stderr.String())
	}
	return []byte(out.String()), 0, nil
}
