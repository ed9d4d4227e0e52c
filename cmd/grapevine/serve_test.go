package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestStatusSocketServesProfiles: an operator profiles an agent through
// its root-only status socket (Go's pprof index and named profiles); the
// metrics listener, which may face the network, serves none.
func TestStatusSocketServesProfiles(t *testing.T) {
	a := &agent{}
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1"} {
		rec := httptest.NewRecorder()
		a.statusHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "goroutine") {
			t.Errorf("GET %s on the status socket: %d %.80q", path, rec.Code, rec.Body.String())
		}
		rec = httptest.NewRecorder()
		a.metricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != http.StatusNotFound {
			t.Errorf("GET %s on the metrics listener: %d, want 404", path, rec.Code)
		}
	}
}
