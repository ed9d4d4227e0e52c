package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

const (
	dockerfile  = "../../../Dockerfile"
	moduleRoot  = "../../.."
	testVersion = "v0.0.0-test"
	testTag     = "grapevine:test"
)

// builtBin and builtPlugins hold the binaries the archive is built from: those of
// `make test` ($GRAPEVINE_BIN_DIR, $GRAPEVINE_CNI_PATH), or built by TestMain.
// workDir holds the archive; TestMain removes it.
var builtBin, builtPlugins, workDir string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	var err error
	if workDir, err = os.MkdirTemp("", "gv-imagearchive-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(workDir)
	builtBin = os.Getenv("GRAPEVINE_BIN_DIR")
	for _, dir := range filepath.SplitList(os.Getenv("GRAPEVINE_CNI_PATH")) {
		if _, err := os.Stat(filepath.Join(dir, "portmap")); err == nil {
			builtPlugins = dir
			break
		}
	}
	if builtBin == "" || builtPlugins == "" {
		builtBin, builtPlugins = filepath.Join(workDir, "bin"), filepath.Join(workDir, "cni")
		if err := buildBinaries(builtBin, builtPlugins); err != nil {
			fmt.Fprintln(os.Stderr, "build the binaries (or set GRAPEVINE_BIN_DIR and GRAPEVINE_CNI_PATH):", err)
			return 1
		}
	}
	return m.Run()
}

