package projector

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/storetest"
)

const benchPackages = 10000 // 15,000 events

var rawRate struct {
	once sync.Once
	v    float64
	bulk float64
}

type rollback struct{}

func (rollback) Error() string { return "rollback" }

// benchRaw measures the baseline once per run: the view rows the handlers
// leave after each event, upserted straight through the store (one
// PutPackage and one PutRetention per event, 500 events per transaction):
// no handler reads, no checkpoint, no NATS.
func benchRaw(b *testing.B) float64 {
	rawRate.once.Do(func() {
		e := setup(b)
		appendPackages(b, e.db, 0, benchPackages)
		ctx := context.Background()
		var events []store.Event
		for ev, err := range store.All(ctx, e.db, 0, 0) {
			require.NoError(b, err)
			events = append(events, ev)
		}
		type rows struct {
			p store.Package
			r store.Retention
		}
		var writes []rows
		err := e.db.InTx(ctx, func(tx store.Tx) error {
			buf := store.NewBufferedViews(tx, true)
			for _, ev := range events {
				if err := (store.RegistryViews{}).Apply(ctx, buf, ev); err != nil {
					return err
				}
				p, _ := buf.GetPackage(ctx, ev.SubjectID)
				r, _ := buf.GetRetention(ctx, ev.SubjectID)
				writes = append(writes, rows{p, r})
			}
			return rollback{}
		})
		require.ErrorIs(b, err, rollback{})
		start := time.Now()
		for chunk := range slices.Chunk(writes, 500) {
			require.NoError(b, e.db.InTx(ctx, func(tx store.Tx) error {
				for _, w := range chunk {
					if err := tx.PutPackage(ctx, w.p); err != nil {
						return err
					}
					if err := tx.PutRetention(ctx, w.r); err != nil {
						return err
					}
				}
				return nil
			}))
		}
		rawRate.v = float64(len(writes)) / time.Since(start).Seconds()

		// The same rows through the store's bulk path (what the projector
		// uses): buffered puts, one multi-row upsert per table per 500 events.
		start = time.Now()
		for chunk := range slices.Chunk(writes, 500) {
			require.NoError(b, e.db.InTx(ctx, func(tx store.Tx) error {
				buf := store.NewBufferedViews(tx, false)
				for _, w := range chunk {
					if err := buf.PutPackage(ctx, w.p); err != nil {
						return err
					}
					if err := buf.PutRetention(ctx, w.r); err != nil {
						return err
					}
				}
				return buf.Flush(ctx)
			}))
		}
		rawRate.bulk = float64(len(writes)) / time.Since(start).Seconds()
	})
	return rawRate.v
}

// BenchmarkProjector measures events applied per second by 1 and 3
// workers draining a backlog of 15,000 events (6 partitions, stream to
// views), next to raw upserts of the same rows measured in the same run:
// raw (one upsert per row, 500 events per transaction) and raw_bulk
// (multi-row upserts, 500 events per transaction). x_raw and x_raw_bulk
// are the ratios.
func BenchmarkProjector(b *testing.B) {
	raw := benchRaw(b)
	b.Run("raw", func(b *testing.B) {
		for b.Loop() {
		}
		b.ReportMetric(raw, "events/s")
	})
	b.Run("raw_bulk", func(b *testing.B) {
		for b.Loop() {
		}
		b.ReportMetric(rawRate.bulk, "events/s")
	})
	for _, workers := range []int{1, 3} {
		b.Run("workers="+strconv.Itoa(workers), func(b *testing.B) {
			b.ReportAllocs()
			var rate float64
			for b.Loop() {
				rate = benchDrain(b, workers)
			}
			b.ReportMetric(rate, "events/s")
			b.ReportMetric(rate/raw, "x_raw")
			b.ReportMetric(rate/rawRate.bulk, "x_raw_bulk")
		})
	}
}

