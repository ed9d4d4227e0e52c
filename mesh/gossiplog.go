package mesh

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/grapevine-net/grapevine/internal/ratelog"
)

// Gossip messages memberlist drops (a host without the key, garbage at the
// port) are counted each but logged at most gossipRefusalLogBurst lines per
// gossipRefusalLogEvery: each would otherwise be an ERROR line, and a few
// thousand packets a second filled the log.
const (
	gossipRefusalLogBurst = 3
	gossipRefusalLogEvery = 10 * time.Second
)

// logWriter forwards memberlist's log lines ("[LEVEL] memberlist: ...") to
// slog at the matching level, except the lines about messages from the
// network that memberlist refused: those are counted by reason and logged
// as warnings at a bounded rate.
type logWriter struct {
	log      *slog.Logger
	rejected *prometheus.CounterVec
	limit    *ratelog.Limiter
}

func newLogWriter(log *slog.Logger, rejected *prometheus.CounterVec) *logWriter {
	return &logWriter{log: log, rejected: rejected, limit: ratelog.New(gossipRefusalLogBurst, gossipRefusalLogEvery)}
}

var memberlistLevels = []struct {
	prefix string
	level  slog.Level
}{{"[DEBUG] ", slog.LevelDebug}, {"[INFO] ", slog.LevelInfo}, {"[WARN] ", slog.LevelWarn}, {"[ERR] ", slog.LevelError}}

func (w *logWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	for _, l := range memberlistLevels {
		if _, rest, ok := strings.Cut(line, l.prefix); ok {
			line, level = rest, l.level
			break
		}
	}
	line = strings.TrimPrefix(line, "memberlist: ")
	if reason := gossipRefusal(line); reason != "" {
		w.rejected.WithLabelValues(reason).Inc()
		if ok, notLogged := w.limit.Allow(time.Now()); ok {
			args := []any{"reason", reason, "detail", line, "source", "memberlist"}
			if notLogged > 0 {
				args = append(args, "refusals_not_logged", notLogged)
			}
			w.log.Warn("gossip message from the network refused", args...)
		}
		return len(p), nil
	}
	w.log.Log(context.Background(), level, line, "source", "memberlist")
	return len(p), nil
}

// gossipRefusals map memberlist's lines about an inbound packet or stream
// it dropped (memberlist v0.7 net.go) to the reason counted.
var gossipRefusals = []struct {
	contains, reason string
}{
	{"Decrypt packet failed", "decrypt"},
	{"unacceptable label", "label"},
	{"label header", "label"},
	{"cannot decode label", "label"},
	{"invalid checksum", "checksum"},
	{"missing message type byte", "malformed"},
	{"Received invalid msgType", "malformed"},
	{"msg type (", "malformed"},
	{"Message type (", "malformed"},
	{"Failed to decode ", "malformed"},
	{"Failed to decompress payload", "malformed"},
	{"Failed to read remote state", "malformed"},
	{"Failed to receive user message", "malformed"},
}

// gossipRefusal names why memberlist dropped a message from the network,
// given its log line without level and "memberlist: " prefix; "" for any
// other line.
func gossipRefusal(line string) string {
	// A stream that failed to arrive: without the key it is a decryption
	// failure ("encryption is configured but remote state is not
	// encrypted", "no installed keys could decrypt the message", ...).
	if rest, ok := strings.CutPrefix(line, "failed to receive: "); ok {
		if strings.Contains(rest, "encrypt") || strings.Contains(rest, "decrypt") {
			return "decrypt"
		}
		return "malformed"
	}
	for _, r := range gossipRefusals {
		if strings.Contains(line, r.contains) {
			return r.reason
		}
	}
	return ""
}
