package projector

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	checkpoint *prometheus.GaugeVec
	lag        *prometheus.GaugeVec
	applied    *prometheus.CounterVec
	skipped    *prometheus.CounterVec
	batches    *prometheus.CounterVec
	parked     *prometheus.GaugeVec
	errors     *prometheus.CounterVec
	owned      *prometheus.GaugeVec
	caughtUp   *prometheus.CounterVec
	leaseLost  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	pp := []string{"projection", "partition"}
	m := &metrics{
		checkpoint: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "artifactstore", Subsystem: "projector",
			Name: "checkpoint", Help: "Last log sequence applied, per projection partition."}, pp),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "artifactstore", Subsystem: "projector",
			Name: "lag_events", Help: "Messages of the partition the stream holds beyond the last one applied."}, pp),
		applied: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "artifactstore", Subsystem: "projector",
			Name: "events_applied_total", Help: "Events applied to the views (rate() is the apply rate)."}, pp),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "artifactstore", Subsystem: "projector",
			Name: "events_skipped_total", Help: "Messages at or below the checkpoint (applied before), not applied again."}, pp),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "artifactstore", Subsystem: "projector",
			Name: "batches_total", Help: "Committed batch transactions."}, pp),
		parked: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "artifactstore", Subsystem: "projector",
			Name: "parked", Help: "1 while the partition is parked on a poison event or a gap."}, pp),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "artifactstore", Subsystem: "projector",
			Name: "errors_total", Help: "Errors by kind (handler, gap, checkpoint_moved, store, nats, lease)."}, []string{"projection", "kind"}),
		owned: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "artifactstore", Subsystem: "projector",
			Name: "owned_partitions", Help: "Partitions this worker currently consumes."}, []string{"projection", "worker"}),
		caughtUp: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "artifactstore", Subsystem: "projector",
			Name: "catchup_events_total", Help: "Events applied from the log because the stream did not hold them."}, pp),
		leaseLost: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "artifactstore", Subsystem: "projector",
			Name: "leases_lost_total", Help: "Times this worker stopped its partitions because it could not renew its leases."}, []string{"projection", "worker"}),
	}
	if reg == nil {
		return m, nil
	}
	reg1 := func(c prometheus.Collector, set func(prometheus.Collector)) error {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				set(are.ExistingCollector) // several workers in one process share the vectors
				return nil
			}
			return err
		}
		return nil
	}
	for _, r := range []struct {
		c   prometheus.Collector
		set func(prometheus.Collector)
	}{
		{m.checkpoint, func(c prometheus.Collector) { m.checkpoint = c.(*prometheus.GaugeVec) }},
		{m.lag, func(c prometheus.Collector) { m.lag = c.(*prometheus.GaugeVec) }},
		{m.applied, func(c prometheus.Collector) { m.applied = c.(*prometheus.CounterVec) }},
		{m.skipped, func(c prometheus.Collector) { m.skipped = c.(*prometheus.CounterVec) }},
		{m.batches, func(c prometheus.Collector) { m.batches = c.(*prometheus.CounterVec) }},
		{m.parked, func(c prometheus.Collector) { m.parked = c.(*prometheus.GaugeVec) }},
		{m.errors, func(c prometheus.Collector) { m.errors = c.(*prometheus.CounterVec) }},
		{m.owned, func(c prometheus.Collector) { m.owned = c.(*prometheus.GaugeVec) }},
		{m.caughtUp, func(c prometheus.Collector) { m.caughtUp = c.(*prometheus.CounterVec) }},
		{m.leaseLost, func(c prometheus.Collector) { m.leaseLost = c.(*prometheus.CounterVec) }},
	} {
		if err := reg1(r.c, r.set); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// collectors lists every metric of the worker.
func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.checkpoint, m.lag, m.applied, m.skipped, m.batches, m.parked, m.errors, m.owned,
		m.caughtUp, m.leaseLost}
}
