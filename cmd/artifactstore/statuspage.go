package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/internal/ops"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/store"
)

//go:embed statuspage.html
var statusPageHTML []byte

// lagSample is the pipeline's lag per stage at one moment.
type lagSample struct {
	At time.Time `json:"at"`
	// Head is the log head.
	Head int64 `json:"head"`
	// RelayLag is events committed but not yet in the stream (-1: unknown).
	RelayLag int64 `json:"relay_lag"`
	// ProjectionLag is events in the log not yet in the views, worst
	// projection (-1: no projection yet).
	ProjectionLag int64 `json:"projection_lag"`
}

// statusPage samples the pipeline's status every interval, keeps the last
// samples and serves them: GET / (the page) and GET /status.json.
type statusPage struct {
	db       store.DB
	js       relay.StreamLookup
	stream   string
	interval time.Duration
	keep     int
	log      *zap.Logger

	// beat is the sampling loop's progress (liveness).
	beat ops.Heartbeat

	mu      sync.Mutex
	current statusReport
	err     string
	history []lagSample
}

func newStatusPage(db store.DB, js relay.StreamLookup, stream string, log *zap.Logger) *statusPage {
	return &statusPage{db: db, js: js, stream: stream, interval: time.Second, keep: 600, log: log.Named("statuspage")}
}

// register adds the page's handlers to srv.
func (p *statusPage) register(srv *ops.Server) {
	srv.Handle("GET /{$}", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(statusPageHTML)
	}))
	srv.Handle("GET /status.json", http.HandlerFunc(p.serveJSON))
}

func (p *statusPage) serveJSON(w http.ResponseWriter, _ *http.Request) {
	p.mu.Lock()
	body := map[string]any{"current": p.current, "history": p.history, "error": p.err}
	p.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(body)
}

func (p *statusPage) sample(ctx context.Context) {
	sctx, cancel := context.WithTimeout(ctx, p.interval*3)
	defer cancel()
	rep, err := collectStatus(sctx, p.db, p.js, p.stream)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.err = err.Error()
		return
	}
	p.err = ""
	p.current = rep
	s := lagSample{At: time.Now().UTC(), Head: rep.Head, RelayLag: -1, ProjectionLag: -1}
	if rep.Relay != nil {
		s.RelayLag = rep.Relay.Lag
	}
	for _, pr := range rep.Projections {
		s.ProjectionLag = max(s.ProjectionLag, pr.Lag)
	}
	p.history = append(p.history, s)
	if len(p.history) > p.keep {
		p.history = p.history[len(p.history)-p.keep:]
	}
}

// LastProgress returns when the sampling loop last completed a sample
// (each is bounded: a stuck loop is a bug, and a restart helps).
func (p *statusPage) LastProgress() time.Time { return p.beat.Last() }

// run samples until ctx ends.
func (p *statusPage) run(ctx context.Context) error {
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		p.sample(ctx)
		p.beat.Beat()
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
