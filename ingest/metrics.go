package ingest

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/artifactstore/artifactstore/store"
)

// Outcome label values of artifactstore_ingest_requests_total besides the
// error codes.
const (
	outcomeOK        = "ok"
	outcomeDuplicate = "duplicate"
)

type metrics struct {
	requests        *prometheus.CounterVec
	rejectedReplies *prometheus.CounterVec
	batchSize       prometheus.Histogram
	commit          prometheus.Histogram
	retries         prometheus.Counter
	appended        prometheus.Counter
	pendingGauge    prometheus.GaugeFunc
	// guesses are the store's head guesses, when it makes them.
	guesses []prometheus.CounterFunc
}

func newMetrics(reg prometheus.Registerer, pending func() float64, db store.DB) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "artifactstore", Subsystem: "ingest", Name: "requests_total",
			Help: "Requests answered, by endpoint (create, finalize, get, list) and outcome (ok, duplicate or an error code).",
		}, []string{"endpoint", "outcome"}),
		rejectedReplies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "artifactstore", Subsystem: "ingest", Name: "rejected_replies_total",
			Help: "Requests dropped unanswered and undecoded because their reply subject is outside the allowed inbox prefixes (reason not_inbox) or missing (no_reply), by endpoint.",
		}, []string{"endpoint", "reason"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "artifactstore", Subsystem: "ingest", Name: "batch_size",
			Help:    "Commands per group-commit transaction.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024},
		}),
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "artifactstore", Subsystem: "ingest", Name: "commit_seconds",
			Help:    "Latency of one group-commit transaction, retries included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "artifactstore", Subsystem: "ingest", Name: "batch_retries_total",
			Help: "Batches retried after a temporary database error.",
		}),
		appended: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "artifactstore", Subsystem: "ingest", Name: "events_appended_total",
			Help: "Events appended to the log by this instance.",
		}),
		pendingGauge: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "artifactstore", Subsystem: "ingest", Name: "pending_commands",
			Help: "Decoded commands waiting for a batch.",
		}, pending),
	}
	if g, ok := db.(store.HeadGuesser); ok {
		for _, o := range []struct {
			outcome string
			of      func(right, wrong int64) int64
		}{{"right", func(r, _ int64) int64 { return r }}, {"wrong", func(_, w int64) int64 { return w }}} {
			m.guesses = append(m.guesses, prometheus.NewCounterFunc(prometheus.CounterOpts{
				Namespace: "artifactstore", Subsystem: "ingest", Name: "head_guesses_total",
				Help:        "Appends through this process's database handle that chained to the log head they expected, by outcome (right, or wrong: another process appended or the batch before failed, and the append was redone on the head read).",
				ConstLabels: prometheus.Labels{"outcome": o.outcome},
			}, func() float64 { return float64(o.of(g.HeadGuesses())) }))
		}
	}
	// Every series exists from the start, so that an alert on its rate
	// sees the first drop.
	for _, ep := range []string{endpointCreate, endpointFinalize, endpointGet, endpointList} {
		for _, reason := range []string{reasonNotInbox, reasonNoReply} {
			m.rejectedReplies.WithLabelValues(ep, reason)
		}
	}
	if reg == nil {
		return m, nil
	}
	cs := []prometheus.Collector{m.requests, m.rejectedReplies, m.batchSize, m.commit, m.retries, m.appended, m.pendingGauge}
	for _, g := range m.guesses {
		cs = append(cs, g)
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("ingest: registering metrics (one Registerer per service): %w", err)
		}
	}
	return m, nil
}
