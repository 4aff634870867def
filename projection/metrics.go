package projection

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics of a Runner, labelled by projection (and partition or worker).
// Several runners in one process share the vectors.
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
	gauge := func(name, help string, labels []string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "artifactstore", Subsystem: "projection", Name: name, Help: help}, labels)
	}
	counter := func(name, help string, labels []string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "artifactstore", Subsystem: "projection", Name: name, Help: help}, labels)
	}
	m := &metrics{
		checkpoint: gauge("checkpoint", "Last log sequence applied, per projection partition.", pp),
		lag:        gauge("lag_events", "Messages of the partition the stream holds beyond the last one applied.", pp),
		applied:    counter("events_applied_total", "Events applied (handled or skipped as unknown types) in committed transactions.", pp),
		skipped:    counter("events_skipped_total", "Messages at or below the checkpoint (applied before), not applied again.", pp),
		batches:    counter("batches_total", "Committed batch transactions.", pp),
		parked:     gauge("parked", "1 while the partition is parked (poison, gap or invalid message).", pp),
		errors: counter("errors_total", "Errors by kind (handler, gap, invalid, checkpoint_moved, store, lease).",
			[]string{"projection", "kind"}),
		owned:    gauge("owned_partitions", "Partitions this instance currently consumes.", []string{"projection", "worker"}),
		caughtUp: counter("catchup_events_total", "Events applied from the log source because the stream lacked them.", pp),
		leaseLost: counter("leases_lost_total", "Times this instance stopped its partitions because it could not renew its leases.",
			[]string{"projection", "worker"}),
	}
	if reg == nil {
		return m, nil
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
		if err := reg.Register(r.c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, err
			}
			r.set(are.ExistingCollector)
		}
	}
	return m, nil
}
