package ipam

import (
	"errors"
	"fmt"
	"io"
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

// lastReservedFile holds the address of addr's family handed out last
// (host-local's last_reserved_ip.<range>). There is one range per family:
// the current block (range 0) and, on a dual-stack node, the current IPv6
// block (range 1), so that the two round-robins never reset each other.
func lastReservedFile(addr netip.Addr) string {
	if addr.Is4() {
		return "last_reserved_ip.0"
	}
	return "last_reserved_ip.1"
}

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

// maxReservationSize bounds what is read of one reservation file: a
// container ID and an interface name take well under this.
const maxReservationSize = 4096

// list returns every reservation in the store. Callers hold the lock.
func (s *store) list() ([]Reservation, error) {
	return listReservations(s.dir)
}

// listReservations reads every reservation in dir. Files that are not
// reservations (the lock, the last-reserved marker, temporary files) are
// skipped. It needs no lock to see each reservation whole, since every one
// appears by a link; without the lock the listing may be out of date by the
// time it returns.
func listReservations(dir string) ([]Reservation, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	var out []Reservation
	for _, e := range entries {
		addr, err := netip.ParseAddr(e.Name())
		if err != nil || !e.Type().IsRegular() {
			continue
		}
		data, err := readLimited(filepath.Join(dir, e.Name()), maxReservationSize)
		if errors.Is(err, fs.ErrNotExist) {
			continue // released since the listing
		}
		if err != nil {
			return nil, fmt.Errorf("read reservation %s: %w", addr, err)
		}
		r := Reservation{Addr: addr.Unmap()}
		if info, err := e.Info(); err == nil {
			r.Written = info.ModTime()
		}
		id, ifName, _ := strings.Cut(strings.TrimSpace(string(data)), lineBreak)
		if id = strings.TrimSpace(id); id != "" {
			r.ContainerID, r.IfName = id, ifName
		}
		out = append(out, r)
	}
	return out, nil
}

// readLimited reads at most limit bytes of the file at path.
func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
}

// ReadReservations lists the reservations in cfg's store without taking its
// lock or creating it, for readers that change nothing (the agent, which
// keeps the pods' host sides and watches the block fill up). A missing store
// holds none. A reservation that names no attachment is listed with an
// empty ContainerID: it holds its address all the same.
func ReadReservations(cfg Config) ([]Reservation, error) {
	rs, err := listReservations(cfg.StoreDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read address store: %w", err)
	}
	return rs, nil
}

// touch marks the reservation of addr as written now. Callers hold the lock.
func (s *store) touch(addr netip.Addr) error {
	now := time.Now()
	if err := os.Chtimes(filepath.Join(s.dir, addr.String()), now, now); err != nil {
		return fmt.Errorf("renew reservation %s: %w", addr, err)
	}
	return nil
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
		err = os.Rename(marker, filepath.Join(s.dir, lastReservedFile(addr)))
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

// lastReserved returns the address of family's family handed out last, if
// the store knows it.
func (s *store) lastReserved(family netip.Addr) (netip.Addr, bool) {
	data, err := os.ReadFile(filepath.Join(s.dir, lastReservedFile(family)))
	if err != nil {
		return netip.Addr{}, false
	}
	addr, err := netip.ParseAddr(strings.TrimSpace(string(data)))
	return addr, err == nil && addr.Is4() == family.Is4()
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
