package ledger

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"testing"
)

var (
	testPool = netip.MustParsePrefix("10.244.0.0/22") // four /24 blocks
	idA      = NodeID{1}
	idB      = NodeID{2}
	idC      = NodeID{3}
	idD      = NodeID{4}
	idE      = NodeID{5}
	ipA      = netip.MustParseAddr("192.0.2.1")
	ipB      = netip.MustParseAddr("192.0.2.2")
	cluster1 = ClusterID{9}
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func foundedState() State {
	var s State
	if r := s.Apply(1, Found{ClusterID: cluster1, Pool: testPool, BlockBits: 24}); r.Err != nil {
		panic(r.Err)
	}
	return s
}

func TestStateApply(t *testing.T) {
	type step struct {
		cmd       Command
		wantBlock netip.Prefix // zero: any block (checked to be in the pool)
		wantErr   error
	}
	tests := []struct {
		name  string
		start func() State
		steps []step
		want  map[netip.Prefix]Owner // nil: not checked
	}{
		{
			name:  "claim before found",
			start: func() State { return State{} },
			steps: []step{{cmd: Claim{ID: idA, Name: "a", HostIP: ipA}, wantErr: ErrNotFounded}},
			want:  map[netip.Prefix]Owner{},
		},
		{
			name:  "found twice",
			start: foundedState,
			steps: []step{{cmd: Found{ClusterID: ClusterID{7}, Pool: testPool, BlockBits: 24}, wantErr: ErrBadRequest}},
		},
		{
			name:  "found with a block larger than the pool",
			start: func() State { return State{} },
			steps: []step{{cmd: Found{ClusterID: cluster1, Pool: testPool, BlockBits: 21}, wantErr: ErrBadRequest}},
		},
		{
			name:  "claim with hint",
			start: foundedState,
			steps: []step{{cmd: Claim{ID: idA, Name: "a", HostIP: ipA, Hint: pfx("10.244.2.0/24")}, wantBlock: pfx("10.244.2.0/24")}},
			want:  map[netip.Prefix]Owner{pfx("10.244.2.0/24"): {ID: idA, Name: "a", HostIP: ipA, Index: 2}},
		},
		{
			name:  "double claim of one block: second claimant gets another",
			start: foundedState,
			steps: []step{
				{cmd: Claim{ID: idA, Name: "a", HostIP: ipA, Hint: pfx("10.244.1.0/24")}, wantBlock: pfx("10.244.1.0/24")},
				{cmd: Claim{ID: idB, Name: "b", HostIP: ipB, Hint: pfx("10.244.1.0/24")}},
			},
		},
		{
			name:  "claim by the same ID is idempotent and updates name and host IP",
			start: foundedState,
			steps: []step{
				{cmd: Claim{ID: idA, Name: "a", HostIP: ipA, Hint: pfx("10.244.1.0/24")}, wantBlock: pfx("10.244.1.0/24")},
				{cmd: Claim{ID: idA, Name: "a2", HostIP: ipB, Hint: pfx("10.244.3.0/24")}, wantBlock: pfx("10.244.1.0/24")},
			},
			want: map[netip.Prefix]Owner{pfx("10.244.1.0/24"): {ID: idA, Name: "a2", HostIP: ipB, Index: 2}},
		},
		{
			name:  "hints outside the pool, misaligned or of another size are ignored",
			start: foundedState,
			steps: []step{
				{cmd: Claim{ID: idA, Name: "a", HostIP: ipA, Hint: pfx("10.245.0.0/24")}},
				{cmd: Claim{ID: idB, Name: "b", HostIP: ipA, Hint: pfx("10.244.1.0/23")}},
				{cmd: Claim{ID: idC, Name: "c", HostIP: ipA, Hint: netip.PrefixFrom(netip.MustParseAddr("10.244.1.7"), 24)}},
			},
		},
		{
			name:  "exhausted",
			start: foundedState,
			steps: []step{
				{cmd: Claim{ID: idA, Name: "a", HostIP: ipA}},
				{cmd: Claim{ID: idB, Name: "b", HostIP: ipA}},
				{cmd: Claim{ID: idC, Name: "c", HostIP: ipA}},
				{cmd: Claim{ID: idD, Name: "d", HostIP: ipA}},
				{cmd: Claim{ID: idE, Name: "e", HostIP: ipA}, wantErr: ErrPoolExhausted},
			},
		},
		{
			name:  "malformed claimants are refused",
			start: foundedState,
			steps: []step{
				{cmd: Claim{Name: "zero-id", HostIP: ipA}, wantErr: ErrBadRequest},
				{cmd: Claim{ID: idA, Name: "", HostIP: ipA}, wantErr: ErrBadRequest},
				{cmd: Claim{ID: idA, Name: "has space", HostIP: ipA}, wantErr: ErrBadRequest},
				{cmd: Claim{ID: idA, Name: "a"}, wantErr: ErrBadRequest},
			},
			want: map[netip.Prefix]Owner{},
		},
		{
			name:  "release CAS: only the owner's ID frees the block",
			start: foundedState,
			steps: []step{
				{cmd: Claim{ID: idA, Name: "a", HostIP: ipA, Hint: pfx("10.244.0.0/24")}, wantBlock: pfx("10.244.0.0/24")},
				{cmd: Release{Block: pfx("10.244.0.0/24"), OwnerID: idB}, wantBlock: pfx("10.244.0.0/24"), wantErr: ErrNotOwner},
				{cmd: Release{Block: pfx("10.244.1.0/24"), OwnerID: idA}, wantBlock: pfx("10.244.1.0/24"), wantErr: ErrNotOwner},
				{cmd: Release{Block: pfx("10.244.0.0/24"), OwnerID: idA}, wantBlock: pfx("10.244.0.0/24")},
				{cmd: Release{Block: pfx("10.244.0.0/24"), OwnerID: idA}, wantBlock: pfx("10.244.0.0/24"), wantErr: ErrNotOwner},
			},
			want: map[netip.Prefix]Owner{},
		},
		{
			name:  "reclaim CAS: a stale index frees nothing",
			start: foundedState,
			steps: []step{
				{cmd: Claim{ID: idA, Name: "a", HostIP: ipA, Hint: pfx("10.244.0.0/24")}, wantBlock: pfx("10.244.0.0/24")},
				{cmd: Release{Block: pfx("10.244.0.0/24"), OwnerID: idA}, wantBlock: pfx("10.244.0.0/24")},
				{cmd: Claim{ID: idA, Name: "a", HostIP: ipA, Hint: pfx("10.244.0.0/24")}, wantBlock: pfx("10.244.0.0/24")},
				// decided when the block was assigned at index 2; it was reassigned at index 4
				{cmd: Reclaim{Block: pfx("10.244.0.0/24"), OwnerID: idA, OwnerIndex: 2}, wantBlock: pfx("10.244.0.0/24"), wantErr: ErrNotOwner},
				{cmd: Reclaim{Block: pfx("10.244.0.0/24"), OwnerID: idB, OwnerIndex: 4}, wantBlock: pfx("10.244.0.0/24"), wantErr: ErrNotOwner},
				{cmd: Reclaim{Block: pfx("10.244.0.0/24"), OwnerID: idA, OwnerIndex: 4}, wantBlock: pfx("10.244.0.0/24")},
			},
			want: map[netip.Prefix]Owner{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.start()
			for i, st := range tt.steps {
				r := s.Apply(uint64(i+2), st.cmd)
				if !errors.Is(r.Err, st.wantErr) || (st.wantErr == nil && r.Err != nil) {
					t.Fatalf("step %d %#v: err %v, want %v", i, st.cmd, r.Err, st.wantErr)
				}
				if st.wantBlock.IsValid() && r.Block != st.wantBlock {
					t.Fatalf("step %d: block %s, want %s", i, r.Block, st.wantBlock)
				}
				if _, isClaim := st.cmd.(Claim); isClaim && r.Err == nil && !s.isBlock(r.Block) {
					t.Fatalf("step %d: claimed %s is not a block of %s", i, r.Block, s.Pool)
				}
				checkInvariants(t, &s)
			}
			if tt.want != nil && !reflect.DeepEqual(s.Blocks, tt.want) {
				t.Fatalf("blocks %v, want %v", s.Blocks, tt.want)
			}
		})
	}
}

// checkInvariants: every block is a block of the pool and no ID holds two.
func checkInvariants(t *testing.T, s *State) {
	t.Helper()
	seen := map[NodeID]netip.Prefix{}
	for b, o := range s.Blocks {
		if !s.isBlock(b) {
			t.Fatalf("%s held by %s is not a block of %s", b, o.Name, s.Pool)
		}
		if prev, dup := seen[o.ID]; dup {
			t.Fatalf("node %s holds %s and %s", o.ID, prev, b)
		}
		seen[o.ID] = b
	}
}

// TestNameKeptFrom: a node name held by a live node is refused to any
// other node ID, unless that ID holds a block under the name itself (two
// holders after a partition: neither is cut off).
func TestNameKeptFrom(t *testing.T) {
	held := func(owners ...Owner) State {
		s := State{Blocks: map[netip.Prefix]Owner{}}
		for i, o := range owners {
			s.Blocks[netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24)] = o
		}
		return s
	}
	a, b := Owner{ID: idA, Name: "c", HostIP: ipA}, Owner{ID: idB, Name: "c", HostIP: ipB}
	all := func(NodeID) bool { return true }
	onlyB := func(id NodeID) bool { return id == idB }
	for _, tc := range []struct {
		name  string
		st    State
		claim string
		id    NodeID
		alive func(NodeID) bool
		want  NodeID // zero: not kept from it
	}{
		{"the holder renews", held(a), "c", idA, all, NodeID{}},
		{"another ID under a live holder's name", held(a), "c", idC, all, idA},
		{"another ID once the holder is dead (a reinstalled host)", held(a), "c", idC, onlyB, NodeID{}},
		{"first of two live holders of one name renews", held(a, b), "c", idA, all, NodeID{}},
		{"second of two live holders of one name renews", held(a, b), "c", idB, all, NodeID{}},
		{"a third ID under a name two hold, one live", held(a, b), "c", idC, onlyB, idB},
		{"a holder renaming itself to a live holder's name", held(a, Owner{ID: idC, Name: "x", HostIP: ipB}), "c", idC, all, idA},
		{"a free name", held(a), "d", idC, all, NodeID{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, kept := tc.st.NameKeptFrom(tc.claim, tc.id, tc.alive)
			if kept != !tc.want.IsZero() || o.ID != tc.want {
				t.Fatalf("NameKeptFrom = %+v, %v; want kept by %v", o, kept, tc.want)
			}
		})
	}
}

