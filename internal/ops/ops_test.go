package ops

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
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
	if code := get(s, "/debug/pprof/"); code != http.StatusNotFound {
		t.Fatalf("/debug/pprof/ before EnableProfiling: %d, want 404", code)
	}
	s.EnableProfiling()
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/heap", "/debug/pprof/symbol"} {
		if code := get(s, path); code != http.StatusOK {
			t.Fatalf("%s: %d, want 200", path, code)
		}
	}
}

// TestProfilingNeverServesCmdline: /debug/pprof/cmdline would echo the
// process's arguments, secrets passed as flags included; with profiling
// on, the served listener answers it 404 while the index works.
func TestProfilingNeverServesCmdline(t *testing.T) {
	s := New("127.0.0.1:0", nil)
	s.EnableProfiling()
	l, err := s.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + l.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}
	for _, path := range []string{"/debug/pprof/cmdline", "/debug/pprof/cmdline?x=1"} {
		code, body := get(path)
		if code != http.StatusNotFound {
			t.Fatalf("%s: %d, want 404; body:\n%s", path, code, body)
		}
		if strings.Contains(body, os.Args[0]) {
			t.Fatalf("%s echoes the command line: %s", path, body)
		}
	}
	if code, body := get("/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Fatalf("/debug/pprof/: %d, want 200 with the profile index:\n%s", code, body)
	}
}

// TestListenFreePortOnlyWhenAllowed: a taken address fails naming it and
// the flag, unless FreePortIfTaken: then another port of the same host is
// bound and Addr reports it.
func TestListenFreePortOnlyWhenAllowed(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	addr := taken.Addr().String()
	if _, err := New(addr, nil).Listen(); err == nil || !strings.Contains(err.Error(), addr+" is already in use") ||
		!strings.Contains(err.Error(), "--http-listen") {
		t.Fatalf("explicit taken address: %v", err)
	}
	s := New(addr, nil)
	s.FreePortIfTaken()
	l, err := s.Listen()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got := l.Addr().String(); got == addr || !strings.HasPrefix(got, "127.0.0.1:") || s.Addr() != got {
		t.Fatalf("fallback bound %s (Addr %s), taken %s", got, s.Addr(), addr)
	}
}
