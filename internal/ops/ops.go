// Package ops serves what operators of each artifactstore service read
// over HTTP, following the Kubernetes conventions: Prometheus metrics on
// /metrics; liveness on /healthz and /livez (every watchdog has seen its
// loop progress within its timeout: fails only when a restart helps);
// readiness on /readyz (every check passes: this instance can do its job
// now); and any extra handlers a service adds (the status page).
package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Check reports whether one dependency is usable; ctx bounds it.
type Check func(ctx context.Context) error

// Server is the operations HTTP server of one process.
type Server struct {
	addr     string
	log      *zap.Logger
	registry *prometheus.Registry
	mux      *http.ServeMux

	// freePort: see FreePortIfTaken.
	freePort bool

	// now is the clock of the liveness watchdogs (tests replace it).
	now func() time.Time

	mu      sync.Mutex
	checks  map[string]Check
	watches map[string]watch
	bound   string
}

// New returns a server for addr with a fresh metrics registry that already
// holds the Go runtime and process collectors.
func New(addr string, log *zap.Logger) *Server {
	if log == nil {
		log = zap.NewNop()
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s := &Server{addr: addr, log: log.Named("ops"), registry: reg, mux: http.NewServeMux(), checks: map[string]Check{},
		watches: map[string]watch{}, now: time.Now}
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	s.mux.HandleFunc("GET /healthz", s.live)
	s.mux.HandleFunc("GET /livez", s.live)
	s.mux.HandleFunc("GET /readyz", s.ready)
	return s
}

// Registerer returns the registry services register their metrics with.
func (s *Server) Registerer() prometheus.Registerer { return s.registry }

// Gatherer returns the registry for reading metrics back.
func (s *Server) Gatherer() prometheus.Gatherer { return s.registry }

// AddCheck adds a readiness check under name.
func (s *Server) AddCheck(name string, c Check) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks[name] = c
}

// EnableProfiling serves Go's runtime profiles (net/http/pprof) under
// /debug/pprof/. They expose the process's internals: enable them only on a
// private listener. /debug/pprof/cmdline is not served (the index answers
// it 404): it would echo secrets passed as flags.
func (s *Server) EnableProfiling() {
	s.mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	s.mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	s.mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	s.mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}

// Handle adds a handler to the server's mux (pattern as for http.ServeMux).
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// CheckResult is one readiness check's outcome.
type CheckResult struct {
	Name  string `json:"name"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// Ready runs every check (each bounded by 2 seconds) and reports the results
// in name order and whether all passed.
func (s *Server) Ready(ctx context.Context) ([]CheckResult, bool) {
	s.mu.Lock()
	names := make([]string, 0, len(s.checks))
	for n := range s.checks {
		names = append(names, n)
	}
	checks := make(map[string]Check, len(s.checks))
	for n, c := range s.checks {
		checks[n] = c
	}
	s.mu.Unlock()
	sort.Strings(names)
	all := true
	out := make([]CheckResult, 0, len(names))
	for _, n := range names {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := checks[n](cctx)
		cancel()
		r := CheckResult{Name: n, OK: err == nil}
		if err != nil {
			r.Error = err.Error()
			all = false
		}
		out = append(out, r)
	}
	return out, all
}

func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	results, ok := s.Ready(r.Context())
	w.Header().Set("Content-Type", "application/json")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"ready": ok, "checks": results})
}

// FreePortIfTaken lets Listen bind a free port of the same host when the
// address is already in use: for a default address, so that several
// services run on one host without flags. An address the operator chose
// must fail instead (the default).
func (s *Server) FreePortIfTaken() { s.freePort = true }

// Addr returns the address Listen bound ("" before, or when disabled).
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bound
}

// Listen binds the address; call it before Serve so a bad address fails
// at start. An empty address disables the server (nil listener). A taken
// address returns an error naming it and --http-listen, unless
// FreePortIfTaken was called: then a free port is bound and logged.
func (s *Server) Listen() (net.Listener, error) {
	if s.addr == "" {
		return nil, nil
	}
	l, err := net.Listen("tcp", s.addr)
	if errors.Is(err, syscall.EADDRINUSE) && s.freePort {
		host, _, _ := net.SplitHostPort(s.addr)
		if l, err = net.Listen("tcp", net.JoinHostPort(host, "0")); err == nil {
			s.log.Warn("default HTTP address in use; serving on a free port",
				zap.String("default", s.addr), zap.String("addr", l.Addr().String()))
		}
	}
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return nil, fmt.Errorf("ops: %s is already in use; choose another address with --http-listen (or ARTIFACTSTORE_HTTP_LISTEN): %w", s.addr, err)
	case err != nil:
		return nil, fmt.Errorf("ops: listening on %s (choose another with --http-listen): %w", s.addr, err)
	}
	s.mu.Lock()
	s.bound = l.Addr().String()
	s.mu.Unlock()
	return l, nil
}

// Serve serves on l until ctx is cancelled, then shuts down gracefully
// within 5 seconds. A nil l returns when ctx is done.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	if l == nil {
		<-ctx.Done()
		return nil
	}
	srv := &http.Server{Handler: s.mux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	s.log.Info("serving /metrics, /healthz and /readyz", zap.String("addr", l.Addr().String()))
	select {
	case err := <-errc:
		return fmt.Errorf("ops: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("ops: shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("ops: %w", err)
	}
	return nil
}
