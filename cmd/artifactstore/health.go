package main

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/artifactstore/artifactstore/internal/ops"
)

// livenessTimeout is how long a main loop may go without progress before
// /healthz fails and the orchestrator restarts the process. Loops report
// progress while they wait for an unreachable dependency (that is a
// readiness matter: a restart would not help).
const livenessTimeout = 30 * time.Second

var errNotRunning = errors.New("not running (starting, stopped or failed)")

// progressReporter is what a component offers the liveness watchdog: when
// its main loop last made progress, an idle wait included. relay.Relay,
// projector.Worker, ingest.Service (its commit loops; micro serves the
// requests) and the status page's loop implement it.
type progressReporter interface{ LastProgress() time.Time }

// runState tells readiness whether a component's Run is running.
type runState struct{ running atomic.Bool }

func (s *runState) check(context.Context) error {
	if !s.running.Load() {
		return errNotRunning
	}
	return nil
}

// watchComponent wraps run as the component name: its running state is
// returned for readiness checks, and, when comp reports its progress, a
// liveness watchdog is added for it.
func watchComponent(srv *ops.Server, name string, comp any, run func(context.Context) error) (component, *runState) {
	st := &runState{}
	if p, ok := comp.(progressReporter); ok {
		srv.Watch(name, livenessTimeout, p.LastProgress)
	}
	return component{name, func(ctx context.Context) error {
		st.running.Store(true)
		defer st.running.Store(false)
		return run(ctx)
	}}, st
}

// relayRole is what relay readiness reads from relay.Relay.
type relayRole interface{ Active() bool }

// standbyReporter tells a healthy standby (its checks passed, its last
// attempt at the lock found it held) from a relay stuck before that;
// relay.Relay implements it.
type standbyReporter interface{ Standby() bool }

// relayReady: a relay can do its job when it publishes (Active) or stands
// by ready to take over. Whether it could reach the database and NATS to
// do so are the "database" and "nats" checks beside this one.
func relayReady(r relayRole, st *runState) ops.Check {
	return func(ctx context.Context) error {
		if r.Active() {
			return nil
		}
		if err := st.check(ctx); err != nil {
			return err
		}
		if s, ok := r.(standbyReporter); ok && !s.Standby() {
			return errors.New("neither active nor standing by")
		}
		return nil
	}
}

// healthReporter is what projector readiness asks: the worker's last
// lease renewal succeeded within the lease TTL (true also when it holds no
// lease because every partition is taken); projector.Worker implements
// it. Without it readiness asks owned instead.
type healthReporter interface{ Healthy() bool }

// projectorReady: a projector worker can do its job when Run runs and its
// leases are renewed (Healthy), or, without that accessor, when it holds
// at least one partition lease (owned, from its metrics).
func projectorReady(w any, st *runState, owned func() float64) ops.Check {
	return func(ctx context.Context) error {
		if err := st.check(ctx); err != nil {
			return err
		}
		if h, ok := w.(healthReporter); ok {
			if !h.Healthy() {
				return errors.New("lease renewal failing: its partitions may move to other workers")
			}
			return nil
		}
		if owned() < 1 {
			return errors.New("holds no partition lease")
		}
		return nil
	}
}

// ownedPartitionsMetric is the projector's gauge of partitions a worker
// holds leases on.
const ownedPartitionsMetric = "artifactstore_projector_owned_partitions"

// ownedTap passes registrations on to a Registerer and keeps the collector
// of ownedPartitionsMetric, so that readiness reads that one gauge instead
// of gathering the whole registry (Go runtime and process collectors
// included) on every probe.
type ownedTap struct {
	prometheus.Registerer
	mu    sync.Mutex
	owned prometheus.Collector
}

func (o *ownedTap) Register(c prometheus.Collector) error {
	if err := o.Registerer.Register(c); err != nil {
		return err
	}
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		if strings.Contains(d.String(), `fqName: "`+ownedPartitionsMetric+`"`) {
			o.mu.Lock()
			o.owned = c
			o.mu.Unlock()
		}
	}
	return nil
}

func (o *ownedTap) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := o.Register(c); err != nil {
			panic(err)
		}
	}
}

// ownedPartitions returns the gauge's value for worker (0 when absent).
func (o *ownedTap) ownedPartitions(worker string) func() float64 {
	return func() float64 {
		o.mu.Lock()
		c := o.owned
		o.mu.Unlock()
		if c == nil {
			return 0
		}
		ch := make(chan prometheus.Metric)
		go func() { c.Collect(ch); close(ch) }()
		v := 0.0
		for m := range ch {
			var pb dto.Metric
			if m.Write(&pb) != nil {
				continue
			}
			for _, l := range pb.GetLabel() {
				if l.GetName() == "worker" && l.GetValue() == worker {
					v = pb.GetGauge().GetValue()
				}
			}
		}
		return v
	}
}
