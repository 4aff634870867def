package projection_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/projection"
)

// BenchmarkCatchUp: one instance applies a backlog of the stream (20,000
// packages: 34,000 events) into a fresh projection, per subject (partitions
// in parallel) and as an aggregate (Serialize). The baseline, measured in
// the same run, applies the same events with the same handlers straight
// from the log in transactions of 500, with no stream, checkpoints or
// leases: the ratio is what the runtime costs.
func BenchmarkCatchUp(b *testing.B) {
	e := setup(b)
	e.startRelay(b, nil)
	e.appendPackages(b, 20000)
	e.awaitPublished(b)
	ctx := context.Background()
	var events []projection.Event
	for ev, err := range projection.LogEvents(ctx, e.log, 0) {
		require.NoError(b, err)
		events = append(events, ev)
	}
	for _, kind := range []string{"per_subject", "aggregate"} {
		b.Run(kind, func(b *testing.B) {
			round := 0
			for b.Loop() {
				round++
				name := fmt.Sprintf("%s_%d", kind, round)
				p := perSubject(name)
				if kind == "aggregate" {
					p = counting(name, nil)
				}
				raw := rawApply(b, e, p, events)
				// A schema of its own: two projections' tables never share names.
				pool := openPool(b, e.url, name, true)
				b.Cleanup(func() { _, _ = e.pool.Exec(context.Background(), "DROP SCHEMA "+name+" CASCADE") })
				began := time.Now()
				in := e.startOn(b, pool, p, projection.Config{WorkerID: "bench", IdleWait: 100 * time.Millisecond})
				want := e.lastPerPartition(b)
				for !caughtUpTo(checkpoints(b, pool, p.Name), want) {
					select {
					case <-in.done:
						b.Fatalf("the instance stopped: %v", in.err)
					case <-time.After(20 * time.Millisecond):
					}
				}
				took := time.Since(began)
				require.NoError(b, in.stop())
				rate := float64(len(events)) / took.Seconds()
				b.ReportMetric(rate, "events/s")
				b.ReportMetric(raw, "raw-events/s")
				b.Logf("%s: runtime %.0f events/s (start to caught up), raw %.0f events/s, ratio %.2f", kind, rate, raw, rate/raw)
			}
		})
	}
}

// rawApply applies events through p's handlers in transactions of 500,
// into p's tables in a schema of their own, and returns the rate.
func rawApply(b *testing.B, e *env, p projection.Projection, events []projection.Event) float64 {
	ctx := context.Background()
	schema := p.Name + "_raw"
	_, err := e.pool.Exec(ctx, "CREATE SCHEMA "+schema)
	require.NoError(b, err)
	b.Cleanup(func() { _, _ = e.pool.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE") })
	require.NoError(b, pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL search_path TO "+schema); err != nil {
			return err
		}
		for _, m := range p.Migrations {
			if _, err := tx.Exec(ctx, m); err != nil {
				return err
			}
		}
		return nil
	}))
	began := time.Now()
	for i := 0; i < len(events); i += 500 {
		require.NoError(b, pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SET LOCAL search_path TO "+schema); err != nil {
				return err
			}
			for _, ev := range events[i:min(i+500, len(events))] {
				if h := p.Handlers[ev.Type]; h != nil {
					if err := h(ctx, tx, ev); err != nil {
						return err
					}
				}
			}
			return nil
		}))
	}
	return float64(len(events)) / time.Since(began).Seconds()
}
