package bench

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 200; i++ {
		d = append(d, time.Duration(201-i)*time.Millisecond)
	}
	for _, tt := range []struct {
		p    float64
		want time.Duration
	}{{50, 100 * time.Millisecond}, {99, 198 * time.Millisecond}, {100, 200 * time.Millisecond}, {0, time.Millisecond}} {
		if got := percentile(d, tt.p); got != tt.want {
			t.Errorf("p%v = %v, want %v", tt.p, got, tt.want)
		}
	}
	if got := median([]time.Duration{4, 1, 3, 2}); got != 2 {
		t.Errorf("median of 1..4 = %v, want 2 (integer mean of 2 and 3)", got)
	}
	if got := percentile(nil, 50); got != 0 {
		t.Errorf("p50 of nothing = %v", got)
	}
}

func TestJudge(t *testing.T) {
	for _, tt := range []struct {
		name string
		row  Row
		want *bool
	}{
		{"at most, met", Row{Value: 0.2, Target: Target{Kind: AtMost, Limit: 0.3}}, ptr(true)},
		{"at most, missed", Row{Value: 0.4, Target: Target{Kind: AtMost, Limit: 0.3}}, ptr(false)},
		{"ratio below", Row{Value: 7, Peer: &Peer{Value: 10}, Target: Target{Kind: AtMostPeer, Limit: 0.75}}, ptr(true)},
		{"ratio above", Row{Value: 8, Peer: &Peer{Value: 10}, Target: Target{Kind: AtMostPeer, Limit: 0.75}}, ptr(false)},
		{"at least", Row{Value: 9.6, Peer: &Peer{Value: 10}, Target: Target{Kind: AtLeastPeer, Limit: 0.95}}, ptr(true)},
		{"at least, missed", Row{Value: 9, Peer: &Peer{Value: 10}, Target: Target{Kind: AtLeastPeer, Limit: 0.95}}, ptr(false)},
		{"peer without a value", Row{Value: 9, Peer: &Peer{Text: "never"}, Target: Target{Kind: AtMostPeer, Limit: 1}}, nil},
		{"no target", Row{Value: 1}, nil},
		{"not measured: never judged", Row{NotMeasured: "not measured", Target: Target{Kind: AtMost, Limit: 2}}, nil},
		{"not measured, a bound that missed", Row{NotMeasured: "> 1m30s", Pass: ptr(false), Target: Target{Kind: AtMost, Limit: 15}}, ptr(false)},
	} {
		tt.row.judge()
		if (tt.row.Pass == nil) != (tt.want == nil) || (tt.want != nil && *tt.row.Pass != *tt.want) {
			t.Errorf("%s: pass %v, want %v", tt.name, deref(tt.row.Pass), deref(tt.want))
		}
	}
}

func ptr(b bool) *bool { return &b }

func deref(b *bool) any {
	if b == nil {
		return nil
	}
	return *b
}

func TestSortRowsByNumber(t *testing.T) {
	rep := &Report{Rows: []Row{{ID: "10a"}, {ID: "9"}, {ID: "5a-1000"}, {ID: "2b"}, {ID: "5b-64"}, {ID: "1f"}, {ID: "5a-64"}, {ID: "10b"}, {ID: "2a"}, {ID: "5a-256"}}}
	rep.SortRows()
	var got []string
	for _, r := range rep.Rows {
		got = append(got, r.ID)
	}
	if want := "1f 2a 2b 5a-64 5a-256 5a-1000 5b-64 9 10a 10b"; strings.Join(got, " ") != want {
		t.Fatalf("order %v, want %s", got, want)
	}
}

// rotate gives two chains ABBA order and more chains each the first place
// in turn, every chain once per pod.
func TestRotate(t *testing.T) {
	a, b, c := &cniChain{name: "a"}, &cniChain{name: "b"}, &cniChain{name: "c"}
	names := func(cs []*cniChain) string {
		s := ""
		for _, x := range cs {
			s += x.name
		}
		return s
	}
	var got []string
	for i := range 4 {
		got = append(got, names(rotate([]*cniChain{a, b}, i)))
	}
	for i := range 4 {
		got = append(got, names(rotate([]*cniChain{a, b, c}, i)))
	}
	want := []string{"ab", "ba", "ab", "ba", "abc", "bca", "cab", "abc"}
	if !slices.Equal(got, want) {
		t.Errorf("rotations %v, want %v", got, want)
	}
}
