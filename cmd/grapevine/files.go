package main

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"

	"github.com/grapevine-net/grapevine/mesh"
)

// maxKeyFileSize bounds what is read of --gossip-key-file: a 32-byte key
// is 44 characters of base64; anything much longer is not a key file (and
// /dev/zero never ends).
const maxKeyFileSize = 1024

// readGossipKey reads a base64-encoded AES key of 16, 24 or 32 bytes, as ssh
// reads a private key: from a regular file of this user or root that no
// one else can read or write, and no more of it than a key takes.
func readGossipKey(path string) ([]byte, error) {
	// O_NONBLOCK: opening a FIFO would otherwise wait for a writer; a
	// regular file reads as usual.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	if err := checkKeyFile(path, info); err != nil {
		return nil, err
	}
	raw, err := io.ReadAll(io.LimitReader(f, maxKeyFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	if len(raw) > maxKeyFileSize {
		return nil, fmt.Errorf("%s: gossip key file is longer than %d bytes, so it is not one (make one with `grapevine keygen`)", path, maxKeyFileSize)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil {
		return nil, fmt.Errorf("%s: gossip key is not base64 (make one with `grapevine keygen`): %w", path, err)
	}
	if len(key) == 0 {
		return nil, fmt.Errorf("%s: gossip key is empty (make one with `grapevine keygen`)", path)
	}
	if err := mesh.CheckSecretKey(key); err != nil {
		return nil, fmt.Errorf("%s: %w (make one with `grapevine keygen`)", path, err)
	}
	return key, nil
}

// checkKeyFile refuses a key file that is not a regular file, that someone
// other than its owner may read or write, or whose owner is neither this
// process's user nor root: anyone who can read the key can join the mesh
// and claim blocks, and anyone who can write it can lock this node out.
func checkKeyFile(path string, info fs.FileInfo) error {
	if !info.Mode().IsRegular() {
		return fmt.Errorf("%s: gossip key file is not a regular file (%s)", path, info.Mode().Type())
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s: gossip key file has mode %04o, so group or others can read or write it: make it 0600 or 0400 (chmod 600 %s)", path, perm, path)
	}
	if uid, ok := ownerOf(info); ok && uid != 0 && uid != os.Geteuid() {
		return fmt.Errorf("%s: gossip key file belongs to uid %d, neither root nor this agent's user (uid %d)", path, uid, os.Geteuid())
	}
	return nil
}

func ownerOf(info fs.FileInfo) (int, bool) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(st.Uid), true
}

// prepareDir makes sure dir (the flag's value) exists as a directory that
// only its owner, this agent's user or root, can write to: the run
// directory holds node.json, which tells the plugin which addresses are
// this node's, and the state directory the ledger and the reservations. A
// missing one is created with perm, whatever the umask. An existing one
// that group or others can write, or that belongs to another user, is
// refused rather than changed: whoever made it so may rely on it, and
// whoever could write to it may have left something there already.
func prepareDir(flag, dir string, perm fs.FileMode) error {
	info, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, perm); err != nil {
			return fmt.Errorf("%s: create %s: %w", flag, dir, err)
		}
		// MkdirAll's mode is cut by the umask; set it exactly.
		if err := os.Chmod(dir, perm); err != nil {
			return fmt.Errorf("%s: set the mode of %s: %w", flag, dir, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", flag, err)
	}
	if !info.IsDir() {
		return fmt.Errorf("%s %s is not a directory", flag, dir)
	}
	if m := info.Mode().Perm(); m&0o022 != 0 {
		return fmt.Errorf("%s %s has mode %04o, so group or others can write to it: allow only its owner to (chmod go-w %s)", flag, dir, m, dir)
	}
	if uid, ok := ownerOf(info); ok && uid != 0 && uid != os.Geteuid() {
		return fmt.Errorf("%s %s belongs to uid %d, neither root nor this agent's user (uid %d)", flag, dir, uid, os.Geteuid())
	}
	return nil
}

// prepareDirs checks or creates the run and state directories (see
// prepareDir) before anything is written to them.
func prepareDirs(o agentOptions) error {
	if err := prepareDir("--state-dir", o.StateDir, 0o700); err != nil {
		return err
	}
	return prepareDir("--run-dir", o.RunDir, 0o755)
}
