package ledger

import (
	"net/netip"
	"sync"
)

// The ledger port admits peers before strangers. A connection that has not
// yet finished TLS and the hello ("unauthenticated") costs a goroutine and
// a slot until handshakeTimeout; without the key, that is all a host can
// make the port spend. Members of gossip (by host IP or ledger address, as
// SetPeers gives them) draw on their own slots, so any number of idle
// connections from non-members cannot lock a member out of joining or
// claiming; each source gets a share of its class, so one host, member or
// not, cannot take all of it.
type admissionLimits struct {
	perMember, members     int // unauthenticated from one member address / from all members
	perStranger, strangers int // the same for addresses gossip does not know
}

// defaultAdmission: a member opens at most a handful of ledger connections
// at once (raft's pool of 3 per peer, pipelining, one per RPC); a node not
// yet known to gossip needs one or two to ask to join.
var defaultAdmission = admissionLimits{perMember: 16, members: 256, perStranger: 4, strangers: 32}

// admit decides on one new connection given how many unauthenticated
// connections its source and its class already hold: "" to admit it, else
// the reason it is refused (counted as such).
func (lim admissionLimits) admit(member bool, fromSource, ofClass int) string {
	perSource, class := lim.perStranger, lim.strangers
	if member {
		perSource, class = lim.perMember, lim.members
	}
	switch {
	case fromSource >= perSource:
		return "handshake-source-limit"
	case ofClass >= class:
		return "handshake-busy"
	}
	return ""
}

// admission counts the unauthenticated connections by source and class.
type admission struct {
	lim admissionLimits

	mu       sync.Mutex
	bySource map[netip.Addr]int
	members  int
	others   int
}

func newAdmission(lim admissionLimits) *admission {
	return &admission{lim: lim, bySource: map[netip.Addr]int{}}
}

// acquire takes a slot for a connection from src; release gives it back
// once the connection is authenticated or closed. reason is non-empty (and
// release nil) when the connection is refused.
func (a *admission) acquire(src netip.Addr, member bool) (release func(), reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	class := &a.others
	if member {
		class = &a.members
	}
	if reason := a.lim.admit(member, a.bySource[src], *class); reason != "" {
		return nil, reason
	}
	a.bySource[src]++
	*class++
	var once sync.Once
	return func() {
		once.Do(func() {
			a.mu.Lock()
			defer a.mu.Unlock()
			*class--
			if a.bySource[src]--; a.bySource[src] <= 0 {
				delete(a.bySource, src)
			}
		})
	}, ""
}
