// Command imagearchive writes Grapevine's container image as an image
// archive (`make image-archive`): the static binaries already built by
// `make dist` and `make cni-plugins`, laid out as the Dockerfile's final
// stage lays them out, with the same entrypoint, command, environment and
// labels. It needs no registry, no container engine and no network, so the
// image can be built on any machine, offline, and loaded where it runs:
//
//	docker load -i dist/grapevine-image.tar
//	podman load -i dist/grapevine-image.tar
//	ctr -n k8s.io images import dist/grapevine-image.tar
//
// The archive is reproducible: the same binaries give the same image digest.
// Its tests check it against the Dockerfile.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"time"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "imagearchive:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("imagearchive", flag.ContinueOnError)
	var opts options
	fs.StringVar(&opts.BinDir, "bin-dir", "dist", "directory with grapevine, grapevine-policy, grapevine-cni and grapevine-ipam")
	fs.StringVar(&opts.PluginDir, "cni-plugins", "bin/cni", "directory with the reference plugins portmap and loopback")
	fs.StringVar(&opts.Tag, "tag", "grapevine:dev", "image name the archive carries")
	fs.StringVar(&opts.Version, "version", "dev", "version label, as the Dockerfile's VERSION build argument")
	fs.StringVar(&opts.Arch, "arch", runtime.GOARCH, "architecture of the binaries (GOARCH)")
	out := fs.String("o", "dist/grapevine-image.tar", "archive to write")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	created, err := sourceDateEpoch()
	if err != nil {
		return err
	}
	opts.Created = created

	img, err := buildImage(opts)
	if err != nil {
		return err
	}
	ref, err := writeArchive(*out, opts.Tag, img)
	if err != nil {
		return err
	}
	// The config's digest is the image ID that docker, podman and
	// containerd show; the manifest they store may be rewritten on load.
	id, err := img.ConfigName()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %s, image ID %s\n", *out, ref, id)
	return nil
}

// sourceDateEpoch is the image's creation time: $SOURCE_DATE_EPOCH as
// reproducible builds define it, or the Unix epoch, so that the digest
// depends on the binaries alone.
func sourceDateEpoch() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	sec, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since the epoch", s)
	}
	return time.Unix(sec, 0).UTC(), nil
}