func TestClaimSpreadsSimultaneousClaimants(t *testing.T) {
	// Claims with no hint are spread by ID; the result depends only on
	// the state and the ID, so every replica agrees.
	s := State{}
	s.Apply(1, Found{ClusterID: cluster1, Pool: pfx("10.0.0.0/16"), BlockBits: 24})
	s2 := s.Clone()
	for i := 0; i < 50; i++ {
		id := NodeID{byte(i), 0xaa}
		r1 := s.Apply(uint64(i+2), Claim{ID: id, Name: fmt.Sprint("n", i), HostIP: ipA})
		r2 := s2.Apply(uint64(i+2), Claim{ID: id, Name: fmt.Sprint("n", i), HostIP: ipA})
		if r1 != r2 {
			t.Fatalf("replicas disagree: %v vs %v", r1, r2)
		}
	}
	if !reflect.DeepEqual(s, s2) {
		t.Fatal("replicas diverged")
	}
	// the first choice of two fresh claimants differs for most pairs
	fresh := State{}
	fresh.Apply(1, Found{ClusterID: cluster1, Pool: pfx("10.0.0.0/16"), BlockBits: 24})
	same := 0
	for i := 0; i < 100; i++ {
		a, _ := fresh.freeBlock(NodeID{byte(i), 1}, netip.Prefix{})
		b, _ := fresh.freeBlock(NodeID{byte(i), 2}, netip.Prefix{})
		if a == b {
			same++
		}
	}
	if same > 10 {
		t.Fatalf("%d of 100 claimant pairs want the same block of 256", same)
	}
}

