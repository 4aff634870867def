package ops

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestProfilingOnlyWhenEnabled: the Go profiles are served only after
// EnableProfiling; /healthz is served either way.
func TestProfilingOnlyWhenEnabled(t *testing.T) {
	get := func(s *Server, path string) int {
		rec := httptest.NewRecorder()
		s.mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code
	}
	s := New("127.0.0.1:0", nil)
	if code := get(s, "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz: %d", code)
	}
	if code := get(s, "/debug/pprof/cmdline"); code != http.StatusNotFound {
		t.Fatalf("/debug/pprof/cmdline before EnableProfiling: %d, want 404", code)
	}
	s.EnableProfiling()
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/goroutine?debug=1"} {
		if code := get(s, path); code != http.StatusOK {
			t.Fatalf("%s: %d, want 200", path, code)
		}
	}
}
