package ops

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable clock for the watchdogs.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *fakeClock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func serve(s *Server, path string) (int, string) {
	rec := httptest.NewRecorder()
	s.mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Body)
	return rec.Code, string(b)
}

// TestLivenessWatchdog: /healthz and /livez answer 200 while every loop
// progresses within its timeout and 503 naming the stuck loop once one
// does not; a loop that never beats fails after its timeout too.
func TestLivenessWatchdog(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_000_000, 0)}
	s := New("", nil)
	s.now = clock.now
	var mu sync.Mutex
	relayLast := time.Time{} // never beaten yet
	s.Watch("relay", 10*time.Second, func() time.Time { mu.Lock(); defer mu.Unlock(); return relayLast })
	page := clock.now()
	s.Watch("status-page", 5*time.Second, func() time.Time { return page })

	for _, path := range []string{"/healthz", "/livez"} {
		if code, body := serve(s, path); code != http.StatusOK || body != "ok\n" {
			t.Fatalf("%s at start: %d %q", path, code, body)
		}
	}
	clock.add(6 * time.Second)
	code, body := serve(s, "/healthz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "[-]status-page failed: no progress for 6s (limit 5s)") ||
		strings.Contains(body, "[-]relay") {
		t.Fatalf("status page stuck 6s: %d %q", code, body)
	}
	page = clock.now()
	mu.Lock()
	relayLast = clock.now().Add(-time.Second)
	mu.Unlock()
	if code, body := serve(s, "/healthz?verbose"); code != http.StatusOK || !strings.Contains(body, "[+]relay ok") || !strings.Contains(body, "[+]status-page ok") {
		t.Fatalf("both progressed: %d %q", code, body)
	}
	clock.add(11 * time.Second)
	page = clock.now()
	if code, body := serve(s, "/livez"); code != http.StatusServiceUnavailable || !strings.Contains(body, "[-]relay failed: no progress for 12s") {
		t.Fatalf("relay stuck 12s: %d %q", code, body)
	}
}

func TestHeartbeat(t *testing.T) {
	var h Heartbeat
	if !h.Last().IsZero() {
		t.Fatalf("Last before Beat: %v", h.Last())
	}
	before := time.Now()
	h.Beat()
	if l := h.Last(); l.Before(before) || l.After(time.Now()) {
		t.Fatalf("Last %v not between %v and now", l, before)
	}
}