// buildBinaries builds what make dist and make cni-plugins build.
func buildBinaries(bin, cni string) error {
	run := func(env []string, args ...string) error {
		cmd := exec.Command("go", args...)
		cmd.Dir = moduleRoot
		cmd.Env = append(os.Environ(), append(env, "CGO_ENABLED=0")...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := run(nil, "build", "-o", bin+"/", "./cmd/..."); err != nil {
		return err
	}
	for _, p := range []string{"meta/portmap", "main/loopback"} {
		if err := run([]string{"GOBIN=" + cni}, "install", "github.com/containernetworking/plugins/plugins/"+p+"@v1.10.0"); err != nil {
			return err
		}
	}
	return nil
}

// archive builds the image archive once, as `make image-archive` does, and
// returns its path.
var archive = sync.OnceValues(func() (string, error) {
	out := filepath.Join(workDir, "grapevine-image.tar")
	return out, run([]string{"-bin-dir", builtBin, "-cni-plugins", builtPlugins, "-tag", testTag, "-version", testVersion, "-o", out}, io.Discard)
})

// readArchive reads the image back from the archive with the library alone
// and flattens its layers into one file system.
func readArchive(t *testing.T) (*v1.ConfigFile, map[string]imageEntry) {
	t.Helper()
	path, err := archive()
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return cfg, flatten(t, img)
}

type imageEntry struct {
	hdr     *tar.Header
	content []byte
}

func flatten(t *testing.T, img v1.Image) map[string]imageEntry {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	entries := map[string]imageEntry{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return entries
		}
		if err != nil {
			t.Fatal(err)
		}
		content, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		entries["/"+strings.Trim(path.Clean(hdr.Name), "/")] = imageEntry{hdr, content}
	}
}

// finalStage is what the Dockerfile's last stage puts into the image, read
// with Docker's own parser and variable expansion.
type finalStage struct {
	base       string
	files      map[string]string // path in the image -> file name in the build stage
	entrypoint []string
	cmd        []string
	env        []string
	labels     map[string]string
}

func parseDockerfile(t *testing.T, buildArgs map[string]string) finalStage {
	t.Helper()
	f, err := os.Open(dockerfile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ast, err := parser.Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	stages, _, err := instructions.Parse(ast.AST, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(stages) == 0 {
		t.Fatal("the Dockerfile has no stage")
	}
	stage := stages[len(stages)-1]
	got := finalStage{base: stage.BaseName, files: map[string]string{}, labels: map[string]string{}}

	lex := shell.NewLex(ast.EscapeToken)
	var vars []string
	expand := func(word string) (string, error) {
		s, _, err := lex.ProcessWord(word, shell.EnvsFromSlice(vars))
		return s, err
	}
	for _, cmd := range stage.Commands {
		if e, ok := cmd.(instructions.SupportsSingleWordExpansion); ok {
			if err := e.Expand(expand); err != nil {
				t.Fatalf("%s: %v", cmd.Name(), err)
			}
		}
		switch c := cmd.(type) {
		case *instructions.ArgCommand:
			for _, a := range c.Args {
				v, ok := buildArgs[a.Key]
				if !ok && a.Value != nil {
					v = *a.Value
				}
				vars = append(vars, a.Key+"="+v)
			}
		case *instructions.EnvCommand:
			for _, kv := range c.Env {
				vars = append(vars, kv.String())
				got.env = append(got.env, kv.String())
			}
		case *instructions.LabelCommand:
			for _, kv := range c.Labels {
				got.labels[kv.Key] = kv.Value
			}
		case *instructions.CopyCommand:
			if c.From != "build" || c.Chmod != "" || c.Chown != "" {
				t.Fatalf("COPY %v: only plain COPY --from=build is reproduced by the archive", c.SourcePaths)
			}
			toDir := strings.HasSuffix(c.DestPath, "/") || len(c.SourcePaths) > 1
			for _, src := range c.SourcePaths {
				dst := c.DestPath
				if toDir {
					dst = path.Join(dst, path.Base(src))
				}
				got.files[dst] = path.Base(src)
			}
		case *instructions.EntrypointCommand:
			if c.PrependShell {
				t.Fatal("ENTRYPOINT in shell form: the image has no shell")
			}
			got.entrypoint = c.CmdLine
		case *instructions.CmdCommand:
			if c.PrependShell {
				t.Fatal("CMD in shell form: the image has no shell")
			}
			got.cmd = c.CmdLine
		default:
			t.Fatalf("the final stage has %s, which the image archive does not reproduce", strings.ToUpper(cmd.Name()))
		}
	}
	return got
}

// TestArchiveMatchesDockerfile: the archive holds exactly the files the
// Dockerfile's final stage copies, at the same paths, and the same
// entrypoint, command, environment and labels. A change to either side
// that the other does not follow fails here.
func TestArchiveMatchesDockerfile(t *testing.T) {
	want := parseDockerfile(t, map[string]string{"VERSION": testVersion})
	if want.base != "scratch" {
		t.Fatalf("the final stage is FROM %s; the archive has no base image, only FROM scratch matches it", want.base)
	}
	cfg, fsys := readArchive(t)

	files := map[string]string{}
	for p, e := range fsys {
		switch e.hdr.Typeflag {
		case tar.TypeReg:
			files[p] = path.Base(p)
		case tar.TypeDir:
		default:
			t.Errorf("%s: tar type %q; the Dockerfile copies only regular files", p, e.hdr.Typeflag)
		}
	}
	if !maps.Equal(files, want.files) {
		t.Errorf("archive files %v,\nDockerfile copies %v", files, want.files)
	}
	for p, name := range want.files {
		if e, ok := fsys[p]; ok {
			src := filepath.Join(builtBin, name)
			if name == "portmap" || name == "loopback" {
				src = filepath.Join(builtPlugins, name)
			}
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(e.content, b) {
				t.Errorf("%s in the archive is not the built %s", p, src)
			}
		}
	}

	c := cfg.Config
	if !slices.Equal(c.Entrypoint, want.entrypoint) || !slices.Equal(c.Cmd, want.cmd) {
		t.Errorf("archive runs %q %q, Dockerfile %q %q", c.Entrypoint, c.Cmd, want.entrypoint, want.cmd)
	}
	if !slices.Equal(c.Env, want.env) {
		t.Errorf("archive env %q, Dockerfile %q", c.Env, want.env)
	}
	if !maps.Equal(c.Labels, want.labels) {
		t.Errorf("archive labels %v, Dockerfile %v", c.Labels, want.labels)
	}
	if c.Labels["org.opencontainers.image.version"] != testVersion {
		t.Errorf("version label %q, want %q from -version", c.Labels["org.opencontainers.image.version"], testVersion)
	}
	if e, ok := fsys[want.entrypoint[0]]; !ok || e.hdr.Typeflag != tar.TypeReg {
		t.Errorf("the entrypoint %s is not a file in the image", want.entrypoint[0])
	}
	if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s, want linux/%s", cfg.OS, cfg.Architecture, runtime.GOARCH)
	}
	if c.User != "" || c.WorkingDir != "" || len(c.Volumes) != 0 || len(c.ExposedPorts) != 0 {
		t.Errorf("config sets more than the Dockerfile: %+v", c)
	}
}

// TestArchiveTag: the archive names the image as a runtime resolves the
// short name, so that every engine files it under the name kubelet asks for.
func TestArchiveTag(t *testing.T) {
	path, err := archive()
	if err != nil {
		t.Fatal(err)
	}
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(path) })
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 1 || !slices.Equal(m[0].RepoTags, []string{"docker.io/library/" + testTag}) {
		t.Errorf("manifest.json: %+v, want one image tagged docker.io/library/%s", m, testTag)
	}
	for tag, want := range map[string]string{
		"grapevine:dev":                   "docker.io/library/grapevine:dev",
		"example/grapevine:v1":            "docker.io/example/grapevine:v1",
		"registry.example.com/gv:v1":      "registry.example.com/gv:v1",
		"localhost:5000/grapevine:latest": "localhost:5000/grapevine:latest",
	} {
		got, err := qualifiedTag(tag)
		if err != nil || got.String() != want {
			t.Errorf("qualifiedTag(%q) = %q, %v, want %q", tag, got.String(), err, want)
		}
	}
}

