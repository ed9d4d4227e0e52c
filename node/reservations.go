package node

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// maxReservationSize bounds what is read of one reservation file: a
// container ID and an interface name take well under this.
const maxReservationSize = 4096

// ReadReservations lists the reservations of the IPAM store in dir
// (<state dir>/ipam/<network>): the host-local disk format, one file per
// address named by it and holding "<container ID>\r\n<ifname>". A missing
// directory holds none. A file that is not a reservation (the lock, the
// last-reserved marker, a temporary file) is skipped. One that names no
// attachment (empty, as an ADD killed mid-write leaves it, or half written)
// is listed with an empty ContainerID and IfName: it has no host side to
// keep, but still holds its address.
func ReadReservations(dir string) ([]Reservation, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read address store %s: %w", dir, err)
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
			return nil, fmt.Errorf("read address store %s: %w", dir, err)
		}
		r, ok := parseReservation(addr, data)
		if !ok {
			r = Reservation{Addr: addr.Unmap()}
		}
		out = append(out, r)
	}
	return out, nil
}

// parseReservation reads host-local's "<container ID>\r\n<ifname>".
func parseReservation(addr netip.Addr, data []byte) (Reservation, bool) {
	id, ifName, ok := strings.Cut(string(data), "\r\n")
	id, ifName = strings.TrimSpace(id), strings.TrimSpace(ifName)
	if !ok || id == "" || ifName == "" {
		return Reservation{}, false
	}
	return Reservation{Addr: addr.Unmap(), ContainerID: id, IfName: ifName}, true
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
