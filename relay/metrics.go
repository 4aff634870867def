package relay

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Error kinds of the artifactstore_relay_errors_total counter.
const (
	errKindDatabase   = "database"   // reading the log failed
	errKindNATS       = "nats"       // a request or publish to NATS failed
	errKindFenced     = "fenced"     // JetStream refused a publish: another relay published in between
	errKindTimeout    = "timeout"    // a publish was not acknowledged in time
	errKindStream     = "stream"     // the stream is misconfigured or belongs to another log
	errKindCheckpoint = "checkpoint" // signing or putting a checkpoint failed
)

type metrics struct {
	position     atomic.Int64
	head         atomic.Int64
	published    prometheus.Counter
	batches      prometheus.Counter
	publishBatch prometheus.Gauge
	resyncs      prometheus.Counter
	abandoned    prometheus.Counter
	errors       *prometheus.CounterVec
	leader       prometheus.Gauge
	checkpoint   prometheus.Gauge
	all          []prometheus.Collector
}

func newMetrics(stream string) *metrics {
	m := &metrics{}
	labels := prometheus.Labels{"stream": stream}
	m.published = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "artifactstore_relay_published_total", ConstLabels: labels,
		Help: "Events published to the stream and acknowledged by JetStream.",
	})
	m.batches = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "artifactstore_relay_batches_total", ConstLabels: labels,
		Help: "Atomic batches published and acknowledged (Config.PublishBatch).",
	})
	m.publishBatch = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "artifactstore_relay_publish_batch", ConstLabels: labels,
		Help: "Largest atomic batch the relay publishes; 0 when it publishes event by event (batching off, or the stream does not allow atomic publishing).",
	})
	m.resyncs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "artifactstore_relay_resyncs_total", ConstLabels: labels,
		Help: "Times the relay re-read its position from the stream.",
	})
	m.abandoned = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "artifactstore_relay_abandoned_publishes_total", ConstLabels: labels,
		Help: "Publishes still unanswered after a failed window, resolved by resetting the JetStream context's async publisher.",
	})
	m.errors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "artifactstore_relay_errors_total", ConstLabels: labels,
		Help: "Relay errors by kind (database, nats, fenced, timeout, stream, checkpoint).",
	}, []string{"kind"})
	for _, k := range []string{errKindDatabase, errKindNATS, errKindFenced, errKindTimeout, errKindStream, errKindCheckpoint} {
		m.errors.WithLabelValues(k)
	}
	m.leader = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "artifactstore_relay_leader", ConstLabels: labels,
		Help: "1 while this relay holds the leader lock and publishes, 0 as a standby.",
	})
	m.checkpoint = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "artifactstore_relay_checkpoint_sequence", ConstLabels: labels,
		Help: "Log sequence of the last signed checkpoint this relay published (Config.CheckpointKey).",
	})
	position := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "artifactstore_relay_position", ConstLabels: labels,
		Help: "Log sequence of the last event known to be in the stream.",
	}, func() float64 { return float64(m.position.Load()) })
	head := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "artifactstore_relay_log_head", ConstLabels: labels,
		Help: "Highest committed log sequence the relay has seen.",
	}, func() float64 { return float64(m.head.Load()) })
	lag := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "artifactstore_relay_lag", ConstLabels: labels,
		Help: "Log head minus relay position: committed events not yet in the stream.",
	}, func() float64 { return float64(max(0, m.head.Load()-m.position.Load())) })
	m.all = []prometheus.Collector{m.published, m.batches, m.publishBatch, m.resyncs, m.abandoned, m.errors, m.leader, m.checkpoint,
		position, head, lag}
	return m
}

func (m *metrics) register(r prometheus.Registerer) error {
	if r == nil {
		return nil
	}
	for _, c := range m.all {
		if err := r.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return fmt.Errorf("relay: registering metrics: %w (one Relay per stream and registry)", err)
			}
			return fmt.Errorf("relay: registering metrics: %w", err)
		}
	}
	return nil
}

func (m *metrics) setHead(h int64) {
	for {
		cur := m.head.Load()
		if h <= cur || m.head.CompareAndSwap(cur, h) {
			return
		}
	}
}
