package runtimes

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	goruntime "runtime"
	"slices"
	"strings"
	"time"
)

// Image is a container image built without a registry: one layer holding a
// static busybox and its applet links, and the command to run. Both runtimes
// load it from a docker-archive (the format of `docker save`), which
// `ctr images import` and `podman load` read.
type Image struct {
	// Ref is the name the runtime knows the image by, e.g.
	// "localhost/grapevine-e2e/busybox:1".
	Ref string
	// Entrypoint is the image's command.
	Entrypoint []string
	// Files are more executables in the layer: the machine's file for each
	// path in the image (say agnhost, built from source, at "/agnhost").
	Files map[string]string
}

// BusyboxPath is where Debian's busybox-static installs the binary.
const BusyboxPath = "/bin/busybox"

// applets are the busybox commands the images offer under /bin.
var applets = []string{"sh", "sleep", "ping", "ip", "cat", "hostname", "nc", "ls", "ps", "true", "echo", "wget"}

// WriteArchive writes img as a docker-archive at path, with the busybox
// binary read from busybox.
func (img Image) WriteArchive(path, busybox string) error {
	bin, err := os.ReadFile(busybox)
	if err != nil {
		return fmt.Errorf("image %s: %w (install busybox-static)", img.Ref, err)
	}
	files := map[string][]byte{}
	for at, from := range img.Files {
		if files[strings.TrimPrefix(at, "/")], err = os.ReadFile(from); err != nil {
			return fmt.Errorf("image %s: %w", img.Ref, err)
		}
	}
	layer, err := busyboxLayer(bin, files)
	if err != nil {
		return fmt.Errorf("image %s: %w", img.Ref, err)
	}
	diffID := sha256.Sum256(layer)
	config, err := json.Marshal(map[string]any{
		"architecture": goruntime.GOARCH,
		"os":           "linux",
		"created":      time.Unix(0, 0).UTC(),
		"config": map[string]any{
			"Entrypoint": img.Entrypoint,
			"Env":        []string{"PATH=/bin"},
			"WorkingDir": "/",
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + hex.EncodeToString(diffID[:])}},
	})
	if err != nil {
		return err
	}
	configSum := sha256.Sum256(config)
	configName := hex.EncodeToString(configSum[:]) + ".json"
	layerName := hex.EncodeToString(diffID[:]) + "/layer.tar"
	manifest, err := json.Marshal([]map[string]any{{
		"Config":   configName,
		"RepoTags": []string{img.Ref},
		"Layers":   []string{layerName},
	}})
	if err != nil {
		return err
	}

	var archive bytes.Buffer
	tw := tar.NewWriter(&archive)
	for _, f := range []struct {
		name string
		data []byte
	}{{configName, config}, {layerName, layer}, {"manifest.json", manifest}} {
		if err := writeFile(tw, f.name, f.data, 0o644); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, archive.Bytes(), 0o644)
}

// busyboxLayer is an uncompressed layer tar: /bin/busybox, a link per
// applet, the directories a runtime mounts over, and the executables of
// files (by path in the image, without the leading slash, in a top-level
// directory or bin/).
func busyboxLayer(busybox []byte, files map[string][]byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, dir := range []string{"bin/", "dev/", "etc/", "proc/", "sys/", "tmp/", "root/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
			return nil, err
		}
	}
	if err := writeFile(tw, "bin/busybox", busybox, 0o755); err != nil {
		return nil, err
	}
	for _, a := range applets {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: time.Unix(0, 0)}); err != nil {
			return nil, err
		}
	}
	// Runtimes bind-mount these files; an image without them still works,
	// but podman and containerd then create them, which some versions log.
	for _, f := range []string{"etc/hosts", "etc/resolv.conf", "etc/hostname"} {
		if err := writeFile(tw, f, nil, 0o644); err != nil {
			return nil, err
		}
	}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		if err := writeFile(tw, name, files[name], 0o755); err != nil {
			return nil, err
		}
	}
	if err := writeFile(tw, "etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644); err != nil {
		return nil, err
	}
	if err := writeFile(tw, "etc/group", []byte("root:x:0:\n"), 0o644); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func writeFile(tw *tar.Writer, name string, data []byte, mode int64) error {
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: time.Unix(0, 0)}); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}
