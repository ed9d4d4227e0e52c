package ledger

import (
	"errors"
	"testing"
)

func TestHelloRoundTripAndStrictness(t *testing.T) {
	h := hello{version: helloVersion, code: muxRaft, cluster: ClusterID{1, 2, 3}, node: NodeID{4, 5, 6}}
	b := h.encode()
	if len(b) != helloSize {
		t.Fatalf("hello of %d bytes, want %d", len(b), helloSize)
	}
	got, err := decodeHello(b)
	if err != nil || got != h {
		t.Fatalf("decode(encode(h)) = %+v, %v", got, err)
	}
	newer := h
	newer.version = helloVersion + 1
	for name, tt := range map[string]struct {
		b    []byte
		want error
	}{
		"old mux byte first": {append([]byte{muxRaft}, b[1:]...), errHelloMagic},
		"short":              {b[:helloSize-1], errHelloMagic},
		"long":               {append(b, 0), errHelloMagic},
		"other version":      {newer.encode(), errHelloVersion},
		"garbage":            {make([]byte, helloSize), errHelloMagic},
	} {
		if _, err := decodeHello(tt.b); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", name, err, tt.want)
		}
	}
}

func TestHelloVerdict(t *testing.T) {
	ledgerA, ledgerB := ClusterID{0xa}, ClusterID{0xb}
	node := NodeID{1}
	for _, tt := range []struct {
		name       string
		local      ClusterID
		h          hello
		wantStatus byte
		wantReason string
	}{
		{"same ledger", ledgerA, hello{code: muxRaft, cluster: ledgerA, node: node}, helloOK, ""},
		{"RPC from a node in no ledger", ledgerA, hello{code: muxRPC, node: node}, helloOK, ""},
		{"leader dialling a node in no ledger", ClusterID{}, hello{code: muxRaft, cluster: ledgerA, node: node}, helloOK, ""},
		{"raft from another ledger", ledgerA, hello{code: muxRaft, cluster: ledgerB, node: node}, helloForeign, "foreign-cluster"},
		{"RPC from another ledger", ledgerB, hello{code: muxRPC, cluster: ledgerA, node: node}, helloForeign, "foreign-cluster"},
		{"unknown kind", ledgerA, hello{code: 'X', cluster: ledgerA, node: node}, helloMalformed, "mux"},
		{"zero node ID", ledgerA, hello{code: muxRaft, cluster: ledgerA}, helloMalformed, "hello"},
	} {
		status, reason := helloVerdict(tt.local, tt.h)
		if status != tt.wantStatus || reason != tt.wantReason {
			t.Errorf("%s: %q %q, want %q %q", tt.name, status, reason, tt.wantStatus, tt.wantReason)
		}
	}
}

func TestAnswerError(t *testing.T) {
	ledgerA, ledgerB := ClusterID{0xa}, ClusterID{0xb}
	node := NodeID{1}
	for _, tt := range []struct {
		name    string
		local   ClusterID
		answer  hello
		wantErr bool
		kind    error
	}{
		{"accepted, same ledger", ledgerA, hello{code: helloOK, cluster: ledgerA, node: node}, false, nil},
		{"accepted by a node in no ledger", ledgerA, hello{code: helloOK, node: node}, false, nil},
		{"refused as foreign", ledgerA, hello{code: helloForeign, cluster: ledgerB, node: node}, true, ErrForeignCluster},
		{"accepted but foreign", ledgerA, hello{code: helloOK, cluster: ledgerB, node: node}, true, ErrForeignCluster},
		{"refused version", ledgerA, hello{code: helloBadVersion, node: node}, true, nil},
		{"refused as malformed", ledgerA, hello{code: helloMalformed, node: node}, true, nil},
		{"unknown status", ledgerA, hello{code: 'Z', node: node}, true, nil},
		{"zero node ID", ledgerA, hello{code: helloOK, cluster: ledgerA}, true, nil},
	} {
		err := answerError(tt.local, "192.0.2.1:7963", tt.answer)
		if (err != nil) != tt.wantErr || (tt.kind != nil && !errors.Is(err, tt.kind)) {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
}
