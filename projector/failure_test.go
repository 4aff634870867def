package projector

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// TestScaleKillAndJoin: three workers over thousands of events, one killed
// mid-way, another added later. Killing is in-process (connection closed
// under the worker, no ack after its next commit): the closest a test in
// one process gets to SIGKILL. Process-level SIGKILL/SIGSTOP tests belong
// with the binary.
func TestScaleKillAndJoin(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const n = 6
	const packages = 2000 // 3000 events
	ws := []*running{
		e.start(t, fastConfig("w1", n)),
		e.start(t, fastConfig("w2", n)),
		e.start(t, fastConfig("w3", n)),
	}
	owned := func(r *running) float64 { return r.metric(t, "artifactstore_projector_owned_partitions", nil) }
	testenv.Eventually(t, 30*time.Second, func() bool {
		return owned(ws[0]) == n/3 && owned(ws[1]) == n/3 && owned(ws[2]) == n/3
	}, "the three workers share the partitions")
	var killedAt int64
	for chunk := 0; chunk < 10; chunk++ {
		appendPackages(t, e.db, chunk*packages/10, (chunk+1)*packages/10)
		e.relay(t)
		if chunk == 3 {
			// Kill w2 once it has applied something.
			testenv.Eventually(t, 30*time.Second, func() bool {
				return ws[1].metric(t, "artifactstore_projector_events_applied_total", nil) > 0
			}, "w2 applies events")
			require.Error(t, ws[1].kill(), "a killed worker's Run reports the lost connection")
			killedAt = e.published
		}
		if chunk == 6 {
			w4 := e.start(t, fastConfig("w4", n))
			ws = append(ws, w4)
			testenv.Eventually(t, 30*time.Second, func() bool {
				return owned(w4) == n/3 && owned(ws[0])+owned(ws[2])+owned(w4) == n
			}, "the late worker gets its share")
		}
	}
	want := expected(t, e.db, n)
	testenv.Eventually(t, 60*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "every partition reaches the log")
	require.Positive(t, killedAt)
	require.Positive(t, ws[3].metric(t, "artifactstore_projector_events_applied_total", nil), "the late worker took partitions")
	var total float64
	for i, w := range ws {
		if i != 1 {
			require.NoError(t, w.stop())
		}
		total += w.metric(t, "artifactstore_projector_events_applied_total", nil)
	}
	// Every event applied once: a second application of a created or
	// finalized event fails its handler and would park a partition; the
	// counters add up to the log (a killed worker's last commit may be
	// counted without its ack, never twice in the views).
	require.GreaterOrEqual(t, total, float64(3000))
	requireReplayEqual(t, e.db, n)
}

// TestKilledBetweenCommitAndAck: the views and checkpoint commit, the acks
// never go out; the next worker gets the redeliveries and skips them.
func TestKilledBetweenCommitAndAck(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const n = 2
	appendPackages(t, e.db, 0, 400)
	e.relay(t)
	var crashedAt atomic.Int64
	cfg := fastConfig("doomed", n)
	cfg.hooks.afterCommit = func(p int, last int64) error {
		if crashedAt.CompareAndSwap(0, last) {
			return errors.New("killed after commit")
		}
		return nil
	}
	doomed := e.start(t, cfg)
	err := <-doomed.done
	close(doomed.done)
	require.ErrorIs(t, err, errCrashed)
	require.Positive(t, crashedAt.Load())

	next := e.start(t, fastConfig("next", n))
	want := expected(t, e.db, n)
	testenv.Eventually(t, 60*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "the next worker finishes")
	// The committed batch comes again once its ack wait expires.
	testenv.Eventually(t, 30*time.Second, func() bool {
		return next.metric(t, "artifactstore_projector_events_skipped_total", nil) > 0
	}, "redeliveries of the committed batch are skipped")
	require.NoError(t, next.stop())
	requireReplayEqual(t, e.db, n)
}

