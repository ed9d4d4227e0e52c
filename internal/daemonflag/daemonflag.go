// Package daemonflag owns the command-line conventions the agent and
// grapevine-policy share, so that their flags read and behave alike: the
// --log-level that becomes the slog logger, and the GRAPEVINE_ environment
// variable that can set each flag. It owns nothing else.
package daemonflag

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// Logger returns a text logger writing to w at level: debug, info, warn (or
// warning) or error, in any case.
func Logger(level string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	switch strings.ToLower(level) {
	case "debug":
		l = slog.LevelDebug
	case "info":
		l = slog.LevelInfo
	case "warn", "warning":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		return nil, fmt.Errorf("--log-level %q is not a level: use debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// EnvVars names the environment variable that can set flag, for a
// urfave/cli flag's EnvVars: GRAPEVINE_ and the flag in capitals, dashes
// as underscores (--gossip-key-file: GRAPEVINE_GOSSIP_KEY_FILE).
func EnvVars(flag string) []string {
	return []string{"GRAPEVINE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))}
}
