package logflag

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
		log, err := New(tc.level, &buf)
		if (err != nil) != tc.wantErr {
			t.Fatalf("New(%q): %v, want error %v", tc.level, err, tc.wantErr)
		}
		if err != nil {
			if !strings.Contains(err.Error(), tc.level) {
				t.Errorf("New(%q): %q does not name the level", tc.level, err)
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
