package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/grapevine-net/grapevine/e2e/labtest"
	"github.com/grapevine-net/grapevine/e2e/runtimes"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// imagePlugins are the binaries install-cni copies out of the image.
var imagePlugins = []string{"grapevine-cni", "grapevine-ipam", "portmap", "loopback"}

// TestImageArchiveInRuntimes: the archive of `make image-archive` loads into
// containerd (ctr images import) and podman (podman load) under the name a
// runtime resolves the short name to, and the FROM scratch image runs: the
// DaemonSet's init container, as kubelet asks containerd's CRI for it (host
// network, read-only root, every capability dropped, the image's entrypoint
// with the manifest's args), installs the plugins into a host directory;
// `podman run` does the same. And podman builds the Dockerfile's final stage
// into the same image.
func TestImageArchiveInRuntimes(t *testing.T) {
	t.Parallel()
	tools := runtimes.Require(t, "containerd", "containerd-shim-runc-v2", "runc", "ctr", "crictl", "podman")
	l := env.Lab(t, labtest.Options{Hosts: 1, NoAgents: true})
	ctx := timeout(t, 4*time.Minute)
	h := l.Host(1)

	const tag = "grapevine:e2e"
	const qualified = "docker.io/library/" + tag
	archive, built := buildImageArchive(t, ctx, l.BinDir, l.CNIPath, tag)

	crRoot := newRoot(t, ctx, l, h, "image-containerd")
	cr := startContainerdWith(t, ctx, crRoot, runtimes.CNIDirs{ConfDir: t.TempDir(), BinDir: t.TempDir()}, tools["crictl"], writeImages(t))
	if err := cr.Import(ctx, archive); err != nil {
		t.Fatal(err)
	}
	out, err := cr.Crictl(ctx, "inspecti", "-o", "json", tag)
	if err != nil {
		t.Fatalf("containerd does not find %s after the import: %v", tag, err)
	}
	var status struct {
		Status struct {
			RepoTags []string `json:"repoTags"`
		} `json:"status"`
	}
	if err := json.Unmarshal(out, &status); err != nil || !slices.Contains(status.Status.RepoTags, qualified) {
		t.Errorf("crictl inspecti %s: tags %v (%v), want %s", tag, status.Status.RepoTags, err, qualified)
	}

	hostBin := t.TempDir()
	logs := runInstallCNIInCRI(t, ctx, cr, crRoot.CgroupParent, tag, hostBin)
	t.Logf("install-cni in containerd:\n%s", logs)
	checkInstalled(t, hostBin, built)
	for _, p := range imagePlugins {
		if !strings.Contains(logs, "installed /host/opt/cni/bin/"+p) {
			t.Errorf("install-cni's log does not name %s:\n%s", p, logs)
		}
	}

	pmRoot := newRoot(t, ctx, l, h, "image-podman")
	pm := newPodman(t, ctx, pmRoot, runtimes.CNIDirs{ConfDir: t.TempDir(), BinDir: t.TempDir()}, archive)
	podmanBin := t.TempDir()
	out, err = pm.Podman(ctx, "run", "--rm", "--network", "host", "--read-only", "--cap-drop", "ALL",
		"--cgroup-parent", pmRoot.CgroupParent, "--volume", podmanBin+":/host/opt/cni/bin",
		qualified, "install-cni", "--cni-bin-dir=/host/opt/cni/bin")
	if err != nil {
		t.Fatalf("podman run %s install-cni: %v\n%s", qualified, err, out)
	}
	checkInstalled(t, podmanBin, built)

	checkDockerfileBuild(t, ctx, pm, archive, built)
}

