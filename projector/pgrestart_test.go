package projector

import (
	"context"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// TestPostgresRestarts restarts PostgreSQL (pg_ctl stop -m fast) again and
// again while events are appended, relayed and projected by three workers:
// no partition may park, every partition reaches the log, and the views
// equal a replay. This is the chaos suite's postgres-restart scenario in
// one process: there, partitions parked with reason "gap" on a predecessor
// that the same fetch was bringing right behind the group being handled
// (redeliveries are not in sequence order), and the park then repeated at
// every retry. PGRESTARTS sets the number of restarts (20).
func TestPostgresRestarts(t *testing.T) {
	t.Parallel()
	c, err := testenv.NewCluster()
	require.NoError(t, err)
	t.Cleanup(c.Remove)
	require.NoError(t, c.Start())
	open := func(t testing.TB) store.DB { return testenv.OpenPostgres(t, c.URL(), "") }
	e := setupWith(t, open(t), open)
	n := e.parts
	cfg := func(id string) Config {
		c := fastConfig(id)
		c.BatchSize = 500
		return c
	}
	ws := []*worker{e.start(t, cfg("w1")), e.start(t, cfg("w2")), e.start(t, cfg("w3"))}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	// Writers: a created event, then (in another transaction) a finalized
	// one per package. A failed (maybe committed) append is never retried:
	// the next package gets a new id.
	var next int
	var nextMu sync.Mutex
	for range 6 {
		wg.Go(func() {
			for ctx.Err() == nil {
				nextMu.Lock()
				i := next
				next++
				nextMu.Unlock()
				id := "pkg-" + strconv.Itoa(i)
				evs := []store.Event{storetest.Created(t, id, "name-"+strconv.Itoa(i%17), "1."+strconv.Itoa(i), "ci")}
				err := e.db.InTx(ctx, func(tx store.Tx) error { _, err := tx.Append(ctx, evs...); return err })
				if err != nil {
					if !waitCtx(ctx, 50*time.Millisecond) {
						return
					}
					continue
				}
				fin := storetest.Finalized(t, id, "ci", store.DigestOf([]byte(id)))
				_ = e.db.InTx(ctx, func(tx store.Tx) error { _, err := tx.Append(ctx, fin); return err })
			}
		})
	}
	// Relay: publishes the log in order, exactly once, riding out the
	// outages.
	relayed := make(chan struct{})
	wg.Go(func() {
		defer close(relayed)
		for {
			_ = e.relayOnce(ctx) // fails while PostgreSQL is down; the next round resumes
			if !waitCtx(ctx, 10*time.Millisecond) {
				return
			}
		}
	})

	applied := func() float64 {
		var s float64
		for _, w := range ws {
			s += w.metric(t, "artifactstore_projector_events_applied_total", nil)
		}
		return s
	}
	restarts := 20
	if v, err := strconv.Atoi(os.Getenv("PGRESTARTS")); err == nil {
		restarts = v
	}
	for i := range restarts {
		before := applied()
		testenv.Eventually(t, 30*time.Second, func() bool { return applied() > before+50 }, "events applied before restart %d", i)
		require.NoError(t, c.Stop())
		waitCtx(context.Background(), time.Duration(100+rand.IntN(900))*time.Millisecond) // the outage
		require.NoError(t, c.Start())
	}
	cancel()
	wg.Wait()
	<-relayed
	// Publish what is left.
	testenv.Eventually(t, 30*time.Second, func() bool { return e.relayOnce(context.Background()) == nil }, "final relay")
	want := expected(t, e.db, n)
	testenv.Eventually(t, 60*time.Second, func() bool {
		parked, err := e.db.Parked(context.Background())
		require.NoError(t, err)
		require.Empty(t, parked, "no partition parks")
		return caughtUp(t, e.db, DefaultProjection, want)
	}, "every partition reaches the log")
	for _, w := range ws {
		require.NoError(t, w.stop())
	}
	requireReplayEqual(t, e.db)
}

// waitCtx waits d or until ctx ends; it reports whether ctx is still live.
func waitCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// relayOnce is relay that returns errors instead of failing the test.
func (e *env) relayOnce(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for {
		batch, err := e.db.Fetch(ctx, e.published, 500)
		if err != nil || len(batch) == 0 {
			return err
		}
		for _, ev := range batch {
			p := Partition(ev.SubjectID, e.parts)
			m := wire.Encode(wire.Message{Event: ev, LogID: e.logID, Partition: p, Previous: e.prev[p]}, 0)
			if _, err := e.js.PublishMsg(ctx, m); err != nil {
				return err
			}
			e.published, e.prev[p] = ev.Sequence, ev.Sequence
		}
	}
}