// TestRedeliveryStorm: handling takes longer than the ack wait, so the
// server redelivers while batches are in flight.
func TestRedeliveryStorm(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const n = 2
	appendPackages(t, e.db, 0, 600) // ≈450 events per partition
	e.relay(t)
	var slow atomic.Int32
	slow.Store(12)
	mk := func(id string) Config {
		cfg := fastConfig(id, n)
		cfg.AckWait = 150 * time.Millisecond
		// A pull request (batch 500, 1s) stays open while its first
		// messages are handled, so the server redelivers into it.
		cfg.FetchWait, cfg.PinnedTTL = time.Second, 3*time.Second
		cfg.BatchSize = 500
		cfg.hooks.beforeCommit = func(int) {
			if slow.Add(-1) >= 0 {
				time.Sleep(400 * time.Millisecond) // handling slower than AckWait (the condition under test, not synchronisation)
			}
		}
		return cfg
	}
	a, b := e.start(t, mk("a")), e.start(t, mk("b"))
	want := expected(t, e.db, n)
	testenv.Eventually(t, 60*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "storm settles")
	require.NoError(t, a.stop())
	require.NoError(t, b.stop())
	redelivered := a.metric(t, "artifactstore_projector_redeliveries_total", nil) + b.metric(t, "artifactstore_projector_redeliveries_total", nil)
	require.Positive(t, redelivered, "the storm produced redeliveries")
	requireReplayEqual(t, e.db, n)
}

// TestPausedWorkerPastPinTime: a worker stops (heartbeat and partition
// work, as under SIGSTOP) holding fetched messages, past its member TTL,
// pin TTL and ack wait; the other takes over; when the paused one resumes
// its compare-and-set fails and it applies nothing twice.
func TestPausedWorkerPastPinTime(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const n = 2
	appendPackages(t, e.db, 0, 100)
	e.relay(t)

	var paused atomic.Bool
	gate := make(chan struct{})
	var once sync.Once
	resume := func() { once.Do(func() { close(gate) }) }
	t.Cleanup(resume)
	held := make(chan int, 16)
	cfgA := fastConfig("a", n)
	cfgA.hooks.beforeTx = func(p int) {
		if paused.Load() {
			select {
			case held <- p:
			default:
			}
			<-gate
		}
	}
	cfgA.hooks.beforeHeartbeat = func() {
		if paused.Load() {
			<-gate
		}
	}
	a := e.start(t, cfgA)
	want := expected(t, e.db, n)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "a applies the first events")

	paused.Store(true)
	appendPackages(t, e.db, 100, 200)
	e.relay(t)
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("a never fetched while paused")
	}
	b := e.start(t, fastConfig("b", n))
	want = expected(t, e.db, n)
	testenv.Eventually(t, 60*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "b takes over from the paused worker")
	paused.Store(false)
	resume()
	// a wakes up with a stale batch: its compare-and-set must fail.
	testenv.Eventually(t, 30*time.Second, func() bool {
		return a.metric(t, "artifactstore_projector_errors_total", map[string]string{"kind": "checkpoint_moved"}) > 0
	}, "the resumed worker's stale commit is refused")
	appendPackages(t, e.db, 200, 240)
	e.relay(t)
	want = expected(t, e.db, n)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "both workers go on")
	require.NoError(t, a.stop())
	require.NoError(t, b.stop())
	requireReplayEqual(t, e.db, n)
}

// brokenViews fails the finalized event of one package while broken is set.
type brokenViews struct {
	store.RegistryViews
	subject string
	broken  *atomic.Bool
}

func (v brokenViews) Apply(ctx context.Context, tx store.ViewTx, e store.Event) error {
	if v.broken.Load() && e.SubjectID == v.subject && e.Type == store.TypePackageFinalized {
		return fmt.Errorf("handler bug on %s", e.SubjectID)
	}
	return v.RegistryViews.Apply(ctx, tx, e)
}

func TestPoisonEventParksOnlyItsPartition(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const n = 4
	appendPackages(t, e.db, 0, 200)
	e.relay(t)
	poisoned := storetest.PackageID(10)
	pp := Partition(poisoned, n)
	var broken atomic.Bool
	broken.Store(true)
	cfg := fastConfig("p1", n)
	cfg.Views = brokenViews{subject: poisoned, broken: &broken}
	w := e.start(t, cfg)

	want := expected(t, e.db, n)
	ctx := context.Background()
	testenv.Eventually(t, 30*time.Second, func() bool {
		st, err := Inspect(ctx, e.db, DefaultProjection)
		require.NoError(t, err)
		if len(st.Partitions) < n || st.ParkedPartitions != 1 || st.Partitions[pp].Parked == nil {
			return false
		}
		for p, cp := range want {
			if p != pp && st.Partitions[p].Checkpoint < cp {
				return false
			}
		}
		return true
	}, "the poisoned partition parks, the others reach the log")
	st, err := Inspect(ctx, e.db, DefaultProjection)
	require.NoError(t, err)
	rec := st.Partitions[pp].Parked
	require.Equal(t, store.ParkedPoison, rec.Reason)
	require.Equal(t, store.TypePackageFinalized, rec.EventType)
	require.Contains(t, rec.Error, "handler bug")
	require.Less(t, st.Partitions[pp].Checkpoint, rec.Sequence)
	testenv.Eventually(t, 10*time.Second, func() bool {
		return w.metric(t, "artifactstore_projector_parked", map[string]string{"partition": itoa(pp)}) == 1
	}, "the parked gauge is set")
	pkg, err := e.db.Package(ctx, poisoned)
	require.NoError(t, err)
	require.Equal(t, store.StatusOpen, pkg.Status, "the poison event is not skipped")

	// New events keep flowing in the healthy partitions.
	appendPackages(t, e.db, 200, 240)
	e.relay(t)
	want = expected(t, e.db, n)
	testenv.Eventually(t, 30*time.Second, func() bool {
		cps, err := e.db.Checkpoints(ctx)
		require.NoError(t, err)
		for _, c := range cps {
			if c.Partition != pp && c.Sequence < want[c.Partition] {
				return false
			}
		}
		return true
	}, "healthy partitions go on")

	// The fix ships: restart with a working handler.
	require.NoError(t, w.stop())
	broken.Store(false)
	fixed := e.start(t, cfg)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "the parked partition resumes")
	require.NoError(t, fixed.stop())
	require.Zero(t, fixed.metric(t, "artifactstore_projector_parked", nil))
	requireReplayEqual(t, e.db, n)
}