// checkDockerfileBuild builds the Dockerfile's final stage with podman
// (buildah), on the binaries built here in place of its Go build stage,
// which needs the network, and compares the result with the archive: the
// same files with the same owners, modes and bytes, the same entrypoint,
// command, environment and labels.
func checkDockerfileBuild(t *testing.T, ctx context.Context, pm *runtimes.Podman, archive string, built map[string]string) {
	t.Helper()
	df, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	final := regexp.MustCompile(`(?m)^FROM scratch$`).FindIndex(df)
	if final == nil {
		t.Fatal("the Dockerfile has no FROM scratch stage")
	}
	dir := t.TempDir()
	for name, src := range built {
		dst := filepath.Join(dir, "out", name)
		if name == "portmap" || name == "loopback" {
			dst = filepath.Join(dir, "out", "cni", name)
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	stage := append([]byte("FROM scratch AS build\nCOPY out /out\n"), df[final[0]:]...)
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), stage, 0o644); err != nil {
		t.Fatal(err)
	}
	const ref = "localhost/grapevine-dockerfile:e2e"
	if out, err := pm.Podman(ctx, "build", "--network", "none", "--tag", ref, dir); err != nil {
		t.Fatalf("podman build of the Dockerfile's final stage: %v\n%s", err, out)
	}
	saved := filepath.Join(dir, "built.tar")
	if _, err := pm.Podman(ctx, "save", "--format", "docker-archive", "--output", saved, ref); err != nil {
		t.Fatal(err)
	}

	fromDockerfile, dfConfig := readImage(t, saved)
	fromArchive, archiveConfig := readImage(t, archive)
	paths := slices.Concat(slices.Collect(maps.Keys(fromDockerfile)), slices.Collect(maps.Keys(fromArchive)))
	slices.Sort(paths)
	for _, p := range slices.Compact(paths) {
		if fromDockerfile[p] != fromArchive[p] {
			t.Errorf("%s: built from the Dockerfile %q, in the archive %q", p, fromDockerfile[p], fromArchive[p])
		}
	}
	if len(fromArchive) == 0 {
		t.Error("the archive holds no files")
	}
	delete(dfConfig.Labels, "io.buildah.version")
	if !slices.Equal(dfConfig.Entrypoint, archiveConfig.Entrypoint) || !slices.Equal(dfConfig.Cmd, archiveConfig.Cmd) ||
		!slices.Equal(dfConfig.Env, archiveConfig.Env) || !maps.Equal(dfConfig.Labels, archiveConfig.Labels) {
		t.Errorf("config built from the Dockerfile:\n%+v\nin the archive:\n%+v", dfConfig, archiveConfig)
	}
}

// readImage reads an image archive with go-containerregistry and describes
// every entry of its flattened file system: type, owner, mode and content.
func readImage(t *testing.T, path string) (map[string]string, v1.Config) {
	t.Helper()
	img, err := tarball.ImageFromPath(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	files := map[string]string{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return files, cfg.Config
		}
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.New()
		if _, err := io.Copy(sum, tr); err != nil {
			t.Fatal(err)
		}
		files[strings.TrimSuffix(hdr.Name, "/")] = fmt.Sprintf("%c %d:%d %v %x", hdr.Typeflag, hdr.Uid, hdr.Gid, hdr.FileInfo().Mode(), sum.Sum(nil))
	}
}

// buildImageArchive runs `make image-archive`'s program on the lab's
// binaries and returns the archive and where each binary in it came from.
func buildImageArchive(t *testing.T, ctx context.Context, binDir string, cniPath []string, tag string) (string, map[string]string) {
	t.Helper()
	dir := t.TempDir()
	staged := map[string]string{
		"grapevine":        filepath.Join(dir, "bin", "grapevine"),
		"grapevine-policy": filepath.Join(dir, "bin", "grapevine-policy"),
	}
	for _, p := range imagePlugins {
		sub := "cni"
		if strings.HasPrefix(p, "grapevine-") {
			sub = "bin"
		}
		staged[p] = filepath.Join(dir, sub, p)
	}
	built := map[string]string{}
	for name, link := range staged {
		src := ""
		for _, d := range append([]string{binDir}, cniPath...) {
			if _, err := os.Stat(filepath.Join(d, name)); err == nil {
				src = filepath.Join(d, name)
				break
			}
		}
		if src == "" {
			t.Fatalf("no %s in %s or %v", name, binDir, cniPath)
		}
		if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(src, link); err != nil {
			t.Fatal(err)
		}
		built[name] = src
	}
	archive := filepath.Join(dir, "grapevine-image.tar")
	cmd := exec.CommandContext(ctx, "go", "run", "./e2e/cmd/imagearchive", "-bin-dir", filepath.Join(dir, "bin"),
		"-cni-plugins", filepath.Join(dir, "cni"), "-tag", tag, "-o", archive)
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("imagearchive: %v\n%s", err, out)
	}
	return archive, built
}

