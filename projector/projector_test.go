package projector

import (
	"context"
	"hash/fnv"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// TestPartitionMatchesServerTransform: the relay's partition is what
// nats-server's partition() mapping computes, so a stream transform and
// the relay put a subject in the same partition.
func TestPartitionMatchesServerTransform(t *testing.T) {
	t.Parallel()
	tr, err := server.NewSubjectTransform("artifactstore.events.*.*.*.*", "{{partition(16,4)}}")
	require.NoError(t, err)
	for i := range 500 {
		id := storetest.PackageID(i)
		got, err := tr.Match("artifactstore.events.v1.package.created." + id)
		require.NoError(t, err)
		require.Equal(t, strconv.Itoa(Partition(id, 16)), got, id)
		h := fnv.New32a()
		_, _ = h.Write([]byte(id))
		require.Equal(t, int(h.Sum32()%16), Partition(id, 16))
	}
}

func TestSingleWorkerAppliesAndStopsCleanly(t *testing.T) {
	t.Parallel()
	e := setup(t)
	appendPackages(t, e.db, 0, 200)
	e.relay(t)
	r := e.start(t, fastConfig("solo"))
	want := expected(t, e.db, e.parts)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "checkpoints reach the log")
	// Live events keep flowing.
	appendPackages(t, e.db, 200, 260)
	e.relay(t)
	want = expected(t, e.db, e.parts)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "live events applied")
	require.Equal(t, e.parts, len(owned(t, e.db, "solo")), "one worker leases every partition")
	require.True(t, r.w.Healthy(), "its renewals succeed")
	require.WithinDuration(t, time.Now(), r.w.LastProgress(), 5*time.Second, "its ownership loop goes round")
	require.NoError(t, r.stop())
	require.Empty(t, owned(t, e.db, "solo"), "a stopped worker gives its leases back")
	require.Equal(t, 390.0, r.metric(t, "artifactstore_projector_events_applied_total", nil))
	st, err := Inspect(context.Background(), e.db, DefaultProjection)
	require.NoError(t, err)
	require.Len(t, st.Partitions, e.parts)
	require.Zero(t, st.ParkedPartitions)
	requireReplayEqual(t, e.db)
	// After the replay every partition's checkpoint is the head: a worker
	// started now applies nothing twice.
	st, err = Inspect(context.Background(), e.db, DefaultProjection)
	require.NoError(t, err)
	require.Zero(t, st.Lag)
	r2 := e.start(t, fastConfig("after-replay"))
	appendPackages(t, e.db, 260, 270)
	e.relay(t)
	want = expected(t, e.db, e.parts)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "events after replay applied")
	require.NoError(t, r2.stop())
	require.Equal(t, 15.0, r2.metric(t, "artifactstore_projector_events_applied_total", nil), "only the events after the replay")
	requireReplayEqual(t, e.db)
}

// TestMetricReadsFailOnUnknownNames: a test reading a metric by a
// misspelt name fails instead of reading zero.
func TestMetricReadsFailOnUnknownNames(t *testing.T) {
	t.Parallel()
	m, err := newMetrics(nil)
	require.NoError(t, err)
	ft := &fakeT{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		testenv.RequireMetricDefined(ft, "artifactstore_projector_redelivered_total", m.collectors()...)
	}()
	<-done
	require.True(t, ft.failed, "an unknown metric name fails")
	testenv.RequireMetricDefined(t, "artifactstore_projector_events_applied_total", m.collectors()...)
}

// fakeT records Fatalf instead of failing the real test.
type fakeT struct {
	testing.TB
	failed bool
}

func (f *fakeT) Helper() {}
func (f *fakeT) Fatalf(string, ...any) {
	f.failed = true
	runtimeGoexit()
}

func TestUnknownEventTypesAdvanceCheckpointAndChangeNothing(t *testing.T) {
	t.Parallel()
	e := setup(t)
	appendPackages(t, e.db, 0, 50)
	e.relay(t)
	r := e.start(t, fastConfig("u"))
	want := expected(t, e.db, e.parts)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "known events applied")
	before, err := e.db.DumpViews(context.Background())
	require.NoError(t, err)
	var unknown []store.Event
	for i := range 30 {
		ev, err := store.NewEvent("v9.widget.spun", "widget", storetest.PackageID(i), "ci", []byte(`{"rpm":33}`))
		require.NoError(t, err)
		unknown = append(unknown, ev)
	}
	storetest.Append(t, e.db, unknown...)
	e.relay(t)
	want = expected(t, e.db, e.parts)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "unknown events advance the checkpoints")
	after, err := e.db.DumpViews(context.Background())
	require.NoError(t, err)
	require.Equal(t, before, after)
	require.NoError(t, r.stop())
	requireReplayEqual(t, e.db)
}

func TestSQLiteWorker(t *testing.T) {
	t.Parallel()
	e := setupSQLite(t)
	appendPackages(t, e.db, 0, 100)
	e.relay(t)
	a, b := e.start(t, fastConfig("a")), e.start(t, fastConfig("b"))
	want := expected(t, e.db, e.parts)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "checkpoints reach the log")
	require.NoError(t, a.stop())
	require.NoError(t, b.stop())
	requireReplayEqual(t, e.db)
}

