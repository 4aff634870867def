package main

import (
	"context"
	"embed"
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/internal/ops"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/store"
)

// web holds the status page and what it loads: the vendored uPlot
// (web/uplot/VERSION; `make uplot` re-fetches it) is served by the process
// itself, so the page works without internet access.
//
//go:embed web/statuspage.html web/statuspage.js web/uplot/uPlot.iife.min.js web/uplot/uPlot.min.css
var web embed.FS

// staticFiles maps the page's /static/ paths to files in web.
var staticFiles = map[string]string{
	"statuspage.js":     "web/statuspage.js",
	"uPlot.iife.min.js": "web/uplot/uPlot.iife.min.js",
	"uPlot.min.css":     "web/uplot/uPlot.min.css",
}

// statusPage samples the pipeline's status every interval, keeps the last
// samples (ten minutes) and serves them: GET / (the page, and its scripts
// under /static/) and GET /status.json[?since=<Unix ms>].
type statusPage struct {
	db       store.DB
	js       relay.StreamLookup
	stream   string
	interval time.Duration
	keep     int
	log      *zap.Logger
	// now is the sampling clock (tests replace it).
	now func() time.Time

	// beat is the sampling loop's progress (liveness).
	beat ops.Heartbeat

	mu      sync.Mutex
	current statusReport
	err     string
	history []lagSample
}

func newStatusPage(db store.DB, js relay.StreamLookup, stream string, log *zap.Logger) *statusPage {
	return &statusPage{db: db, js: js, stream: stream, interval: time.Second, keep: 600, log: log.Named("statuspage"),
		now: time.Now}
}

// register adds the page's handlers to srv.
func (p *statusPage) register(srv *ops.Server) {
	srv.Handle("GET /{$}", serveWebFile("web/statuspage.html"))
	for name, file := range staticFiles {
		srv.Handle("GET /static/"+name, serveWebFile(file))
	}
	srv.Handle("GET /status.json", http.HandlerFunc(p.serveJSON))
}

func serveWebFile(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, web, name)
	})
}

// serveJSON answers the current status and the samples taken after
// ?since= (Unix milliseconds; all of them without it), so that the page
// fetches only what it has not drawn yet.
func (p *statusPage) serveJSON(w http.ResponseWriter, r *http.Request) {
	since := int64(math.MinInt64)
	if v := r.URL.Query().Get("since"); v != "" {
		var err error
		if since, err = strconv.ParseInt(v, 10, 64); err != nil {
			http.Error(w, "since: want Unix milliseconds, got "+strconv.Quote(v), http.StatusBadRequest)
			return
		}
	}
	p.mu.Lock()
	history := make([]lagSample, 0, len(p.history))
	for _, s := range p.history {
		if s.T > since {
			history = append(history, s)
		}
	}
	body := map[string]any{"current": p.current, "history": history, "error": p.err}
	p.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(body)
}

func (p *statusPage) sample(ctx context.Context) {
	sctx, cancel := context.WithTimeout(ctx, p.interval*3)
	defer cancel()
	at := p.now()
	rep, err := collectStatus(sctx, p.db, p.js, p.stream)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.err = err.Error()
		return
	}
	p.err = ""
	p.current = rep
	var prev *lagSample
	if n := len(p.history); n > 0 {
		prev = &p.history[n-1]
	}
	p.history = append(p.history, nextSample(prev, rep, at))
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
