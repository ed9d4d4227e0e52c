package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"
)

// Where the image keeps the CNI plugins and where container runtimes look
// for them by default. The Dockerfile, the image archive and the DaemonSet's
// init container rely on them.
const (
	DefaultImageCNIDir = "/opt/grapevine/cni"
	DefaultCNIBinDir   = "/opt/cni/bin"
)

// cniPlugins are the binaries install-cni puts on the host: Grapevine's
// plugin and IPAM, portmap (chained after grapevine-cni for hostPorts) and
// loopback (the runtime sets up every pod's lo with it).
var cniPlugins = []string{"grapevine-cni", "grapevine-ipam", "portmap", "loopback"}

// tempPrefix marks install-cni's temporary files in the target directory, so
// that a run interrupted halfway is cleaned up by the next.
const tempPrefix = ".grapevine-install-"

func installCNICommand() *cli.Command {
	return &cli.Command{
		Name:  "install-cni",
		Usage: "copy the CNI plugins from the image onto the host, each replaced atomically",
		Description: "Copies " + strings.Join(cniPlugins, ", ") + " from --from into --cni-bin-dir.\n" +
			"Each file is written to a temporary file in the target directory, synced and renamed\n" +
			"over the old one, so a runtime never executes a half-written plugin and a plugin\n" +
			"that is running is never overwritten in place. Files whose content is already\n" +
			"identical are left alone.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "from", Value: DefaultImageCNIDir,
				Usage: "directory holding the plugins to install"},
			&cli.StringFlag{Name: "cni-bin-dir", Value: DefaultCNIBinDir,
				Usage: "the host's CNI plugin directory (created if missing)"},
		},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			results, err := installCNI(c.String("from"), c.String("cni-bin-dir"), cniPlugins)
			for _, r := range results {
				fmt.Fprintf(c.App.Writer, "%s %s\n", r.Action, r.Path)
			}
			return err
		},
	}
}

// installAction says what install-cni did with one plugin.
type installAction string

const (
	actionInstalled installAction = "installed"
	actionUnchanged installAction = "unchanged"
	// actionModeFixed: the content was identical, only the mode was not 0755.
	actionModeFixed installAction = "mode-fixed"
)

type installResult struct {
	Path   string
	Action installAction
}

// installCNI copies each named file from src into dst, atomically per file.
// Every source is checked before anything is written, so a missing or
// unreadable plugin leaves dst as it was. It returns what it did with each
// file up to the first error.
func installCNI(src, dst string, names []string) ([]installResult, error) {
	if src == "" || dst == "" {
		return nil, errors.New("install-cni: --from and --cni-bin-dir must not be empty")
	}
	for _, name := range names {
		fi, err := os.Stat(filepath.Join(src, name))
		if err != nil {
			return nil, fmt.Errorf("install-cni: plugin %s: %w", name, err)
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("install-cni: plugin %s: %s is not a regular file (%s)",
				name, filepath.Join(src, name), fi.Mode())
		}
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return nil, fmt.Errorf("install-cni: CNI bin dir: %w", err)
	}
	if err := removeStaleTemps(dst); err != nil {
		return nil, err
	}

	var results []installResult
	for _, name := range names {
		target := filepath.Join(dst, name)
		action, err := installFile(filepath.Join(src, name), target)
		if err != nil {
			return results, fmt.Errorf("install-cni: %s: %w", name, err)
		}
		results = append(results, installResult{Path: target, Action: action})
	}
	// The renames are durable only once the directory itself is synced.
	if err := syncDir(dst); err != nil {
		return results, fmt.Errorf("install-cni: %w", err)
	}
	return results, nil
}

// installFile puts src's content at target with mode 0755: in place of a
// chmod if only the mode differs, through a synced temporary file and a
// rename otherwise.
func installFile(src, target string) (installAction, error) {
	same, err := sameContent(src, target)
	if err != nil {
		return "", err
	}
	if same {
		fi, err := os.Stat(target)
		if err != nil {
			return "", err
		}
		if fi.Mode().Perm() == 0o755 {
			return actionUnchanged, nil
		}
		if err := os.Chmod(target, 0o755); err != nil {
			return "", err
		}
		return actionModeFixed, nil
	}

	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(target), tempPrefix+filepath.Base(target)+"-")
	if err != nil {
		return "", fmt.Errorf("temporary file in the CNI bin dir: %w", err)
	}
	written := false
	defer func() {
		if !written {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, in); err != nil {
		return "", fmt.Errorf("copy to %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		return "", err
	}
	if err := tmp.Sync(); err != nil {
		return "", fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), target); err != nil {
		return "", err
	}
	written = true
	return actionInstalled, nil
}

// sameContent reports whether target exists as a regular file with src's
// bytes. A missing target is simply not the same.
func sameContent(src, target string) (bool, error) {
	t, err := os.Open(target)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer t.Close()
	s, err := os.Open(src)
	if err != nil {
		return false, err
	}
	defer s.Close()
	sfi, err := s.Stat()
	if err != nil {
		return false, err
	}
	tfi, err := t.Stat()
	if err != nil {
		return false, err
	}
	if !tfi.Mode().IsRegular() || sfi.Size() != tfi.Size() {
		return false, nil
	}
	const chunk = 1 << 20
	sb, tb := make([]byte, chunk), make([]byte, chunk)
	for {
		n, serr := io.ReadFull(s, sb)
		m, terr := io.ReadFull(t, tb)
		if !bytes.Equal(sb[:n], tb[:m]) {
			return false, nil
		}
		sDone := serr == io.EOF || serr == io.ErrUnexpectedEOF
		tDone := terr == io.EOF || terr == io.ErrUnexpectedEOF
		switch {
		case serr != nil && !sDone:
			return false, serr
		case terr != nil && !tDone:
			return false, terr
		case sDone || tDone:
			return sDone && tDone, nil
		}
	}
}

// removeStaleTemps deletes temporary files that an interrupted run left in
// dir; they are never executed but would pile up.
func removeStaleTemps(dir string) error {
	stale, err := filepath.Glob(filepath.Join(dir, tempPrefix+"*"))
	if err != nil {
		return err
	}
	for _, p := range stale {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("install-cni: remove stale %s: %w", p, err)
		}
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
