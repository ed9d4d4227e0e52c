package lab

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Conntrack reads the namespace's connection tracking table use
// (nf_conntrack_count, per namespace) and its size (nf_conntrack_max,
// global: read-only in a namespace other than the machine's).
func (n Namespace) Conntrack() (count, limit int, err error) {
	read := func(key string) (int, error) {
		var v []byte
		err := n.Do(func() (err error) {
			v, err = os.ReadFile(filepath.Join("/proc/sys/net/netfilter", key))
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("%s in %s: %w", key, n.Name, err)
		}
		return strconv.Atoi(strings.TrimSpace(string(v)))
	}
	if count, err = read("nf_conntrack_count"); err != nil {
		return 0, 0, err
	}
	limit, err = read("nf_conntrack_max")
	return count, limit, err
}

// FillConntrack adds entries conntrack entries, numbered from first, to
// the namespace's table over netlink (as `conntrack -I` does): UDP flows
// between made-up addresses of 198.18.0.0/15 (the benchmarking range,
// never routed), which carry no packet and time out after an hour. An
// entry of a number added before is only refreshed. Nothing leaves the
// namespace; its entries go with it.
func (n Namespace) FillConntrack(ctx context.Context, first, entries int) error {
	h, err := n.handle()
	if err != nil {
		return err
	}
	defer h.Close()
	server := net.IPv4(198, 19, 0, 1).To4()
	for i := first; i < first+entries; i++ {
		if i%1024 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		// 16 bits of client address, 16 of source port: distinct tuples
		// for up to 2^32 entries.
		client := net.IPv4(198, 18, byte(i>>24), byte(i>>16)).To4() // 4 bytes: netlink sends them as they are
		port := uint16(i)
		flow := &netlink.ConntrackFlow{
			FamilyType: unix.AF_INET,
			Forward:    netlink.IPTuple{Protocol: unix.IPPROTO_UDP, SrcIP: client, DstIP: server, SrcPort: port, DstPort: 53},
			Reverse:    netlink.IPTuple{Protocol: unix.IPPROTO_UDP, SrcIP: server, DstIP: client, SrcPort: 53, DstPort: port},
			TimeOut:    3600,
		}
		if err := h.ConntrackCreate(netlink.ConntrackTable, netlink.InetFamily(unix.AF_INET), flow); err != nil {
			return fmt.Errorf("conntrack entry %d in %s: %w", i, n.Name, err)
		}
	}
	return nil
}
