package daemonflag

import (
	"bytes"
	"strings"
	"testing"
)

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		level   string
		debug   bool // a debug line is written
		warn    bool // a warning is written
		wantErr bool
	}{
		{level: "debug", debug: true, warn: true},
		{level: "INFO", warn: true},
		{level: "warning", warn: true},
		{level: "error"},
		{level: "verbose", wantErr: true},
	} {
		var buf bytes.Buffer
		log, err := Logger(tc.level, &buf)
		if (err != nil) != tc.wantErr {
			t.Fatalf("Logger(%q): %v, want error %v", tc.level, err, tc.wantErr)
		}
		if err != nil {
			if !strings.Contains(err.Error(), tc.level) {
				t.Errorf("Logger(%q): %q does not name the level", tc.level, err)
			}
			continue
		}
		log.Debug("d")
		log.Warn("w")
		if got := strings.Contains(buf.String(), "msg=d"); got != tc.debug {
			t.Errorf("level %q: debug written %v, want %v", tc.level, got, tc.debug)
		}
		if got := strings.Contains(buf.String(), "msg=w"); got != tc.warn {
			t.Errorf("level %q: warning written %v, want %v", tc.level, got, tc.warn)
		}
	}
}

func TestEnvVars(t *testing.T) {
	if got := EnvVars("gossip-key-file"); len(got) != 1 || got[0] != "GRAPEVINE_GOSSIP_KEY_FILE" {
		t.Fatalf("EnvVars = %v", got)
	}
}
