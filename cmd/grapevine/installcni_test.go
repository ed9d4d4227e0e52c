package main

import (
	"bytes"
	"context"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/urfave/cli/v2"
)

// writePlugins creates a fake plugin per name in dir whose content is
// prefix+name, with the given mode.
func writePlugins(t *testing.T, dir, prefix string, mode os.FileMode, names ...string) {
	t.Helper()
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(prefix+n), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(dir, n), mode); err != nil {
			t.Fatal(err)
		}
	}
}

// fileState is what a test compares of a file: its inode tells a rewrite
// from a file left alone.
type fileState struct {
	content string
	mode    os.FileMode
	inode   uint64
}

// dirState maps each file in dir to its state.
func dirState(t *testing.T, dir string) map[string]fileState {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	state := map[string]fileState{}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		var content []byte
		if fi.Mode().IsRegular() {
			if content, err = os.ReadFile(p); err != nil {
				t.Fatal(err)
			}
		}
		state[e.Name()] = fileState{string(content), fi.Mode(), fi.Sys().(*syscall.Stat_t).Ino}
	}
	return state
}

func TestInstallCNI(t *testing.T) {
	names := []string{"grapevine-cni", "portmap"}
	tests := []struct {
		name string
		// setup fills the source and target directories.
		setup func(t *testing.T, src, dst string)
		want  map[string]installAction
		// kept names target files that must keep their inode.
		kept []string
	}{
		{
			name:  "fresh host",
			setup: func(t *testing.T, src, dst string) { writePlugins(t, src, "v2 ", 0o755, names...) },
			want:  map[string]installAction{"grapevine-cni": actionInstalled, "portmap": actionInstalled},
		},
		{
			name: "target dir missing is created",
			setup: func(t *testing.T, src, dst string) {
				writePlugins(t, src, "v2 ", 0o755, names...)
				if err := os.Remove(dst); err != nil {
					t.Fatal(err)
				}
			},
			want: map[string]installAction{"grapevine-cni": actionInstalled, "portmap": actionInstalled},
		},
		{
			name: "identical content is left alone",
			setup: func(t *testing.T, src, dst string) {
				writePlugins(t, src, "v2 ", 0o755, names...)
				writePlugins(t, dst, "v2 ", 0o755, names...)
			},
			want: map[string]installAction{"grapevine-cni": actionUnchanged, "portmap": actionUnchanged},
			kept: names,
		},
		{
			name: "older version is replaced, identical one kept",
			setup: func(t *testing.T, src, dst string) {
				writePlugins(t, src, "v2 ", 0o755, names...)
				writePlugins(t, dst, "v1 ", 0o755, "grapevine-cni")
				writePlugins(t, dst, "v2 ", 0o755, "portmap")
			},
			want: map[string]installAction{"grapevine-cni": actionInstalled, "portmap": actionUnchanged},
			kept: []string{"portmap"},
		},
		{
			name: "same length, other bytes",
			setup: func(t *testing.T, src, dst string) {
				writePlugins(t, src, "v2 ", 0o755, names...)
				writePlugins(t, dst, "v3 ", 0o755, names...)
			},
			want: map[string]installAction{"grapevine-cni": actionInstalled, "portmap": actionInstalled},
		},
		{
			name: "identical but not executable gets its mode fixed in place",
			setup: func(t *testing.T, src, dst string) {
				writePlugins(t, src, "v2 ", 0o700, names...)
				writePlugins(t, dst, "v2 ", 0o644, names...)
			},
			want: map[string]installAction{"grapevine-cni": actionModeFixed, "portmap": actionModeFixed},
			kept: names,
		},
		{
			name: "a symlink in the target is replaced by a file",
			setup: func(t *testing.T, src, dst string) {
				writePlugins(t, src, "v2 ", 0o755, names...)
				writePlugins(t, dst, "v1 ", 0o755, "portmap.old")
				if err := os.Symlink("portmap.old", filepath.Join(dst, "portmap")); err != nil {
					t.Fatal(err)
				}
				writePlugins(t, dst, "v2 ", 0o755, "grapevine-cni")
			},
			want: map[string]installAction{"grapevine-cni": actionUnchanged, "portmap": actionInstalled},
			kept: []string{"grapevine-cni", "portmap.old"},
		},
		{
			name: "stale temporary files of an interrupted run are removed",
			setup: func(t *testing.T, src, dst string) {
				writePlugins(t, src, "v2 ", 0o755, names...)
				writePlugins(t, dst, "half", 0o600, tempPrefix+"portmap-123")
				writePlugins(t, dst, "v1 ", 0o755, "unrelated")
			},
			want: map[string]installAction{"grapevine-cni": actionInstalled, "portmap": actionInstalled},
			kept: []string{"unrelated"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, dst := t.TempDir(), filepath.Join(t.TempDir(), "bin")
			if err := os.Mkdir(dst, 0o755); err != nil {
				t.Fatal(err)
			}
			tt.setup(t, src, dst)
			before := map[string]fileState{}
			if _, err := os.Stat(dst); err == nil {
				before = dirState(t, dst)
			}

			results, err := installCNI(src, dst, names)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]installAction{}
			for _, r := range results {
				got[filepath.Base(r.Path)] = r.Action
				if filepath.Dir(r.Path) != dst {
					t.Errorf("result path %s is not in %s", r.Path, dst)
				}
			}
			if !maps.Equal(got, tt.want) {
				t.Errorf("actions = %v, want %v", got, tt.want)
			}

			after := dirState(t, dst)
			for _, n := range names {
				f := after[n]
				if f.content != "v2 "+n || f.mode != 0o755 {
					t.Errorf("%s: content %q mode %v, want %q 0755", n, f.content, f.mode, "v2 "+n)
				}
			}
			for _, n := range tt.kept {
				if before[n].inode != after[n].inode {
					t.Errorf("%s was rewritten (inode %d -> %d), want it left alone", n, before[n].inode, after[n].inode)
				}
			}
			for n := range after {
				if strings.HasPrefix(n, tempPrefix) {
					t.Errorf("temporary file %s left behind", n)
				}
				if !slices.Contains(names, n) && !slices.Contains(tt.kept, n) {
					t.Errorf("unexpected file %s in the target", n)
				}
			}

			// A second run finds everything in place.
			again, err := installCNI(src, dst, names)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range again {
				if r.Action != actionUnchanged {
					t.Errorf("second run: %s %s, want unchanged", r.Action, r.Path)
				}
			}
		})
	}
}