func TestNthBlock(t *testing.T) {
	tests := []struct {
		pool netip.Prefix
		bits int
		i    uint64
		want netip.Prefix
	}{
		{pfx("10.244.0.0/16"), 23, 0, pfx("10.244.0.0/23")},
		{pfx("10.244.0.0/16"), 23, 1, pfx("10.244.2.0/23")},
		{pfx("10.244.0.0/16"), 23, 127, pfx("10.244.254.0/23")},
		{pfx("10.0.0.0/8"), 28, 1<<20 - 1, pfx("10.255.255.240/28")},
		{pfx("fd00::/48"), 64, 65535, pfx("fd00:0:0:ffff::/64")},
		{pfx("fd00::/104"), 120, 3, pfx("fd00::300/120")},
		{pfx("fd00::/56"), 72, 0x1ff, pfx("fd00:0:0:1:ff00::/72")},
	}
	for _, tt := range tests {
		if got := nthBlock(tt.pool, tt.bits, tt.i); got != tt.want {
			t.Errorf("nthBlock(%s, /%d, %d) = %s, want %s", tt.pool, tt.bits, tt.i, got, tt.want)
		}
	}
}

func TestCommandRoundTrip(t *testing.T) {
	cmds := []Command{
		Found{ClusterID: cluster1, Pool: testPool, BlockBits: 24},
		Claim{ID: idA, Name: "a", HostIP: ipA, Hint: pfx("10.244.1.0/24")},
		Claim{ID: idA, Name: "a", HostIP: ipA},
		Release{Block: pfx("10.244.1.0/24"), OwnerID: idB},
		Reclaim{Block: pfx("10.244.1.0/24"), OwnerID: idB, OwnerIndex: 1 << 60},
	}
	for _, c := range cmds {
		b, err := encodeCommand(c)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeCommand(b)
		if err != nil {
			t.Fatalf("decode %s: %v", b, err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Fatalf("round trip %#v -> %s -> %#v", c, b, got)
		}
	}
	for _, bad := range []string{
		``, `{}`, `null`, `{"v":2,"op":"claim","claim":{}}`, `{"v":1,"op":"steal","claim":{}}`,
		`{"v":1,"op":"claim"}`, `{"v":1,"op":"claim","release":{}}`,
		`{"v":1,"op":"claim","claim":{},"release":{}}`, `{"v":1,"op":"claim","claim":{"Evil":1}}`,
		`{"v":1,"op":"claim","claim":{}} {}`, `{"v":1,"op":"claim","claim":{"ID":"zz"}}`,
	} {
		if _, err := decodeCommand([]byte(bad)); !errors.Is(err, ErrBadRequest) {
			t.Errorf("decode %q: err %v, want ErrBadRequest", bad, err)
		}
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	s := foundedState()
	s.Apply(2, Claim{ID: idA, Name: "a", HostIP: ipA, Hint: pfx("10.244.1.0/24")})
	s.Apply(3, Claim{ID: idB, Name: "b", HostIP: ipB})
	b, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got State
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, s) {
		t.Fatalf("restored %+v, want %+v", got, s)
	}
	b2, _ := got.MarshalBinary()
	if string(b2) != string(b) {
		t.Fatal("encoding is not canonical")
	}
	var empty State
	eb, _ := (&State{}).MarshalBinary()
	if err := empty.UnmarshalBinary(eb); err != nil || empty.Founded() {
		t.Fatalf("empty state round trip: %v %+v", err, empty)
	}

	bad := []string{
		`{"v":1,"cluster":"0900000000000000","pool":"10.244.0.0/22","bits":24,"blocks":[{"b":"10.244.0.0/24","id":"01000000000000000000000000000000","n":"a","ip":"192.0.2.1","i":2},{"b":"10.244.1.0/24","id":"01000000000000000000000000000000","n":"a","ip":"192.0.2.1","i":3}]}`,
		`{"v":1,"cluster":"0900000000000000","pool":"10.244.0.0/22","bits":24,"blocks":[{"b":"10.245.0.0/24","id":"01000000000000000000000000000000","n":"a","ip":"192.0.2.1","i":2}]}`,
		`{"v":1,"cluster":"0900000000000000","pool":"10.244.0.0/22","bits":24,"blocks":[{"b":"10.244.0.0/24","id":"01000000000000000000000000000000","n":"a","ip":"192.0.2.1","i":2},{"b":"10.244.0.0/24","id":"02000000000000000000000000000000","n":"b","ip":"192.0.2.1","i":3}]}`,
		`{"v":1,"cluster":"0900000000000000","pool":"10.244.0.0/22","bits":8,"blocks":[]}`,
		`{"v":1,"cluster":"0900000000000000","pool":"","bits":0,"blocks":[{"b":"10.244.0.0/24","id":"01000000000000000000000000000000","n":"a","ip":"192.0.2.1","i":2}]}`,
		`{"v":3}`, `garbage`,
	}
	for _, in := range bad {
		var st State
		if err := st.UnmarshalBinary([]byte(in)); err == nil {
			t.Errorf("accepted bad snapshot %s", in)
		}
	}
}

// TestStateSizeBounded: the state holds one small record per block held and
// nothing else, at 1,000 nodes and after 10,000 name churn events.
func TestStateSizeBounded(t *testing.T) {
	s := State{}
	s.Apply(1, Found{ClusterID: cluster1, Pool: pfx("10.0.0.0/8"), BlockBits: 22}) // 4096 blocks
	idx := uint64(1)
	next := func() uint64 { idx++; return idx }
	for i := 0; i < 1000; i++ {
		id := NodeID{byte(i >> 8), byte(i), 0x11}
		if r := s.Apply(next(), Claim{ID: id, Name: fmt.Sprintf("worker-%04d.cluster.example", i), HostIP: netip.AddrFrom4([4]byte{192, 168, byte(i >> 8), byte(i)})}); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	enc, _ := s.MarshalBinary()
	at1000 := len(enc)
	const perNode = 160 // bytes of snapshot per node holding a block
	if at1000 > 1000*perNode {
		t.Fatalf("state at 1,000 nodes is %d bytes, want <= %d", at1000, 1000*perNode)
	}
	t.Logf("state at 1,000 nodes: %d bytes (%d per node)", at1000, at1000/1000)

	// 10,000 churn events: nodes renamed in place (same ID), and nodes
	// replaced by new IDs under the same name, the old one released or
	// reclaimed. The record count stays 1,000.
	for e := 0; e < 10000; e++ {
		i := e % 1000
		id := NodeID{byte(i >> 8), byte(i), 0x11}
		block, owner, ok := s.BlockOf(id)
		if !ok {
			t.Fatalf("node %d lost its block", i)
		}
		switch e % 3 {
		case 0: // rename in place
			if r := s.Apply(next(), Claim{ID: id, Name: fmt.Sprintf("renamed-%05d.cluster.example", e), HostIP: owner.HostIP}); r.Err != nil || r.Block != block {
				t.Fatalf("rename: %v", r)
			}
		case 1: // reinstalled host: new ID, old block released by the operator
			if r := s.Apply(next(), Release{Block: block, OwnerID: id}); r.Err != nil {
				t.Fatal(r.Err)
			}
			if r := s.Apply(next(), Claim{ID: id, Name: owner.Name, HostIP: owner.HostIP}); r.Err != nil {
				t.Fatal(r.Err)
			}
		case 2: // dead host reclaimed, comes back
			if r := s.Apply(next(), Reclaim{Block: block, OwnerID: id, OwnerIndex: owner.Index}); r.Err != nil {
				t.Fatal(r.Err)
			}
			if r := s.Apply(next(), Claim{ID: id, Name: owner.Name, HostIP: owner.HostIP}); r.Err != nil {
				t.Fatal(r.Err)
			}
		}
	}
	checkInvariants(t, &s)
	if len(s.Blocks) != 1000 {
		t.Fatalf("%d records after churn, want 1000", len(s.Blocks))
	}
	enc, _ = s.MarshalBinary()
	if len(enc) > 1000*perNode {
		t.Fatalf("state after 10,000 churn events is %d bytes, want <= %d", len(enc), 1000*perNode)
	}
	t.Logf("state after 10,000 churn events: %d bytes", len(enc))
}
