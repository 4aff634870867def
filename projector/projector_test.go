package projector

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/storetest"
)

func TestPartitionMatchesServerTransform(t *testing.T) {
	t.Parallel()
	e := setup(t)
	appendPackages(t, e.db, 0, 300)
	e.relay(t)
	w, err := New(e.db, e.js, Config{Partitions: 7, Logger: testenv.Logger(t)})
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, w.setup(ctx))
	testenv.Eventually(t, 10*time.Second, func() bool {
		s, err := e.js.Stream(ctx, w.derived)
		require.NoError(t, err)
		return s.CachedInfo().State.Msgs == 450
	}, "derived stream sources every event")
	cons, err := e.js.OrderedConsumer(ctx, w.derived, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	for range 450 {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		require.NoError(t, err)
		ev, err := Decode(m.Subject(), m.Headers(), m.Data(), e.logID)
		require.NoError(t, err)
		want := partitionedPrefix + itoa(Partition(ev.SubjectID, 7)) + "." + ev.Type + "." + ev.SubjectID
		require.Equal(t, want, m.Subject())
	}
}

func TestSingleWorkerAppliesAndStopsCleanly(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const n = 4
	appendPackages(t, e.db, 0, 200)
	e.relay(t)
	r := e.start(t, fastConfig("solo", n))
	want := expected(t, e.db, n)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "checkpoints reach the log")
	// Live events keep flowing.
	appendPackages(t, e.db, 200, 260)
	e.relay(t)
	want = expected(t, e.db, n)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "live events applied")
	require.NoError(t, r.stop())
	require.Equal(t, 390.0, r.metric(t, "artifactstore_projector_events_applied_total", nil))
	st, err := Inspect(context.Background(), e.db, DefaultProjection)
	require.NoError(t, err)
	require.Len(t, st.Partitions, n)
	require.Zero(t, st.ParkedPartitions)
	requireReplayEqual(t, e.db, n)
	// After the replay every partition's checkpoint is the head: a worker
	// started now applies nothing twice.
	st, err = Inspect(context.Background(), e.db, DefaultProjection)
	require.NoError(t, err)
	require.Zero(t, st.Lag)
	r2 := e.start(t, fastConfig("after-replay", n))
	appendPackages(t, e.db, 260, 270)
	e.relay(t)
	want = expected(t, e.db, n)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "events after replay applied")
	require.NoError(t, r2.stop())
	requireReplayEqual(t, e.db, n)
}

func TestUnknownEventTypesAdvanceCheckpointAndChangeNothing(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const n = 3
	appendPackages(t, e.db, 0, 50)
	e.relay(t)
	r := e.start(t, fastConfig("u", n))
	want := expected(t, e.db, n)
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
	want = expected(t, e.db, n)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "unknown events advance the checkpoints")
	after, err := e.db.DumpViews(context.Background())
	require.NoError(t, err)
	require.Equal(t, before, after)
	require.NoError(t, r.stop())
	requireReplayEqual(t, e.db, n)
}

func itoa(i int) string { return strconv.Itoa(i) }

var _ = atomic.Bool{}

func TestSQLiteWorker(t *testing.T) {
	t.Parallel()
	e := setupSQLite(t)
	const n = 3
	appendPackages(t, e.db, 0, 100)
	e.relay(t)
	a, b := e.start(t, fastConfig("a", n)), e.start(t, fastConfig("b", n))
	want := expected(t, e.db, n)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "checkpoints reach the log")
	require.NoError(t, a.stop())
	require.NoError(t, b.stop())
	requireReplayEqual(t, e.db, n)
}

// TestIdlePartitionsFollowTheHead: partitions that receive no events move
// their checkpoints up to the log head, so status reports zero lag once the
// projection has applied everything.
func TestIdlePartitionsFollowTheHead(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const n = 4
	// Every event goes to the partition of "pkg-a..." ids that share one partition.
	var events []store.Event
	for i := 0; len(events) < 20; i++ {
		id := "pkg-" + strconv.Itoa(i)
		if Partition(id, n) == 2 {
			events = append(events, storetest.Created(t, id, "idle", strconv.Itoa(i), "alice"))
		}
	}
	storetest.Append(t, e.db, events...)
	e.relay(t)
	r := e.start(t, fastConfig("idle", n))
	ctx := context.Background()
	testenv.Eventually(t, 30*time.Second, func() bool {
		st, err := Inspect(ctx, e.db, DefaultProjection)
		require.NoError(t, err)
		return st.Head == 20 && st.Lag == 0 && len(st.Partitions) == n
	}, "every partition, idle ones included, reaches the head")
	st, err := Inspect(ctx, e.db, DefaultProjection)
	require.NoError(t, err)
	for _, p := range st.Partitions {
		require.Equal(t, int64(20), p.Checkpoint, "partition %d", p.Partition)
	}
	require.NoError(t, r.stop())
	requireReplayEqual(t, e.db, n)
}

// TestPartitionCountChange: a new partition count is refused while the
// partitions' checkpoints differ (subjects would move to partitions whose
// checkpoints say nothing about them, and their events would be skipped),
// and accepted once they all hold the same sequence, as after a replay.
func TestPartitionCountChange(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	appendPackages(t, e.db, 0, 40)
	e.relay(t)
	require.NoError(t, e.db.InTx(ctx, func(tx store.Tx) error {
		for p, seq := range []int64{10, 25, 3} {
			if err := tx.AdvanceCheckpoint(ctx, DefaultProjection, p, 0, seq); err != nil {
				return err
			}
		}
		return nil
	}))
	for _, n := range []int{2, 4} {
		r := e.start(t, fastConfig("resized-"+strconv.Itoa(n), n))
		select {
		case err := <-r.done:
			close(r.done) // Run has returned: stop() must not wait for it again
			require.ErrorIs(t, err, ErrPartitionsChanged, "%d partitions", n)
		case <-time.After(30 * time.Second):
			t.Fatalf("a worker with %d partitions was not refused", n)
		}
	}
	// After replay --reset every checkpoint is the head: 4 partitions are fine
	// and the views still equal a replay once new events are applied.
	_, err := store.Replay(ctx, e.db, store.RegistryViews{}, store.ReplayOptions{Reset: true})
	require.NoError(t, err)
	r := e.start(t, fastConfig("resized", 4))
	appendPackages(t, e.db, 40, 60)
	e.relay(t)
	want := expected(t, e.db, 4)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "4 partitions apply the new events")
	require.NoError(t, r.stop())
	requireReplayEqual(t, e.db, 4)
}
