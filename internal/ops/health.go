package ops

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync/atomic"
	"time"
)

// Heartbeat records when a loop last made progress; a loop calls Beat once
// per iteration (an idle wait counts: the loop is not stuck).
type Heartbeat struct{ last atomic.Int64 }

// Beat records progress now.
func (h *Heartbeat) Beat() { h.last.Store(time.Now().UnixNano()) }

// Last returns when Beat was last called (the zero time before).
func (h *Heartbeat) Last() time.Time {
	n := h.last.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// watch is one liveness watchdog.
type watch struct {
	timeout time.Duration
	last    func() time.Time
	started time.Time
}

// Watch adds a liveness watchdog: /healthz (and /livez) fail once last
// reports no progress for longer than timeout. Before the first progress
// the time of Watch counts, so a loop that never starts also fails.
// Liveness must fail only when restarting the process helps: last should
// advance while the loop waits for an unreachable dependency.
func (s *Server) Watch(name string, timeout time.Duration, last func() time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.watches[name] = watch{timeout: timeout, last: last, started: s.now()}
}

// Live reports each watchdog's outcome in name order and whether all are
// within their timeouts.
func (s *Server) Live() ([]CheckResult, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.watches))
	for n := range s.watches {
		names = append(names, n)
	}
	sort.Strings(names)
	now, all := s.now(), true
	out := make([]CheckResult, 0, len(names))
	for _, n := range names {
		w := s.watches[n]
		last := w.last()
		if last.Before(w.started) {
			last = w.started
		}
		r := CheckResult{Name: n, OK: true}
		if silent := now.Sub(last); silent > w.timeout {
			r.OK, all = false, false
			r.Error = fmt.Sprintf("no progress for %s (limit %s)", silent.Round(time.Second), w.timeout)
		}
		out = append(out, r)
	}
	return out, all
}

// live serves /healthz and /livez as Kubernetes components do: 200 "ok",
// or 503 with a "[-]name reason" line per failing watchdog; ?verbose
// lists every watchdog.
func (s *Server) live(w http.ResponseWriter, r *http.Request) {
	results, ok := s.Live()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, verbose := r.URL.Query()["verbose"]
	if ok && !verbose {
		_, _ = w.Write([]byte("ok\n"))
		return
	}
	var b strings.Builder
	for _, c := range results {
		switch {
		case !c.OK:
			fmt.Fprintf(&b, "[-]%s failed: %s\n", c.Name, c.Error)
		case verbose:
			fmt.Fprintf(&b, "[+]%s ok\n", c.Name)
		}
	}
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
		b.WriteString("livez check failed\n")
	} else {
		b.WriteString("livez check passed\n")
	}
	_, _ = w.Write([]byte(b.String()))
}
