package main

import (
	"net/netip"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/node"
	"github.com/grapevine-net/grapevine/status"
)

// ipv6Status adds a dual-stack node's IPv6 side to r: its own IPv6 block
// and host address, and each member's IPv6 block (the twin of the block r
// shows for it), IPv6 host address and the path of its IPv6 block from the
// last reconcile (res.Paths6). Without --pool6 it returns r unchanged. It
// is pure.
func ipv6Status(r status.Report, v mesh.View, res node.Result, o agentOptions) status.Report {
	if !o.Pool6.IsValid() {
		return r
	}
	block6, _ := ownBlock6(v, o)
	r.Block6, r.HostIP6 = prefixString(block6), addrString(o.HostIP6)
	hostIP6 := make(map[string]string, len(v.Members))
	for _, m := range v.Members {
		hostIP6[memberKey(m)] = addrString(m.HostIP6)
	}
	for i := range r.Members {
		m := &r.Members[i]
		m.HostIP6 = hostIP6[m.ID]
		if b, err := netip.ParsePrefix(m.Block); err == nil {
			if b6, err := mesh.Block6(o.Pool, b, o.Pool6, o.BlockSize6); err == nil {
				m.Block6 = b6.String()
			}
		}
		if p, ok := res.Paths6[m.ID]; ok {
			m.Path6, m.Path6Reason = string(p.Path), p.Why
		}
	}
	return r
}

// ipv6Header and ipv6Columns are the status table's IPv6 columns, shown on
// a dual-stack node only: the member's IPv6 block and its path with the
// reason ("direct: fd00::2 is on em1's network fd00::/64").
func ipv6Header(r status.Report) string {
	if r.Block6 == "" {
		return ""
	}
	return "\tBLOCK6\tIPV6 PATH"
}

func ipv6Columns(r status.Report, m status.Member) string {
	if r.Block6 == "" {
		return ""
	}
	path := orDash(m.Path6)
	if m.Path6Reason != "" {
		path += ": " + m.Path6Reason
	}
	return "\t" + orDash(m.Block6) + "\t" + path
}
