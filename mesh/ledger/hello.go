package ledger

import (
	"bytes"
	"errors"
	"fmt"
)

// Every ledger connection, raft or RPC, starts (inside TLS) with a hello
// from the dialling side and an answer from the listening side, each of
// helloSize bytes:
//
//	"GVL" | version | kind (hello) or status (answer) | cluster ID (8) | node ID (16)
//
// The hello says what the connection carries and which ledger and node it
// comes from; the answer says whether the listener takes it and which
// ledger and node it is. A connection between two ledgers (both cluster
// IDs set and different) is refused on both sides, so the raft layer of
// one ledger never reaches the replica of another that shares the key. A
// node in no ledger yet (zero cluster ID) talks to anyone with the key:
// the leader adding it must reach it before it has the Found entry.
//
// Like the RPC frames the format is strict: another magic or version is
// refused, never guessed at. Its first byte is not a mux byte of the
// format before it ('R', 'L'), so a node of either version refuses the
// other's connections as malformed instead of misreading them.
const (
	helloMagic   = "GVL"
	helloVersion = 1
	helloSize    = len(helloMagic) + 2 + len(ClusterID{}) + len(NodeID{})
)

// Answer statuses.
const (
	helloOK         byte = 0
	helloForeign    byte = 'F' // the two sides belong to different ledgers
	helloBadVersion byte = 'V' // the listener speaks another version
	helloMalformed  byte = 'M' // unknown kind or zero node ID
)

// hello is one side's half of the preamble; code is the kind in a hello
// and the status in an answer.
type hello struct {
	version byte
	code    byte
	cluster ClusterID
	node    NodeID
}

var (
	errHelloMagic   = errors.New("not a ledger hello (another transport or an older version)")
	errHelloVersion = errors.New("ledger transport version differs")
)

func (h hello) encode() []byte {
	b := make([]byte, 0, helloSize)
	b = append(b, helloMagic...)
	b = append(b, h.version, h.code)
	b = append(b, h.cluster[:]...)
	return append(b, h.node[:]...)
}

// decodeHello parses helloSize bytes; whatever they are, it returns an
// error rather than a hello of another version.
func decodeHello(b []byte) (hello, error) {
	if len(b) != helloSize || !bytes.HasPrefix(b, []byte(helloMagic)) {
		return hello{}, errHelloMagic
	}
	h := hello{version: b[3], code: b[4]}
	copy(h.cluster[:], b[5:])
	copy(h.node[:], b[5+len(h.cluster):])
	if h.version != helloVersion {
		return h, fmt.Errorf("%w: peer speaks %d, this node %d", errHelloVersion, h.version, helloVersion)
	}
	return h, nil
}

// foreign reports whether two cluster IDs name two different ledgers; a
// zero ID (a node in no ledger yet) is foreign to none.
func foreign(a, b ClusterID) bool {
	return !a.IsZero() && !b.IsZero() && a != b
}

// helloVerdict is the listener's decision on a well-formed hello of its
// version: the status to answer and, unless helloOK, the reason counted.
func helloVerdict(local ClusterID, h hello) (status byte, reason string) {
	switch {
	case h.code != muxRaft && h.code != muxRPC:
		return helloMalformed, "mux"
	case h.node.IsZero():
		return helloMalformed, "hello"
	case foreign(local, h.cluster):
		return helloForeign, "foreign-cluster"
	}
	return helloOK, ""
}

// answerError is the dialling side's reading of the listener's answer: nil
// if the connection may be used.
func answerError(local ClusterID, addr string, a hello) error {
	switch a.code {
	case helloOK:
	case helloForeign:
		return fmt.Errorf("%w: the ledger node at %s belongs to ledger %s, this node to ledger %s", ErrForeignCluster, addr, a.cluster, local)
	case helloBadVersion:
		return fmt.Errorf("ledger node at %s refused this node's transport version %d", addr, helloVersion)
	case helloMalformed:
		return fmt.Errorf("ledger node at %s refused this node's hello as malformed", addr)
	default:
		return fmt.Errorf("ledger node at %s answered with unknown status %d", addr, a.code)
	}
	if a.node.IsZero() {
		return fmt.Errorf("ledger node at %s answered with a zero node ID", addr)
	}
	// A listener that accepted a connection from another ledger is
	// refused from this side all the same.
	if foreign(local, a.cluster) {
		return fmt.Errorf("%w: the ledger node at %s belongs to ledger %s, this node to ledger %s", ErrForeignCluster, addr, a.cluster, local)
	}
	return nil
}
