package ledger

import (
	"net/netip"
	"testing"
)

func TestAdmissionLimits(t *testing.T) {
	lim := admissionLimits{perMember: 3, members: 10, perStranger: 2, strangers: 5}
	for _, tt := range []struct {
		name                string
		member              bool
		fromSource, ofClass int
		want                string
	}{
		{"first stranger", false, 0, 0, ""},
		{"stranger within its share", false, 1, 4, ""},
		{"stranger over its share", false, 2, 2, "handshake-source-limit"},
		{"strangers' slots full", false, 0, 5, "handshake-busy"},
		{"member while strangers are full", true, 0, 0, ""},
		{"member within its share", true, 2, 9, ""},
		{"member over its share", true, 3, 3, "handshake-source-limit"},
		{"members' slots full", true, 0, 10, "handshake-busy"},
	} {
		if got := lim.admit(tt.member, tt.fromSource, tt.ofClass); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestAdmissionCountsBySourceAndClass(t *testing.T) {
	a := newAdmission(admissionLimits{perMember: 2, members: 3, perStranger: 1, strangers: 2})
	stranger1, stranger2, stranger3 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")
	member1, member2 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	mustAdmit := func(src netip.Addr, member bool) func() {
		t.Helper()
		release, reason := a.acquire(src, member)
		if reason != "" {
			t.Fatalf("%s refused: %s", src, reason)
		}
		return release
	}
	mustRefuse := func(src netip.Addr, member bool, want string) {
		t.Helper()
		if _, reason := a.acquire(src, member); reason != want {
			t.Fatalf("%s: %q, want %q", src, reason, want)
		}
	}
	r1 := mustAdmit(stranger1, false)
	mustRefuse(stranger1, false, "handshake-source-limit")
	mustAdmit(stranger2, false)
	mustRefuse(stranger3, false, "handshake-busy")
	// Members draw on their own slots.
	m1 := mustAdmit(member1, true)
	mustAdmit(member1, true)
	mustRefuse(member1, true, "handshake-source-limit")
	mustAdmit(member2, true)
	mustRefuse(member2, true, "handshake-busy")
	// A release (twice is once) frees the slot and the source's share.
	r1()
	r1()
	mustAdmit(stranger3, false)
	mustRefuse(stranger1, false, "handshake-busy")
	m1()
	mustAdmit(member2, true)
	if a.members != 3 || a.others != 2 {
		t.Fatalf("counts %d members, %d others; want 3, 2", a.members, a.others)
	}
}