// runInstallCNIInCRI runs the DaemonSet's init container through the CRI as
// kubelet would: a host-network pod, the image's entrypoint with the
// manifest's args, the host directory at /host/opt/cni/bin, read-only root
// and no capabilities. It returns the container's log.
func runInstallCNIInCRI(t *testing.T, ctx context.Context, cr *runtimes.Containerd, cgroupParent, image, hostBin string) string {
	t.Helper()
	dir := t.TempDir()
	const nodeNetwork = 2 // runtime.v1.NamespaceMode_NODE: hostNetwork
	pod, err := json.Marshal(map[string]any{
		"metadata":      map[string]any{"name": "grapevine", "namespace": "kube-system", "uid": "grapevine-e2e", "attempt": 0},
		"log_directory": dir,
		"linux": map[string]any{
			"cgroup_parent":    cgroupParent,
			"security_context": map[string]any{"namespace_options": map[string]any{"network": nodeNetwork}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	container, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"name": "install-cni"},
		"image":    map[string]any{"image": image},
		"args":     []string{"install-cni", "--cni-bin-dir=/host/opt/cni/bin"},
		"mounts":   []map[string]any{{"container_path": "/host/opt/cni/bin", "host_path": hostBin}},
		"log_path": "install-cni.log",
		"linux": map[string]any{"security_context": map[string]any{
			"readonly_rootfs": true,
			"no_new_privs":    true,
			"capabilities":    map[string]any{"drop_capabilities": []string{"ALL"}},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	podConf, ctrConf := filepath.Join(dir, "pod.json"), filepath.Join(dir, "container.json")
	if err := os.WriteFile(podConf, pod, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ctrConf, container, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := cr.Crictl(ctx, "runp", podConf)
	if err != nil {
		t.Fatalf("host-network pod: %v", err)
	}
	podID := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cr.RemovePod(ctx, podID)
	})
	if out, err = cr.Crictl(ctx, "create", podID, ctrConf, podConf); err != nil {
		t.Fatal(err)
	}
	ctrID := strings.TrimSpace(string(out))
	if _, err := cr.Crictl(ctx, "start", ctrID); err != nil {
		t.Fatal(err)
	}
	var exit struct {
		Status struct {
			State    string `json:"state"`
			ExitCode int    `json:"exitCode"`
			Reason   string `json:"reason"`
			Message  string `json:"message"`
		} `json:"status"`
	}
	err = poll.Until(ctx, "install-cni to exit", 100*time.Millisecond, func() error {
		out, err := cr.Crictl(ctx, "inspect", "-o", "json", ctrID)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(out, &exit); err != nil {
			return err
		}
		if exit.Status.State != "CONTAINER_EXITED" {
			return fmt.Errorf("container is %s", exit.Status.State)
		}
		return nil
	})
	logs, _ := cr.Crictl(ctx, "logs", ctrID)
	if err != nil {
		t.Fatalf("%v\n%s", err, logs)
	}
	if exit.Status.ExitCode != 0 {
		t.Fatalf("install-cni exited %d (%s %s):\n%s", exit.Status.ExitCode, exit.Status.Reason, exit.Status.Message, logs)
	}
	return string(logs)
}

// checkInstalled: hostBin holds every plugin, 0755, byte for byte the one
// built, and nothing else.
func checkInstalled(t *testing.T, hostBin string, built map[string]string) {
	t.Helper()
	entries, err := os.ReadDir(hostBin)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	want := slices.Sorted(slices.Values(imagePlugins))
	if !slices.Equal(names, want) {
		t.Errorf("%s holds %v, want %v", hostBin, names, want)
	}
	for _, p := range imagePlugins {
		got, err := os.ReadFile(filepath.Join(hostBin, p))
		if err != nil {
			t.Error(err)
			continue
		}
		src, err := os.ReadFile(built[p])
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, src) {
			t.Errorf("%s: installed %d bytes, not the built %s", p, len(got), built[p])
		}
		if fi, err := os.Stat(filepath.Join(hostBin, p)); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: mode %v (%v), want 0755", p, fi.Mode(), err)
		}
	}
}
