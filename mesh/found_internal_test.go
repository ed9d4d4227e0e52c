package mesh

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/grapevine-net/grapevine/mesh/ledger"
)

func TestBootstrapFounders(t *testing.T) {
	cand := func(name string, id byte, expect int) bootstrapCandidate {
		return bootstrapCandidate{Name: name, ID: ledger.NodeID{id}, Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, id}), 7963), Expect: expect}
	}
	withState := cand("b", 2, 3)
	withState.LedgerState = true
	inLedger := cand("b", 2, 0)
	inLedger.ClusterID = ledger.ClusterID{9}
	for _, tc := range []struct {
		name    string
		self    bootstrapCandidate
		peers   []bootstrapCandidate
		expect  int
		want    []byte // founder IDs, sorted
		wantWhy string
	}{
		{"alone with expect 1", cand("a", 5, 1), nil, 1, []byte{5}, ""},
		{"three met", cand("b", 7, 3), []bootstrapCandidate{cand("c", 3, 3), cand("a", 9, 3)}, 3, []byte{3, 7, 9}, ""},
		{"two of three", cand("a", 1, 3), []bootstrapCandidate{cand("b", 2, 3)}, 3, nil, "2 so far: a, b"},
		{"a joiner is no founder", cand("a", 1, 3), []bootstrapCandidate{cand("b", 2, 3), cand("j", 4, 0)}, 3, nil, "2 so far"},
		{"late extra member: superset", cand("a", 1, 3), []bootstrapCandidate{cand("b", 2, 3), cand("c", 3, 3), cand("d", 4, 3)}, 3, []byte{1, 2, 3, 4}, ""},
		{"a member began founding", cand("a", 1, 3), []bootstrapCandidate{withState, cand("c", 3, 3)}, 3, nil, "member b belongs to a ledger"},
		{"a member has a ledger", cand("a", 1, 3), []bootstrapCandidate{inLedger, cand("c", 3, 3), cand("d", 4, 3)}, 3, nil, "joining it"},
		{"configurations differ", cand("a", 1, 3), []bootstrapCandidate{cand("b", 2, 5), cand("c", 3, 3)}, 3, nil, "member b runs with --bootstrap-expect 5, this node with 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			founders, why := bootstrapFounders(tc.self, tc.peers, tc.expect)
			var got []byte
			for _, f := range founders {
				got = append(got, f.ID[0])
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("founders %v, want %v (why %q)", got, tc.want, why)
			}
			if tc.wantWhy == "" && why != "" || !strings.Contains(why, tc.wantWhy) {
				t.Errorf("why %q, want it to contain %q", why, tc.wantWhy)
			}
		})
	}
}

func TestForeignLedger(t *testing.T) {
	x, y, z := ledger.ClusterID{1}, ledger.ClusterID{2}, ledger.ClusterID{3}
	var none ledger.ClusterID
	for _, tc := range []struct {
		name        string
		own, record ledger.ClusterID
		members     []ledger.ClusterID
		want        ledger.ClusterID
		foreign     bool
	}{
		{"no ledger of its own", none, y, []ledger.ClusterID{y, y}, none, false},
		{"the recorded one", x, x, []ledger.ClusterID{y, y, y}, x, false},
		{"another one recorded", x, y, nil, y, true},
		{"alone against its peers", x, none, []ledger.ClusterID{y, y}, y, true},
		{"one against one decides nothing", x, none, []ledger.ClusterID{y}, none, false},
		{"the cluster's, one foreign member", y, none, []ledger.ClusterID{y, x}, none, false},
		{"shares its ledger with a live member", x, none, []ledger.ClusterID{x, y, y, y}, none, false},
		{"no peer in a ledger", x, none, []ledger.ClusterID{none, none}, none, false},
		{"alone, peers split: the most common", x, none, []ledger.ClusterID{z, y, y, y, z}, y, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, foreign := foreignLedger(tc.own, tc.record, tc.members)
			if got != tc.want || foreign != tc.foreign {
				t.Errorf("foreignLedger = %s, %v; want %s, %v", got, foreign, tc.want, tc.foreign)
			}
		})
	}
}

