package ipam

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/disk"
)

// lineBreak separates the container ID from the interface name in a
// reservation file, as in host-local's store.
const lineBreak = "\r\n"

// lastReservedFile holds the address handed out last (host-local's
// last_reserved_ip.<range>). There is one range per node: the current block.
const lastReservedFile = "last_reserved_ip.0"

// tempPrefix starts the name of a reservation being written. Writers hold the
// store's lock, so one seen under the lock was left by a killed process.
const tempPrefix = ".reserving-"

// Reservation is one address in the store and the attachment holding it.
type Reservation struct {
	Addr netip.Addr
	// ContainerID and IfName name the attachment. Both are empty when the
	// file names none (empty or torn, as a version that wrote in place could
	// leave after a kill); IfName alone is empty in a file host-local wrote
	// before it recorded interfaces, which stands for every interface of the
	// container.
	ContainerID, IfName string
	// Written is when the reservation was made (the file's mtime).
	Written time.Time
}

// names reports whether r belongs to the attachment (containerID, ifName).
func (r Reservation) names(containerID, ifName string) bool {
	if r.ContainerID == "" || r.ContainerID != strings.TrimSpace(containerID) {
		return false
	}
	return r.IfName == ifName || r.IfName == ""
}

// store is the reservation directory of one network: host-local's on-disk
// format (one file per address holding "<container ID>\r\n<ifname>", a lock
// file, last_reserved_ip.0), written so that a reservation file appears whole
// or not at all.
type store struct {
	dir  string
	lock *disk.FileLock
}

func openStore(dir string) (*store, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	lock, err := disk.NewFileLock(dir)
	if err != nil {
		return nil, err
	}
	return &store{dir: dir, lock: lock}, nil
}

// list returns every reservation in the store. Callers hold the lock.
func (s *store) list() ([]Reservation, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", s.dir, err)
	}
	var out []Reservation
	for _, e := range entries {
		addr, err := netip.ParseAddr(e.Name())
		if err != nil || !e.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(s.dir, e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue // released by a process that does not take the lock
		}
		if err != nil {
			return nil, fmt.Errorf("read reservation %s: %w", addr, err)
		}
		r := Reservation{Addr: addr.Unmap()}
		if info, err := e.Info(); err == nil {
			r.Written = info.ModTime()
		}
		id, ifName, _ := strings.Cut(strings.TrimSpace(string(data)), lineBreak)
		if id != "" {
			r.ContainerID, r.IfName = id, ifName
		}
		out = append(out, r)
	}
	return out, nil
}

// reserve writes the reservation of addr for (containerID, ifName) unless
// addr is taken, and reports whether it did. The contents go to a temporary
// file first and become the reservation by a hard link, which fails when the
// name exists: a killed process leaves either no reservation or a whole one,
// never an empty file that no DEL would match. Nothing is synced: after a
// power loss the node's pods are gone anyway, and a reservation that lost
// its contents names no attachment, which GC and CollectStale free. Callers
// hold the lock.
func (s *store) reserve(addr netip.Addr, containerID, ifName string) (bool, error) {
	s.removeTemporaries()
	tmp, err := s.writeTemporary(strings.TrimSpace(containerID) + lineBreak + ifName)
	if err != nil {
		return false, fmt.Errorf("reserve %s: %w", addr, err)
	}
	defer os.Remove(tmp)
	err = os.Link(tmp, filepath.Join(s.dir, addr.String()))
	if errors.Is(err, fs.ErrExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reserve %s: %w", addr, err)
	}
	// The round-robin start, replaced by a rename; one lost to a kill only
	// makes the next search start at the block's first address. Failing to
	// write it (a full disk) fails the reservation, leaving nothing.
	marker, err := s.writeTemporary(addr.String())
	if err == nil {
		err = os.Rename(marker, filepath.Join(s.dir, lastReservedFile))
	}
	if err != nil {
		return false, errors.Join(fmt.Errorf("record %s as the last reserved address: %w", addr, err), s.release(addr))
	}
	return true, nil
}

// writeTemporary writes contents to a new temporary file in the store and
// returns its path.
func (s *store) writeTemporary(contents string) (string, error) {
	tmp, err := os.CreateTemp(s.dir, tempPrefix+"*")
	if err != nil {
		return "", err
	}
	_, err = tmp.WriteString(contents)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp.Name())
		return "", err
	}
	return tmp.Name(), nil
}

// removeTemporaries deletes the temporary files a killed writer left.
// Callers hold the lock, so no live writer has one open.
func (s *store) removeTemporaries() {
	matches, _ := filepath.Glob(filepath.Join(s.dir, tempPrefix+"*"))
	for _, m := range matches {
		os.Remove(m)
	}
}

// release deletes the reservation of addr. A missing one is success.
func (s *store) release(addr netip.Addr) error {
	err := os.Remove(filepath.Join(s.dir, addr.String()))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("release %s: %w", addr, err)
	}
	return nil
}

// lastReserved returns the address handed out last, if the store knows it.
func (s *store) lastReserved() (netip.Addr, bool) {
	data, err := os.ReadFile(filepath.Join(s.dir, lastReservedFile))
	if err != nil {
		return netip.Addr{}, false
	}
	addr, err := netip.ParseAddr(strings.TrimSpace(string(data)))
	return addr, err == nil
}

// writable reports why a reservation could not be written now (a read-only
// or full disk), by writing and removing a one-byte file.
func (s *store) writable() error {
	tmp, err := os.CreateTemp(s.dir, tempPrefix+"probe-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write([]byte{'\n'})
	if err == nil {
		err = tmp.Sync()
	}
	return errors.Join(err, tmp.Close())
}