// TestInstallCNIErrors: bad input names what is wrong and leaves the target
// directory exactly as it was.
func TestInstallCNIErrors(t *testing.T) {
	names := []string{"grapevine-cni", "portmap"}
	tests := []struct {
		name    string
		setup   func(t *testing.T, src, dst string) (from, to string)
		wantErr string
	}{
		{
			name: "a plugin missing from the source",
			setup: func(t *testing.T, src, dst string) (string, string) {
				writePlugins(t, src, "v2 ", 0o755, "grapevine-cni")
				return src, dst
			},
			wantErr: "plugin portmap: stat " + "SRC/portmap: no such file or directory",
		},
		{
			name: "source directory missing",
			setup: func(t *testing.T, src, dst string) (string, string) {
				return filepath.Join(src, "nope"), dst
			},
			wantErr: "plugin grapevine-cni: stat SRC/nope/grapevine-cni: no such file or directory",
		},
		{
			name: "a plugin is a directory",
			setup: func(t *testing.T, src, dst string) (string, string) {
				writePlugins(t, src, "v2 ", 0o755, "grapevine-cni")
				if err := os.Mkdir(filepath.Join(src, "portmap"), 0o755); err != nil {
					t.Fatal(err)
				}
				return src, dst
			},
			wantErr: "plugin portmap: SRC/portmap is not a regular file (drwxr-xr-x)",
		},
		{
			name: "target is a file",
			setup: func(t *testing.T, src, dst string) (string, string) {
				writePlugins(t, src, "v2 ", 0o755, names...)
				writePlugins(t, dst, "x", 0o644, "file")
				return src, filepath.Join(dst, "file")
			},
			wantErr: "CNI bin dir: mkdir DST/file: not a directory",
		},
		{
			name: "empty flag",
			setup: func(t *testing.T, src, dst string) (string, string) {
				return src, ""
			},
			wantErr: "--from and --cni-bin-dir must not be empty",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, dst := t.TempDir(), t.TempDir()
			writePlugins(t, dst, "v1 ", 0o755, "grapevine-cni")
			before := dirState(t, dst)
			from, to := tt.setup(t, src, dst)
			results, err := installCNI(from, to, names)
			if err == nil {
				t.Fatalf("no error; results %v", results)
			}
			want := strings.NewReplacer("SRC", src, "DST", dst).Replace(tt.wantErr)
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
			if len(results) != 0 {
				t.Errorf("results %v on error, want none", results)
			}
			after := dirState(t, dst)
			delete(after, "file")
			delete(before, "file")
			if !maps.Equal(before, after) {
				t.Errorf("target changed on error:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
}

// TestInstallCNIOverRunningPlugin: a runtime may be executing the old plugin
// while the new one is installed. Writing into the running binary fails
// with ETXTBSY; the rename must not.
func TestInstallCNIOverRunningPlugin(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skipf("no sleep binary to run as the old plugin: %v", err)
	}
	src, dst := t.TempDir(), t.TempDir()
	old, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dst, "portmap")
	if err := os.WriteFile(target, old, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	running := exec.CommandContext(ctx, target, "600")
	if err := running.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		running.Wait()
	})
	// Show that the file is busy: an in-place write is refused.
	if f, err := os.OpenFile(target, os.O_WRONLY, 0); err == nil {
		f.Close()
		t.Fatal("the running plugin could be opened for writing; the test cannot tell a rename from an overwrite")
	} else if !strings.Contains(err.Error(), "text file busy") {
		t.Fatalf("open running plugin for writing: %v, want text file busy", err)
	}

	writePlugins(t, src, "v2 ", 0o755, "portmap")
	results, err := installCNI(src, dst, []string{"portmap"})
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 1 || results[0].Action != actionInstalled {
		t.Fatalf("results %v, want portmap installed", results)
	}
	if got, _ := os.ReadFile(target); string(got) != "v2 portmap" {
		t.Errorf("target holds %d bytes, want the new plugin", len(got))
	}
	if running.ProcessState != nil {
		t.Error("the running plugin exited during the install")
	}
}

// TestInstallCNICommand runs the command as the init container does.
func TestInstallCNICommand(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "host", "opt", "cni", "bin")
	writePlugins(t, src, "v2 ", 0o755, cniPlugins...)
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		app := &cli.App{Name: "grapevine", Commands: []*cli.Command{installCNICommand()}, Writer: &out, ErrWriter: io.Discard}
		err := app.Run(append([]string{"grapevine", "install-cni"}, args...))
		return out.String(), err
	}

	out, err := run("--from", src, "--cni-bin-dir", dst)
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for _, n := range cniPlugins {
		want.WriteString("installed " + filepath.Join(dst, n) + "\n")
	}
	if out != want.String() {
		t.Errorf("output:\n%s\nwant:\n%s", out, want.String())
	}
	for _, n := range cniPlugins {
		if b, err := os.ReadFile(filepath.Join(dst, n)); err != nil || string(b) != "v2 "+n {
			t.Errorf("%s: %q, %v", n, b, err)
		}
	}

	out, err = run("--from", src, "--cni-bin-dir", dst)
	if err != nil || strings.Count(out, "unchanged ") != len(cniPlugins) {
		t.Errorf("second run: %v\n%s", err, out)
	}

	if _, err := run("--from", src, "--cni-bin-dir", dst, "extra"); err == nil || !strings.Contains(err.Error(), "no arguments") {
		t.Errorf("stray argument: err = %v, want a refusal", err)
	}
}