// TestArchiveBinariesAreStatic: every file in the image is a static ELF
// executable (no loader, no shared library: a scratch image has neither),
// root-owned and 0755, byte for byte what the build produced.
func TestArchiveBinariesAreStatic(t *testing.T) {
	_, fsys := readArchive(t)
	n := 0
	for p, e := range fsys {
		if e.hdr.Uid != 0 || e.hdr.Gid != 0 || e.hdr.FileInfo().Mode().Perm() != 0o755 {
			t.Errorf("%s: owner %d:%d mode %v, want 0:0 0755", p, e.hdr.Uid, e.hdr.Gid, e.hdr.FileInfo().Mode().Perm())
		}
		if e.hdr.Typeflag != tar.TypeReg {
			continue
		}
		n++
		f, err := elf.NewFile(bytes.NewReader(e.content))
		if err != nil {
			t.Errorf("%s is not an ELF binary: %v", p, err)
			continue
		}
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				t.Errorf("%s asks for a dynamic loader", p)
			}
		}
		if libs, err := f.ImportedLibraries(); err != nil || len(libs) != 0 {
			t.Errorf("%s needs shared libraries %v (%v)", p, libs, err)
		}
		if f.Type != elf.ET_EXEC {
			t.Errorf("%s is ELF type %s, want an executable", p, f.Type)
		}
	}
	if n != 6 {
		t.Errorf("the image has %d files, want the 6 binaries (grapevine, grapevine-policy, grapevine-cni, grapevine-ipam, portmap, loopback)", n)
	}
}

// TestArchiveReproducible: the same binaries give the same image, byte for
// byte, so an image built offline can be checked against another build.
func TestArchiveReproducible(t *testing.T) {
	first, err := archive()
	if err != nil {
		t.Fatal(err)
	}
	second := filepath.Join(t.TempDir(), "again.tar")
	if err := run([]string{"-bin-dir", builtBin, "-cni-plugins", builtPlugins, "-tag", testTag, "-version", testVersion, "-o", second}, io.Discard); err != nil {
		t.Fatal(err)
	}
	a, err := os.ReadFile(first)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(second)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("two builds from the same binaries differ")
	}
}

// TestArchiveRefusesBadInput: a binary that is missing, not ELF, dynamically
// linked or for another architecture is refused with a reason, and no
// archive (not even a partial one) is written.
func TestArchiveRefusesBadInput(t *testing.T) {
	dynamic := ""
	for _, p := range []string{"/bin/sleep", "/usr/bin/sleep"} {
		if f, err := elf.Open(p); err == nil {
			if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
				dynamic = p
			}
			f.Close()
		}
	}
	otherArch := "arm64"
	if runtime.GOARCH == "arm64" {
		otherArch = "amd64"
	}
	tests := []struct {
		name string
		// replace puts content in place of the named plugin; nil removes it.
		plugin  string
		content func(t *testing.T) []byte
		args    []string
		wantErr string
	}{
		{name: "missing plugin", plugin: "loopback", wantErr: "loopback: no such file or directory (built by make cni-plugins)"},
		{name: "not ELF", plugin: "portmap", content: func(*testing.T) []byte { return []byte("#!/bin/sh\n") }, wantErr: "portmap is not an ELF binary"},
		{name: "dynamically linked", plugin: "portmap", content: func(t *testing.T) []byte {
			if dynamic == "" {
				t.Skip("no dynamically linked sleep on this machine")
			}
			b, err := os.ReadFile(dynamic)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}, wantErr: "portmap is dynamically linked"},
		{name: "other architecture", args: []string{"-arch", otherArch}, wantErr: "is built for"},
		{name: "unknown architecture", args: []string{"-arch", "mips"}, wantErr: `architecture "mips"`},
		{name: "bad tag", args: []string{"-tag", "Grapevine:dev"}, wantErr: "image name"},
		{name: "stray argument", args: []string{"extra"}, wantErr: "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plugins := t.TempDir()
			for _, p := range []string{"portmap", "loopback"} {
				if err := os.Symlink(filepath.Join(builtPlugins, p), filepath.Join(plugins, p)); err != nil {
					t.Fatal(err)
				}
			}
			if tt.plugin != "" {
				target := filepath.Join(plugins, tt.plugin)
				if err := os.Remove(target); err != nil {
					t.Fatal(err)
				}
				if tt.content != nil {
					if err := os.WriteFile(target, tt.content(t), 0o755); err != nil {
						t.Fatal(err)
					}
				}
			}
			outDir := t.TempDir()
			args := append([]string{"-bin-dir", builtBin, "-cni-plugins", plugins, "-o", filepath.Join(outDir, "image.tar")}, tt.args...)
			err := run(args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %v, want one saying %q", err, tt.wantErr)
			}
			if left, _ := os.ReadDir(outDir); len(left) != 0 {
				t.Errorf("left %v in the output directory", left)
			}
		})
	}
}
