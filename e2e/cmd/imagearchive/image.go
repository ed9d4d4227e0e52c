package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The image, as the Dockerfile's final stage (FROM scratch) describes it.
const (
	entrypoint = "/usr/local/bin/grapevine"
	// policyBinary is the DaemonSet's second container's command.
	policyBinary = "/usr/local/bin/grapevine-policy"
	// pluginDir is where `grapevine install-cni` copies the plugins from.
	pluginDir = "/opt/grapevine/cni"
)

var (
	imageCmd = []string{"agent"}
	imageEnv = []string{"PATH=/usr/local/bin"}
)

func imageLabels(version string) map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       "grapevine",
		"org.opencontainers.image.description": "Grapevine: a routed L3 pod network with gossip instead of BGP and etcd",
		"org.opencontainers.image.version":     version,
	}
}

// elfMachines maps the GOARCH values an image can be built for to the ELF
// machine of their binaries.
var elfMachines = map[string]elf.Machine{
	"amd64":   elf.EM_X86_64,
	"arm64":   elf.EM_AARCH64,
	"arm":     elf.EM_ARM,
	"386":     elf.EM_386,
	"ppc64le": elf.EM_PPC64,
	"s390x":   elf.EM_S390,
	"riscv64": elf.EM_RISCV,
}

type options struct {
	BinDir    string // grapevine, grapevine-policy, grapevine-cni, grapevine-ipam (make dist)
	PluginDir string // portmap, loopback (make cni-plugins)
	Tag       string
	Version   string
	Arch      string
	Created   time.Time
}

// imageFile is one binary of the image: where it was built, where it goes,
// and what builds it, for the error when it is missing.
type imageFile struct {
	Src, Dst, BuiltBy string
}

func (o options) files() []imageFile {
	own := func(bin, dst string) imageFile {
		return imageFile{filepath.Join(o.BinDir, bin), dst, "make dist"}
	}
	ref := func(bin string) imageFile {
		return imageFile{filepath.Join(o.PluginDir, bin), path.Join(pluginDir, bin), "make cni-plugins"}
	}
	return []imageFile{
		own("grapevine", entrypoint),
		own("grapevine-policy", policyBinary),
		own("grapevine-cni", path.Join(pluginDir, "grapevine-cni")),
		own("grapevine-ipam", path.Join(pluginDir, "grapevine-ipam")),
		ref("portmap"),
		ref("loopback"),
	}
}

// buildImage assembles the image in memory: one layer holding the binaries,
// and a config with the Dockerfile's entrypoint, command, environment and
// labels. Every binary must be a static ELF executable for o.Arch, since a
// scratch image has no loader or libc to run anything else.
func buildImage(o options) (v1.Image, error) {
	if _, err := name.NewTag(o.Tag); err != nil {
		return nil, fmt.Errorf("image name: %w", err)
	}
	machine, ok := elfMachines[o.Arch]
	if !ok {
		return nil, fmt.Errorf("architecture %q: want one of %v", o.Arch, slices.Sorted(maps.Keys(elfMachines)))
	}
	files := o.files()
	for _, f := range files {
		if err := checkStatic(f.Src, machine); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("%w (built by %s)", err, f.BuiltBy)
			}
			return nil, err
		}
	}
	compressed, err := layerTarGz(files, o.Created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(compressed)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: o.Created},
			CreatedBy: "imagearchive: the static binaries of make dist and make cni-plugins",
		},
	})
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS = "linux"
	cfg.Architecture = o.Arch
	cfg.Created = v1.Time{Time: o.Created}
	cfg.Config = v1.Config{
		Entrypoint: []string{entrypoint},
		Cmd:        imageCmd,
		Env:        imageEnv,
		Labels:     imageLabels(o.Version),
	}
	return mutate.ConfigFile(img, cfg)
}

// checkStatic fails unless path is an ELF executable for machine that needs
// no dynamic loader and no shared library.
func checkStatic(path string, machine elf.Machine) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	e, err := elf.NewFile(f)
	if err != nil {
		return fmt.Errorf("%s is not an ELF binary: %w", path, err)
	}
	if e.Machine != machine {
		return fmt.Errorf("%s is built for %s, the image is for %s", path, e.Machine, machine)
	}
	for _, p := range e.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked (it asks for a loader); the image has no libc: build it with CGO_ENABLED=0", path)
		}
	}
	libs, err := e.ImportedLibraries()
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if len(libs) > 0 {
		return fmt.Errorf("%s needs the shared libraries %v; the image has none: build it with CGO_ENABLED=0", path, libs)
	}
	return nil
}

// layerTarGz is the gzipped tar of the files and their parent directories,
// owned by root, 0755, stamped with one time: the same input gives the same
// bytes.
func layerTarGz(files []imageFile, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)

	dirs := map[string]bool{}
	for _, f := range files {
		for d := path.Dir(f.Dst); d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for _, d := range slices.Sorted(maps.Keys(dirs)) {
		hdr := &tar.Header{Typeflag: tar.TypeDir, Name: d[1:] + "/", Mode: 0o755, ModTime: mtime, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
	}
	for _, f := range files {
		if err := addFile(tw, f, mtime); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func addFile(tw *tar.Writer, f imageFile, mtime time.Time) error {
	in, err := os.Open(f.Src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", f.Src)
	}
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: f.Dst[1:], Mode: 0o755, Size: fi.Size(), ModTime: mtime, Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if n, err := io.Copy(tw, in); err != nil {
		return fmt.Errorf("%s: %w", f.Src, err)
	} else if n != fi.Size() {
		return fmt.Errorf("%s changed while being read", f.Src)
	}
	return nil
}

// writeArchive writes img as a docker image archive (manifest.json and
// blobs; what `docker save` writes, which docker, podman and containerd
// load) to a temporary file next to path, renamed into place when complete.
// It returns the name the archive gives the image.
func writeArchive(path, tag string, img v1.Image) (ref name.Tag, err error) {
	ref, err = qualifiedTag(tag)
	if err != nil {
		return ref, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return ref, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".grapevine-image-*.tar")
	if err != nil {
		return ref, err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o644); err != nil {
		return ref, err
	}
	if err := tarball.Write(ref, img, tmp); err != nil {
		return ref, fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return ref, err
	}
	return ref, os.Rename(tmp.Name(), path)
}

// qualifiedTag is tag with its registry spelt out as a container runtime
// resolves a short name: grapevine:dev is docker.io/library/grapevine:dev.
// The archive carries the full name so that every engine loads it under the
// name kubelet asks for (podman would file a short name under localhost/).
func qualifiedTag(tag string) (name.Tag, error) {
	ref, err := name.NewTag(tag)
	if err != nil {
		return name.Tag{}, fmt.Errorf("image name: %w", err)
	}
	registry := ref.RegistryStr()
	if registry == name.DefaultRegistry {
		registry = "docker.io"
	}
	return name.NewTag(registry + "/" + ref.RepositoryStr() + ":" + ref.TagStr())
}
