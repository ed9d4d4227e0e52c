package node

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestResolveUplink(t *testing.T) {
	ns := newTestNS(t)
	em1 := ns.addLink(t, "em1", "172.16.254.1/24")
	ns.addLink(t, "em2", "192.168.7.1/24", "192.168.8.1/24")
	if err := ns.handle.LinkSetMTU(em1, 1400); err != nil {
		t.Fatal(err)
	}

	addr := netip.MustParseAddr
	tests := []struct {
		name    string
		iface   string
		hostIP  netip.Addr
		want    Uplink
		wantErr string
	}{
		{name: "no default route", wantErr: "no IPv4 default route"},
		{name: "by address", hostIP: addr("192.168.7.1"), want: Uplink{Name: "em2", Addr: addr("192.168.7.1"), MTU: 1500}},
		{name: "by the interface's second address", hostIP: addr("192.168.8.1"), want: Uplink{Name: "em2", Addr: addr("192.168.8.1"), MTU: 1500}},
		{name: "by a loopback address", hostIP: addr("127.0.0.1"), wantErr: "127.0.0.1 is not an address of lo"},
		{name: "by name", iface: "em1", want: Uplink{Name: "em1", Addr: addr("172.16.254.1"), MTU: 1400}},
		{name: "both", iface: "em2", hostIP: addr("192.168.7.1"), want: Uplink{Name: "em2", Addr: addr("192.168.7.1"), MTU: 1500}},
		{name: "address on another interface", iface: "em1", hostIP: addr("192.168.7.1"), wantErr: "192.168.7.1 is not an address of em1"},
		{name: "address of no interface", hostIP: addr("10.1.1.1"), wantErr: "10.1.1.1 is not an address of this host"},
		{name: "no such interface", iface: "em9", wantErr: "interface em9"},
		{name: "no global address", iface: "em1-p", wantErr: "em1-p has no global IPv4 address"},
	}
	run := func(t *testing.T, iface string, hostIP netip.Addr, want Uplink, wantErr string) {
		t.Helper()
		got, err := resolveUplink(ns.handle, iface, hostIP, false)
		switch {
		case wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)):
			t.Errorf("resolveUplink(%q, %v) = %+v, %v; want error containing %q", iface, hostIP, got, err, wantErr)
		case wantErr == "" && (err != nil || got != want):
			t.Errorf("resolveUplink(%q, %v) = %+v, %v; want %+v", iface, hostIP, got, err, want)
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { run(t, tt.iface, tt.hostIP, tt.want, tt.wantErr) })
	}

	def := netlink.Route{Gw: net.ParseIP("172.16.254.254"), LinkIndex: em1.Attrs().Index}
	if err := ns.handle.RouteAdd(&def); err != nil {
		t.Fatal(err)
	}
	t.Run("the default route's interface", func(t *testing.T) {
		run(t, "", netip.Addr{}, Uplink{Name: "em1", Addr: addr("172.16.254.1"), MTU: 1400}, "")
	})
}

// TestResolveUplinkIPv6 resolves the uplink of an IPv6-only host: its host
// address is IPv6, found by address, by name or through the IPv6 default
// route, and a link-local address never counts.
func TestResolveUplinkIPv6(t *testing.T) {
	ns := newTestNS(t)
	em1 := ns.addLink(t, "em1")
	ns.addAddrNoDAD(t, "em1", "fd00:172:16::1/64")
	ns.addLink(t, "em2")
	ns.addAddrNoDAD(t, "em2", "fd00:192:168::1/64")
	ns.addAddrNoDAD(t, "em2", "fe80::1/64")
	ns.addLink(t, "em3", "172.16.9.1/24")
	ns.addAddrNoDAD(t, "em3", "fe80::3/64")
	addr := netip.MustParseAddr
	run := func(t *testing.T, iface string, hostIP netip.Addr, want Uplink, wantErr string) {
		t.Helper()
		got, err := resolveUplink(ns.handle, iface, hostIP, true)
		switch {
		case wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)):
			t.Errorf("resolveUplink(%q, %v, IPv6) = %+v, %v; want error containing %q", iface, hostIP, got, err, wantErr)
		case wantErr == "" && (err != nil || got != want):
			t.Errorf("resolveUplink(%q, %v, IPv6) = %+v, %v; want %+v", iface, hostIP, got, err, want)
		}
	}
	for _, tt := range []struct {
		name    string
		iface   string
		hostIP  netip.Addr
		want    Uplink
		wantErr string
	}{
		{name: "no default route", wantErr: "no IPv6 default route"},
		{name: "by address", hostIP: addr("fd00:192:168::1"), want: Uplink{Name: "em2", Addr: addr("fd00:192:168::1"), MTU: 1500}},
		{name: "by name", iface: "em2", want: Uplink{Name: "em2", Addr: addr("fd00:192:168::1"), MTU: 1500}},
		{name: "address on another interface", iface: "em1", hostIP: addr("fd00:192:168::1"), wantErr: "fd00:192:168::1 is not an address of em1"},
		{name: "by a link-local address", hostIP: addr("fe80::1"), wantErr: "fe80::1 is not an address of em2"},
		{name: "only link-local and IPv4", iface: "em3", wantErr: "em3 has no global IPv6 address"},
		{name: "IPv4 address for an IPv6 uplink", hostIP: addr("172.16.9.1"), wantErr: "not an IPv6 address"},
	} {
		t.Run(tt.name, func(t *testing.T) { run(t, tt.iface, tt.hostIP, tt.want, tt.wantErr) })
	}
	def := netlink.Route{Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, Gw: net.ParseIP("fd00:172:16::fe"), LinkIndex: em1.Attrs().Index}
	if err := ns.handle.RouteAdd(&def); err != nil {
		t.Fatal(err)
	}
	t.Run("the IPv6 default route's interface", func(t *testing.T) {
		run(t, "", netip.Addr{}, Uplink{Name: "em1", Addr: addr("fd00:172:16::1"), MTU: 1500}, "")
	})
}

func TestPickAddr6(t *testing.T) {
	a, b := addr("2001:db8::1"), addr("fd00:172:16:254::1")
	for _, tc := range []struct {
		ips     []netip.Addr
		want    netip.Addr
		got     netip.Addr
		wantErr bool
	}{
		{ips: []netip.Addr{a, b}, got: a},
		{ips: []netip.Addr{a, b}, want: b, got: b},
		{ips: nil}, // no IPv6 underlay: zero, no error
		{ips: []netip.Addr{a}, want: b, wantErr: true},
	} {
		got, err := pickAddr6("em1", tc.ips, tc.want)
		if got != tc.got || (err != nil) != tc.wantErr {
			t.Errorf("pickAddr6(%v, %v) = %v, %v; want %v (error %v)", tc.ips, tc.want, got, err, tc.got, tc.wantErr)
		}
	}
}
