package bench

import (
	"net/netip"
	"testing"

	"github.com/grapevine-net/grapevine/netpol"
)

// TestConnPolicyInput: the ruleset row 12b loads on each host compiles
// without problems and, as the kernel would apply it, lets the client pod
// reach the server pod on connPort only, while its other addresses stay
// denied; so the rounds with policies dial through policies in force.
func TestConnPolicyInput(t *testing.T) {
	client := connEndpoint{"client", "h1", netip.MustParseAddr("10.244.0.1")}
	server := connEndpoint{"server", "h2", netip.MustParseAddr("10.244.2.1")}
	for _, tc := range []struct {
		node  string
		block netip.Prefix
	}{
		{"h1", netip.MustParsePrefix("10.244.0.0/23")},
		{"h2", netip.MustParsePrefix("10.244.2.0/23")},
	} {
		rs, problems := netpol.Compile(connPolicyInput(tc.node, tc.block, client, server))
		if len(problems) > 0 {
			t.Fatalf("%s: %v", tc.node, problems)
		}
		tcp := func(port uint16) netpol.Packet {
			return netpol.Packet{Src: client.addr, Dst: server.addr, Protocol: netpol.ProtocolTCP, Port: port}
		}
		if !rs.Allows(tcp(connPort)) {
			t.Errorf("%s: client to server on %d denied, want allowed", tc.node, connPort)
		}
		if rs.Allows(tcp(connPort + connPolicies)) {
			t.Errorf("%s: client to server on %d allowed, want denied (no policy allows it)", tc.node, connPort+connPolicies)
		}
		stranger := tc.block.Addr().Next().Next().Next()
		if rs.Allows(netpol.Packet{Src: stranger, Dst: server.addr, Protocol: netpol.ProtocolTCP, Port: connPort}) {
			t.Errorf("%s: an address of the block no pod holds (%s) allowed, want denied", tc.node, stranger)
		}
	}
	if n := len(connPolicyInput("h1", netip.Prefix{}, client, server).Policies); n != connPolicies {
		t.Errorf("%d policies, want %d", n, connPolicies)
	}
}

// TestPolicyScaleInput: row 12a's update compiles without problems into a
// ruleset that holds every pod of it.
func TestPolicyScaleInput(t *testing.T) {
	in := policyScaleInput()
	if len(in.Pods) != policyScalePods || len(in.Policies) != policyScalePolicies {
		t.Fatalf("%d pods and %d policies, want %d and %d", len(in.Pods), len(in.Policies), policyScalePods, policyScalePolicies)
	}
	rs, problems := netpol.Compile(in)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	if got := len(rs.Ingress); got != policyScalePods {
		t.Errorf("ingress verdict map holds %d pods, want %d", got, policyScalePods)
	}
}
