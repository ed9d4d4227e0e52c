package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/urfave/cli/v2"
)

func keygenCommand() *cli.Command {
	return &cli.Command{
		Name:  "keygen",
		Usage: "print a new random 32-byte gossip key, base64-encoded, for --gossip-key-file",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "out", Usage: "write the key to this new `file`, mode 0600, instead of printing it (an existing file is left alone)"},
		},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if err := noArgs(c); err != nil {
				return err
			}
			key := make([]byte, 32)
			if _, err := rand.Read(key); err != nil {
				return fmt.Errorf("keygen: %w", err)
			}
			line := base64.StdEncoding.EncodeToString(key) + "\n"
			if path := c.String("out"); path != "" {
				return writeKeyFile(path, line)
			}
			_, err := fmt.Fprint(c.App.Writer, line)
			return err
		},
	}
}

// writeKeyFile creates path with mode 0600, as the agent wants its key file
// (see checkKeyFile), whatever the umask; it never replaces a file, which
// may be the key the cluster uses.
func writeKeyFile(path, key string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("keygen --out %s: the file exists; remove it first if it is not the key in use", path)
	}
	if err != nil {
		return fmt.Errorf("keygen --out: %w", err)
	}
	_, werr := f.WriteString(key)
	if err := errors.Join(werr, f.Chmod(0o600), f.Sync(), f.Close()); err != nil {
		os.Remove(path)
		return fmt.Errorf("keygen --out %s: %w", path, err)
	}
	return nil
}
