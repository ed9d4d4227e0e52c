package mesh

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestGossipRefusal(t *testing.T) {
	for _, tt := range []struct{ line, want string }{
		// memberlist v0.7's lines, as the log writer receives them
		{"Decrypt packet failed: no installed keys could decrypt the message from=192.0.2.9:7962", "decrypt"},
		{"failed to receive: encryption is configured but remote state is not encrypted from=192.0.2.9:40000", "decrypt"},
		{"failed to receive: no installed keys could decrypt the message from=192.0.2.9:40000", "decrypt"},
		{"failed to receive: unsupported encryption version 7 from=192.0.2.9:40000", "decrypt"},
		{"failed to receive: remote node state is larger than limit (9999999) from=192.0.2.9:40000", "malformed"},
		{"discarding packet with unacceptable label \"x\": from=192.0.2.9:7962", "label"},
		{"failed to receive and remove the stream label header: cannot decode label; stream has been truncated from=192.0.2.9:40000", "label"},
		{"Got invalid checksum for UDP packet: 1, 2", "checksum"},
		{"missing message type byte from=192.0.2.9:7962", "malformed"},
		{"msg type (99) not supported from=192.0.2.9:7962", "malformed"},
		{"Received invalid msgType (99) from=192.0.2.9:40000", "malformed"},
		{"Failed to decode ping request: EOF from=192.0.2.9:7962", "malformed"},
		{"Failed to decompress payload: EOF from=192.0.2.9:7962", "malformed"},
		// lines about this node's own doings stay as they were
		{"Push/Pull with h2 failed: dial tcp 192.0.2.2:7962: i/o timeout", ""},
		{"Failed to send gossip to 192.0.2.2:7962: network is unreachable", ""},
		{"Suspect h2 has failed, no acks received", ""},
		{"Marking h2 as failed, suspect timeout reached (0 peer confirmations)", ""},
	} {
		if got := gossipRefusal(tt.line); got != tt.want {
			t.Errorf("%q: %q, want %q", tt.line, got, tt.want)
		}
	}
}

// Issue 19, fault 5: each keyless packet was an ERROR line and not counted.
func TestLogWriterCountsRefusalsAndBoundsTheLog(t *testing.T) {
	var out bytes.Buffer
	rejected := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rejected"}, []string{"reason"})
	w := newLogWriter(slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug})), rejected)
	const packets = 1000
	for i := range packets {
		fmt.Fprintf(w, "2026/01/01 00:00:00 [ERR] memberlist: Decrypt packet failed: no installed keys could decrypt the message from=192.0.2.%d:7962\n", i%250)
	}
	fmt.Fprintf(w, "2026/01/01 00:00:00 [WARN] memberlist: Was able to connect to h2 over TCP but UDP probes failed, network may be misconfigured\n")
	if got := testutil.ToFloat64(rejected.WithLabelValues("decrypt")); got != packets {
		t.Fatalf("%v refusals counted, want %d", got, packets)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != gossipRefusalLogBurst+1 {
		t.Fatalf("%d log lines for %d refused packets and one warning, want %d:\n%s", len(lines), packets, gossipRefusalLogBurst+1, out.String())
	}
	for _, l := range lines[:gossipRefusalLogBurst] {
		if !strings.Contains(l, "level=WARN") || !strings.Contains(l, "reason=decrypt") {
			t.Errorf("refusal logged as %s", l)
		}
	}
	if last := lines[len(lines)-1]; !strings.Contains(last, "level=WARN") || !strings.Contains(last, "UDP probes failed") {
		t.Errorf("other memberlist line logged as %s", last)
	}
}