func TestCheckBootstrapExpect(t *testing.T) {
	for _, tc := range []struct {
		n, voters int
		ok        bool
	}{{0, 3, true}, {1, 1, true}, {3, 3, true}, {5, 5, true}, {2, 3, true}, {5, 3, false}, {-1, 3, false}, {6, 5, false}} {
		if err := CheckBootstrapExpect(tc.n, tc.voters); (err == nil) != tc.ok {
			t.Errorf("CheckBootstrapExpect(%d, %d) = %v", tc.n, tc.voters, err)
		}
	}
}

// TestLedgerPeersKeepLivenessOfRejectedMetadata: a member whose metadata
// this node rejects (a rule only it applies, such as another --pool) still
// reaches the ledger as alive or dead by the node ID gossip knows it by,
// with no address or name to use (issue trace: one agent with another pool
// counted every member dead).
func TestLedgerPeersKeepLivenessOfRejectedMetadata(t *testing.T) {
	valid, rejected, rejectedDead := ledger.NodeID{1}, ledger.NodeID{2}, ledger.NodeID{3}
	bad := reject("pool", "another pool")
	m := &Mesh{peers: map[string]*peer{
		valid.String(): {name: valid.String(), state: Alive, addr: netip.MustParseAddrPort("10.0.0.1:7962"),
			meta: Meta{ID: valid, Name: "a", HostIP: netip.MustParseAddr("10.0.0.1"), LedgerPort: 7963}},
		rejected.String():     {name: rejected.String(), state: Suspect, metaErr: bad},
		rejectedDead.String(): {name: rejectedDead.String(), state: Dead, metaErr: bad},
		"not-an-id":           {name: "not-an-id", state: Alive, metaErr: bad},
	}}
	got := m.ledgerPeers()
	slices.SortFunc(got, func(a, b ledger.Peer) int { return strings.Compare(a.ID.String(), b.ID.String()) })
	want := []ledger.Peer{
		{ID: valid, Name: "a", Addr: netip.MustParseAddrPort("10.0.0.1:7963"), HostIP: netip.MustParseAddr("10.0.0.1"), Alive: true},
		{ID: rejected, Alive: true},
		{ID: rejectedDead, Alive: false},
	}
	if !slices.Equal(got, want) {
		t.Errorf("ledgerPeers:\n got %+v\nwant %+v", got, want)
	}
}

func TestRecordFounders(t *testing.T) {
	founder := func(id byte) ledger.Founder {
		return ledger.Founder{ID: ledger.NodeID{id}, Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, id}), 7963)}
	}
	reader := func(id byte) recordCandidate { return recordCandidate{Founder: founder(id), FoundsByRecord: true} }
	withState := reader(4)
	withState.LedgerState = true
	inLedger := reader(5)
	inLedger.ClusterID = ledger.ClusterID{9}
	notReader := reader(6)
	notReader.FoundsByRecord = false
	for _, tc := range []struct {
		name   string
		self   byte
		peers  []recordCandidate
		voters int
		want   []byte // founder IDs, sorted
	}{
		{"alone", 5, nil, 5, []byte{5}},
		{"three readers", 7, []recordCandidate{reader(3), reader(9)}, 5, []byte{3, 7, 9}},
		{"no ledger state, no ledger, reads the record",
			2, []recordCandidate{reader(3), withState, inLedger, notReader}, 5, []byte{2, 3}},
		{"at most the voters, lowest IDs", 9, []recordCandidate{reader(8), reader(1), reader(7), reader(3), reader(2), reader(5)}, 5, []byte{1, 2, 3, 5, 9}},
		{"itself always, lowest first", 1, []recordCandidate{reader(8), reader(7), reader(3), reader(2), reader(5)}, 3, []byte{1, 2, 3}},
		{"itself among the peers counts once", 3, []recordCandidate{reader(3), reader(2)}, 5, []byte{2, 3}},
		{"one voter", 4, []recordCandidate{reader(1)}, 1, []byte{4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			founders := recordFounders(founder(tc.self), tc.peers, tc.voters)
			var got []byte
			for _, f := range founders {
				got = append(got, f.ID[0])
				if f != founder(f.ID[0]) {
					t.Errorf("founder %v, want %v", f, founder(f.ID[0]))
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("founders %v, want %v", got, tc.want)
			}
		})
	}
}