// TestCatchUpFromLog: the stream holds only the last events of a longer
// log; a fresh projection reads the rest from PostgreSQL, then switches to
// the stream.
func TestCatchUpFromLog(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const n = 4
	appendPackages(t, e.db, 0, 600) // 900 events
	e.relay(t)
	ctx := context.Background()
	s, err := e.js.Stream(ctx, DefaultStream)
	require.NoError(t, err)
	require.NoError(t, s.Purge(ctx, jetstream.WithPurgeKeep(100)))

	w := e.start(t, fastConfig("c", n))
	want := expected(t, e.db, n)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "caught up from the log")
	appendPackages(t, e.db, 600, 650)
	e.relay(t)
	want = expected(t, e.db, n)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "then follows the stream")
	require.NoError(t, w.stop())
	require.Positive(t, w.metric(t, "artifactstore_projector_catchup_events_total", nil))
	require.GreaterOrEqual(t, w.metric(t, "artifactstore_projector_events_applied_total", nil), 975.0)
	requireReplayEqual(t, e.db, n)
}

// TestGapParksPartition: the stream lost an event (it holds later ones of
// the same partition); the partition stops and says so, the others go on;
// once the event shows up it resumes.
func TestGapParksPartition(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const n = 3
	appendPackages(t, e.db, 0, 60)
	ctx := context.Background()
	// Lose a created event that has later events in its partition.
	lost := storetest.PackageID(20)
	var lostEv store.Event
	for ev, err := range store.All(ctx, e.db, 0, 0) {
		require.NoError(t, err)
		if ev.SubjectID == lost && ev.Type == store.TypePackageCreated {
			lostEv = ev
		}
	}
	require.NotZero(t, lostEv.Sequence)
	e.relayExcept(t, lostEv.Sequence)
	pp := Partition(lost, n)

	cfg := fastConfig("g", n)
	cfg.AckWait = 300 * time.Millisecond
	cfg.GapRetries = 1
	cfg.ParkRetry = 500 * time.Millisecond
	w := e.start(t, cfg)
	want := expected(t, e.db, n)
	testenv.Eventually(t, 30*time.Second, func() bool {
		st, err := Inspect(ctx, e.db, DefaultProjection)
		require.NoError(t, err)
		if len(st.Partitions) < n {
			return false
		}
		rec := st.Partitions[pp].Parked
		if rec == nil || rec.Reason != store.ParkedGap || rec.Sequence != lostEv.Sequence {
			return false
		}
		for p, cp := range want {
			if p != pp && st.Partitions[p].Checkpoint < cp {
				return false
			}
		}
		return st.Partitions[pp].Checkpoint < lostEv.Sequence
	}, "the partition with the gap parks, the others reach the log")
	require.Positive(t, w.metric(t, "artifactstore_projector_errors_total", map[string]string{"kind": "gap"}))
	pkg, err := e.db.Package(ctx, storetest.PackageID(22))
	if Partition(storetest.PackageID(22), n) == pp {
		require.ErrorIs(t, err, store.ErrNotFound, "nothing after the gap is applied")
	}

	// The event shows up (late, out of order): the partition resumes.
	_, err = e.js.PublishMsg(ctx, eventMsg(lostEv, e.logID))
	require.NoError(t, err)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "resumes after the gap is filled")
	require.NoError(t, w.stop())
	_ = pkg
	requireReplayEqual(t, e.db, n)
}
