package lab

import (
	"net/netip"
	"os"
	"slices"
	"testing"
)

// TestStatusReadsReport: the lab reads the agent's status document (the
// status package's pinned example) into its typed view, addresses and
// blocks parsed.
func TestStatusReadsReport(t *testing.T) {
	data, err := os.ReadFile("../../status/testdata/report.json")
	if err != nil {
		t.Fatal(err)
	}
	var s Status
	if err := s.UnmarshalJSON(data); err != nil {
		t.Fatal(err)
	}
	m, ok := s.Member("h2")
	switch {
	case s.Node != "h1" || s.HostIP != netip.MustParseAddr("172.16.254.1") || s.Block != netip.MustParsePrefix("10.244.0.0/23"):
		t.Errorf("node %s at %s with %s", s.Node, s.HostIP, s.Block)
	case s.Ledger.Role != "leader" || s.Encapsulation != "cross-subnet" || len(s.ForwardAccept) != 1 || len(s.ForwardUnhandled) != 1:
		t.Errorf("ledger %+v, encapsulation %q, forward %v %v", s.Ledger, s.Encapsulation, s.ForwardAccept, s.ForwardUnhandled)
	case len(s.NameConflicts) != 1 || s.NameConflicts[0].Nodes[0].HostIP != netip.MustParseAddr("172.16.254.7"):
		t.Errorf("name conflicts %+v", s.NameConflicts)
	case !ok || m.Block != netip.MustParsePrefix("10.244.2.0/23") || m.HostIP != netip.MustParseAddr("172.16.254.2") || !slices.Equal(m.KeptBy, []string{"gossip", "data path"}):
		t.Errorf("member h2 %+v (found %v)", m, ok)
	}
	if err := s.UnmarshalJSON([]byte(`{"node":"h1","hostIP":"not an address","members":[]}`)); err == nil {
		t.Error("a status with an unreadable host address read without error")
	}
}
