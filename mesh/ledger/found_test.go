package ledger

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

func TestFirstConfiguration(t *testing.T) {
	a, b, c := NodeID{1}, NodeID{2}, NodeID{3}
	at := func(id NodeID) Founder {
		return Founder{ID: id, Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, id[0]}), 7963)}
	}
	for _, tc := range []struct {
		name     string
		self     NodeID
		founders []Founder
		want     []NodeID
		err      string
	}{
		{"sorted by ID whatever the order", b, []Founder{at(c), at(a), at(b)}, []NodeID{a, b, c}, ""},
		{"alone", a, []Founder{at(a)}, []NodeID{a}, ""},
		{"without this node", a, []Founder{at(b), at(c)}, nil, "not among the 2 founders"},
		{"twice", a, []Founder{at(a), at(b), at(b)}, nil, "listed twice"},
		{"no address", a, []Founder{at(a), {ID: b}}, nil, "is not a node's address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf, err := firstConfiguration(tc.self, tc.founders)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []NodeID
			for _, s := range conf.Servers {
				if s.Suffrage != raft.Voter {
					t.Errorf("%s is not a voter", s.ID)
				}
				id, _ := ParseNodeID(string(s.ID))
				got = append(got, id)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("servers %v, want %v", got, tc.want)
			}
		})
	}
}

// TestBootstrapRefusesWithState: a node that founded (or joined) a ledger
// never founds another, and the Found entry carries the cluster ID given to
// Bootstrap.
func TestBootstrapRefusesWithState(t *testing.T) {
	n := startTCP(t, "a", nil, false, netip.MustParsePrefix("10.244.0.0/16"))
	want := NewClusterID()
	self := []Founder{{ID: n.l.ID(), Addr: n.l.Addr()}}
	if err := n.l.Bootstrap(t.Context(), self, want); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitLong, "founded", func() bool { st, _ := n.l.State(); return st.Founded() })
	if st, _ := n.l.State(); st.ClusterID != want {
		t.Errorf("founded ledger %s, want the recorded %s", st.ClusterID, want)
	}
	if err := n.l.Bootstrap(t.Context(), self, NewClusterID()); !errors.Is(err, ErrHasState) {
		t.Errorf("second Bootstrap = %v, want ErrHasState", err)
	}
}
