package relay

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// SetHook installs a function called at each pipeline stage ("synced",
// "fetched", "publish", "published", "acked") with the event sequence
// concerned, in the relay's goroutine. Set it before Run.
func SetHook(r *Relay, h func(stage string, seq int64)) { r.hook = h }

// DisableLock makes r skip the leader lock, so that only fencing keeps
// concurrent relays apart.
func DisableLock(r *Relay) { r.noLock = true }

// Errors returns r's error counter of one kind (fenced, nats, database, timeout, stream).
func Errors(r *Relay, kind string) float64 { return value(r.m.errors.WithLabelValues(kind)) }

// Published returns r's published counter.
func Published(r *Relay) float64 { return value(r.m.published) }

// Lag returns r's lag gauge.
func Lag(r *Relay) int64 { return max(0, r.m.head.Load()-r.m.position.Load()) }

func value(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
