package main

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/mesh"
	"github.com/grapevine-net/grapevine/mesh/meshtest"
	"github.com/grapevine-net/grapevine/node"
	"github.com/grapevine-net/grapevine/node/nodestate"
)

func TestPodMTU(t *testing.T) {
	tests := []struct {
		name      string
		flag, mtu int
		encap     node.Encapsulation
		want      int
	}{
		{"never: the interface's", 0, 1500, node.EncapsulationNever, 1500},
		{"cross-subnet: less the VXLAN overhead", 0, 1500, node.EncapsulationCrossSubnet, 1450},
		{"always: less the VXLAN overhead", 0, 9000, node.EncapsulationAlways, 8950},
		{"--mtu overrides", 1400, 1500, node.EncapsulationCrossSubnet, 1400},
		{"--mtu overrides with never too", 1300, 1500, node.EncapsulationNever, 1300},
	}
	if got := podMTU(0, 1500, node.EncapsulationCrossSubnet, node.TunnelOverheadFor(netip.MustParseAddr("fd00:172:16::1"))); got != 1430 {
		t.Errorf("IPv6 underlay, cross-subnet: podMTU = %d, want 1430 (less VXLAN's 70 bytes over IPv6)", got)
	}
	for _, tt := range tests {
		if got := podMTU(tt.flag, tt.mtu, tt.encap, node.TunnelOverhead); got != tt.want {
			t.Errorf("%s: podMTU = %d, want %d", tt.name, got, tt.want)
		}
	}
}

// TestStatusShowsPaths: a direct peer, a VXLAN peer and, with encapsulation
// never, a peer off the interface's networks with its error, each with the
// reason for its path, in the JSON and in the table.
func TestStatusShowsPaths(t *testing.T) {
	v := mesh.View{
		Self:  "h1",
		Block: netip.MustParsePrefix("10.244.0.0/23"),
		Ready: true,
		Members: []mesh.Member{
			member("h2", "alive", "172.16.254.2", "10.244.2.0/23"),
			member("h3", "alive", "172.16.253.3", "10.244.4.0/23"),
			member("h4", "dead", "172.16.253.4", "10.244.6.0/23"),
		},
	}
	for _, tt := range []struct {
		encap node.Encapsulation
		want  map[string]string // member -> path/route
	}{
		{node.EncapsulationCrossSubnet, map[string]string{"h2": "direct/programmed", "h3": "vxlan/programmed", "h4": "/withdrawn"}},
		{node.EncapsulationAlways, map[string]string{"h2": "vxlan/programmed", "h3": "vxlan/programmed", "h4": "/withdrawn"}},
		{node.EncapsulationNever, map[string]string{"h2": "direct/programmed",
			"h3": "direct/error: next hop is not on a network directly connected to the interface", "h4": "/withdrawn"}},
	} {
		t.Run(tt.encap.String(), func(t *testing.T) {
			o := testOpts
			o.Encapsulation = tt.encap
			kept := keptRoutes(v, nil, nil, nil)
			d := desiredState(v, kept, o)
			if d.Encapsulation != tt.encap || d.HostIP != o.HostIP {
				t.Fatalf("desired state lacks the encapsulation or host IP: %+v", d)
			}
			k := node.NewFakeKernel()
			k.AddLink("em1", netip.MustParsePrefix("172.16.254.1/24"))
			res, err := node.NewReconciler(k, nil, nil).Reconcile(t.Context(), d)
			if err != nil {
				t.Fatal(err)
			}
			r := buildStatus(v, kept, nil, nil, res, true, "")
			r.Encapsulation = tt.encap.String()
			for _, m := range r.Members {
				got := m.Path + "/" + m.Route
				if !strings.HasPrefix(got, tt.want[m.Name]) {
					t.Errorf("%s: %q, want %q", m.Name, got, tt.want[m.Name])
				}
				if m.Path != "" && m.PathReason == "" {
					t.Errorf("%s: path %s without a reason", m.Name, m.Path)
				}
			}
			var table strings.Builder
			if err := printStatus(&table, r); err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"encapsulation " + tt.encap.String(), "PATH", "WHY THIS PATH"} {
				if !strings.Contains(table.String(), want) {
					t.Errorf("table lacks %q:\n%s", want, table.String())
				}
			}
			t.Logf("\n%s", table.String())
		})
	}
}

func TestFollowUplinkMTU(t *testing.T) {
	tests := []struct {
		name                  string
		flag, current, uplink int
		encap                 node.Encapsulation
		want                  int
		changed               bool
	}{
		{"unchanged", 0, 1450, 1500, node.EncapsulationCrossSubnet, 1450, false},
		{"lowered, less the VXLAN overhead", 0, 1450, 1400, node.EncapsulationCrossSubnet, 1350, true},
		{"raised, never: the interface's", 0, 1500, 9000, node.EncapsulationNever, 9000, true},
		{"--mtu set: it stays", 1400, 1400, 1300, node.EncapsulationCrossSubnet, 1400, false},
		{"uplink's MTU not known", 0, 1450, 0, node.EncapsulationCrossSubnet, 1450, false},
		{"out of range for pods: it stays", 0, 1450, 100, node.EncapsulationCrossSubnet, 1450, false},
	}
	for _, tt := range tests {
		got, changed := followUplinkMTU(tt.flag, tt.current, tt.uplink, tt.encap, node.TunnelOverhead)
		if got != tt.want || changed != tt.changed {
			t.Errorf("%s: followUplinkMTU = %d, %v; want %d, %v", tt.name, got, changed, tt.want, tt.changed)
		}
	}
}

// TestAgentFollowsUplinkMTU: the uplink's MTU lowered under a running
// agent without --mtu; its next pass writes the new pod MTU into
// node.json (for new pods) and the status.
func TestAgentFollowsUplinkMTU(t *testing.T) {
	dir := t.TempDir()
	network := meshtest.NewNetwork()
	kernel := node.NewFakeKernel()
	link := kernel.AddLink("em1", netip.PrefixFrom(meshtest.HostAddr(1), 8))
	link.MTU = 1500
	kernel.SetLink(link)
	h1 := startHostWith(t, network, nil, nil, nil, func(o *agentOptions) {
		o.MTUFlag, o.MTU, o.Encapsulation = 0, 1450, node.EncapsulationCrossSubnet
	}, dir, "h1", 1, kernel)
	mtuIs := func(want int) func() error {
		return func() error {
			st, err := nodestate.Read(h1.agent.opts.RunDir)
			if err != nil {
				return err
			}
			if st.MTU != want {
				return fmt.Errorf("node.json's MTU %d, want %d", st.MTU, want)
			}
			return nil
		}
	}
	waitFor(t, "node.json with the pod MTU 1450", mtuIs(1450))
	link.MTU = 1400
	kernel.SetLink(link)
	h1.kernelChanged()
	waitFor(t, "node.json with the pod MTU 1350", mtuIs(1350))
	if s := h1.agent.settledStatus(t.Context(), time.Second); s.Settings == nil || s.Settings.PodMTU != 1350 {
		t.Errorf("status settings %+v, want podMTU 1350", s.Settings)
	}
}