// TestIdlePartitionsFollowTheHead: partitions that receive no events move
// their checkpoints up to the log head, so status reports zero lag once the
// projection has applied everything.
func TestIdlePartitionsFollowTheHead(t *testing.T) {
	t.Parallel()
	e := setup(t)
	// Every event goes to partition 2.
	var events []store.Event
	for i := 0; len(events) < 20; i++ {
		id := "pkg-" + strconv.Itoa(i)
		if Partition(id, e.parts) == 2 {
			events = append(events, storetest.Created(t, id, "idle", strconv.Itoa(i), "alice"))
		}
	}
	storetest.Append(t, e.db, events...)
	e.relay(t)
	r := e.start(t, fastConfig("idle"))
	ctx := context.Background()
	testenv.Eventually(t, 30*time.Second, func() bool {
		st, err := Inspect(ctx, e.db, DefaultProjection)
		require.NoError(t, err)
		return st.Head == 20 && st.Lag == 0 && len(st.Partitions) == e.parts
	}, "every partition, idle ones included, reaches the head")
	st, err := Inspect(ctx, e.db, DefaultProjection)
	require.NoError(t, err)
	require.Equal(t, e.parts, st.LogPartitions)
	for _, p := range st.Partitions {
		require.Equal(t, int64(20), p.Checkpoint, "partition %d", p.Partition)
	}
	require.NoError(t, r.stop())
	requireReplayEqual(t, e.db)
}

// TestIdleCheckpointStopsBelowUnpublishedEvents: while the relay is down,
// an idle partition moves its checkpoint only up to just below its first
// event that the stream has not delivered, never past it (DESIGN.md,
// guarantee 7); once the relay is back every event is applied.
func TestIdleCheckpointStopsBelowUnpublishedEvents(t *testing.T) {
	t.Parallel()
	e := setup(t)
	appendPackages(t, e.db, 0, 40)
	e.relay(t)
	r := e.start(t, fastConfig("outage"))
	want := expected(t, e.db, e.parts)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "published events applied")
	// The relay is down: 200 more events commit, unpublished.
	appendPackages(t, e.db, 40, 240)
	first := map[int]int64{}
	for ev, err := range store.All(context.Background(), e.db, want[0], 0) {
		require.NoError(t, err)
		if p := Partition(ev.SubjectID, e.parts); first[p] == 0 && ev.Sequence > 60 {
			first[p] = ev.Sequence
		}
	}
	// Give idle checks time to run several times.
	testenv.Eventually(t, 10*time.Second, func() bool {
		return r.metric(t, "artifactstore_projector_checkpoint", nil) > 0
	}, "checkpoints reported")
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		cps, err := e.db.Checkpoints(context.Background())
		require.NoError(t, err)
		for _, c := range cps {
			if f := first[c.Partition]; f > 0 {
				require.Less(t, c.Sequence, f, "partition %d's checkpoint passed its unpublished event %d", c.Partition, f)
			}
		}
		time.Sleep(50 * time.Millisecond) // sampling, not synchronising
	}
	e.relay(t)
	want = expected(t, e.db, e.parts)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "events applied after the outage")
	require.NoError(t, r.stop())
	requireReplayEqual(t, e.db)
}

// TestPartitionCountRefused: a worker configured with a partition count
// other than the log's refuses to run, as does one finding checkpoints of
// another count at different sequences; after replay --reset (uniform
// checkpoints) the log's count takes over.
func TestPartitionCountRefused(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	appendPackages(t, e.db, 0, 40)
	e.relay(t)
	refused := func(cfg Config) {
		t.Helper()
		r := e.start(t, cfg)
		select {
		case err := <-r.done:
			close(r.done) // Run has returned: stop() must not wait for it again
			require.ErrorIs(t, err, ErrPartitionsChanged)
		case <-time.After(30 * time.Second):
			t.Fatal("the worker was not refused")
		}
	}
	cfg := fastConfig("eight")
	cfg.Partitions = 8
	refused(cfg)
	require.NoError(t, e.db.InTx(ctx, func(tx store.Tx) error {
		for p, seq := range []int64{10, 25, 3} {
			if err := tx.AdvanceCheckpoint(ctx, DefaultProjection, p, 0, seq); err != nil {
				return err
			}
		}
		return nil
	}))
	refused(fastConfig("old-checkpoints"))
	_, err := store.Replay(ctx, e.db, store.RegistryViews{}, store.ReplayOptions{Reset: true, Partitions: 3})
	require.NoError(t, err)
	cfg = fastConfig("log-count")
	cfg.Partitions = e.parts
	r := e.start(t, cfg)
	appendPackages(t, e.db, 40, 60)
	e.relay(t)
	want := expected(t, e.db, e.parts)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "the log's count applies the new events")
	require.NoError(t, r.stop())
	requireReplayEqual(t, e.db)
}

// TestConcurrencyBoundsTransactions: no more than Concurrency partitions
// apply a batch at once; the others take what arrived meanwhile.
func TestConcurrencyBoundsTransactions(t *testing.T) {
	t.Parallel()
	e := setup(t)
	appendPackages(t, e.db, 0, 600)
	e.relay(t)
	var inTx, most atomic.Int32
	cfg := fastConfig("bounded")
	cfg.Concurrency = 2
	cfg.hooks.beforeTx = func(int) {
		n := inTx.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
	}
	cfg.hooks.afterCommit = func(int, int64) error { inTx.Add(-1); return nil }
	r := e.start(t, cfg)
	want := expected(t, e.db, e.parts)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "every partition reaches the log")
	require.NoError(t, r.stop())
	require.Equal(t, int32(2), most.Load(), "at most Concurrency batches at once, and that many under load")
	requireReplayEqual(t, e.db)
}