// benchDrain starts the workers, waits until they share the partitions,
// then relays a 15,000-event backlog and times it from the first publish
// to the last checkpoint (the stand-in relay's publishing is included).
func benchDrain(b *testing.B, workers int) float64 {
	e := setup(b)
	appendPackages(b, e.db, 0, benchPackages)
	n := e.parts
	want := expected(b, e.db, n)
	var rs []*worker
	for i := range workers {
		cfg := fastConfig("w" + strconv.Itoa(i))
		cfg.BatchSize = 500
		cfg.Logger = benchLogger(b)
		rs = append(rs, e.start(b, cfg))
	}
	testenv.Eventually(b, 30*time.Second, func() bool {
		for _, r := range rs {
			if r.metric(b, "artifactstore_projector_owned_partitions", nil) < float64(n/workers) {
				return false
			}
		}
		return true
	}, "workers share the partitions")
	start := time.Now()
	e.relay(b)
	testenv.Eventually(b, 5*time.Minute, func() bool { return caughtUp(b, e.db, DefaultProjection, want) }, "drained")
	elapsed := time.Since(start)
	for _, r := range rs {
		require.NoError(b, r.stop())
	}
	return float64(e.published) / elapsed.Seconds()
}

// BenchmarkLatency measures commit → visible-in-view latency through the
// whole pipeline (append, the test relay, the derived stream, one worker's
// commit) at about 1,000 events/s: 10 events every 10ms, each in its own
// transaction.
func BenchmarkLatency(b *testing.B) {
	for b.Loop() {
		e := setup(b)
		n := e.parts
		var mu sync.Mutex
		committed := map[int64]time.Time{}
		pending := map[int][]int64{}
		var visible []time.Duration
		cfg := fastConfig("lat")
		cfg.Logger = zap.NewNop()
		cfg.hooks.afterCommit = func(p int, last int64) error {
			now := time.Now()
			mu.Lock()
			defer mu.Unlock()
			keep := pending[p][:0]
			for _, s := range pending[p] {
				if s <= last {
					visible = append(visible, now.Sub(committed[s]))
				} else {
					keep = append(keep, s)
				}
			}
			pending[p] = keep
			return nil
		}
		r := e.start(b, cfg)
		testenv.Eventually(b, 10*time.Second, func() bool {
			return r.metric(b, "artifactstore_projector_owned_partitions", nil) == float64(n)
		}, "worker owns its partitions")
		// Warm up: the derived stream's source consumer is set up a few
		// hundred milliseconds after the stream is created; events
		// published before that wait for it (a start-up cost, not the
		// steady state measured here).
		for i := range 10 {
			appendOne(b, e.db, 1_000_000+i)
		}
		e.relay(b)
		testenv.Eventually(b, 10*time.Second, func() bool {
			return r.metric(b, "artifactstore_projector_events_applied_total", nil) >= 10
		}, "warm-up events applied")
		tick := time.NewTicker(10 * time.Millisecond)
		next := 0
		for range 200 { // 2,000 events
			<-tick.C
			for range 10 {
				ev := appendOne(b, e.db, next)
				next++
				mu.Lock()
				committed[ev.Sequence] = time.Now()
				p := Partition(ev.SubjectID, n)
				pending[p] = append(pending[p], ev.Sequence)
				mu.Unlock()
			}
			e.relay(b)
		}
		tick.Stop()
		testenv.Eventually(b, 30*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(visible) == next
		}, "every event visible")
		require.NoError(b, r.stop())
		slices.Sort(visible)
		b.ReportMetric(float64(visible[len(visible)/2].Microseconds())/1000, "p50_ms")
		b.ReportMetric(float64(visible[len(visible)*99/100].Microseconds())/1000, "p99_ms")
		b.ReportMetric(float64(visible[len(visible)*9/10].Microseconds())/1000, "p90_ms")
	}
}

func appendOne(b testing.TB, db store.DB, i int) store.Event {
	var out []store.Event
	require.NoError(b, db.InTx(context.Background(), func(tx store.Tx) error {
		var err error
		out, err = tx.Append(context.Background(), storetest.Created(b, storetest.PackageID(i), "lat", "1."+strconv.Itoa(i), "ci"))
		return err
	}))
	return out[0]
}

// benchLogger keeps warnings (a stall would show) and drops the rest.
func benchLogger(b *testing.B) *zap.Logger {
	return testenv.Logger(b).WithOptions(zap.IncreaseLevel(zap.WarnLevel))
}
