package projector

import (
	"context"
	"errors"
	"fmt"
	"net/url"
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
// mid-way (connection closed under it, no cleanup: its leases are not
// given back), another added later. The survivors take the dead worker's
// partitions once its leases expire, within LeaseTTL plus a heartbeat, and
// the late worker gets its share as fast.
func TestScaleKillAndJoin(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const packages = 2000 // 3000 events
	n := e.parts
	ws := []*worker{e.start(t, fastConfig("w1")), e.start(t, fastConfig("w2")), e.start(t, fastConfig("w3"))}
	share := func(id string) int { return len(owned(t, e.db, id)) }
	testenv.Eventually(t, 30*time.Second, func() bool {
		return share("w1")+share("w2")+share("w3") == n && share("w1") >= n/3 && share("w2") >= n/3 && share("w3") >= n/3
	}, "the three workers share the partitions")
	for chunk := 0; chunk < 10; chunk++ {
		appendPackages(t, e.db, chunk*packages/10, (chunk+1)*packages/10)
		e.relay(t)
		if chunk == 3 {
			testenv.Eventually(t, 30*time.Second, func() bool {
				return ws[1].metric(t, "artifactstore_projector_events_applied_total", nil) > 0
			}, "w2 applies events")
			killed := time.Now()
			ws[1].kill()
			testenv.Eventually(t, 10*time.Second, func() bool {
				return share("w1")+share("w3") == n
			}, "the survivors take the dead worker's partitions")
			took := time.Since(killed)
			t.Logf("failover: survivors hold every partition %s after the kill", took)
			require.Less(t, took, 3*time.Second, "failover within 3 s (default LeaseTTL 2 s)")
		}
		if chunk == 6 {
			joined := time.Now()
			ws = append(ws, e.start(t, fastConfig("w4")))
			testenv.Eventually(t, 10*time.Second, func() bool {
				return share("w4") >= n/3 && share("w1")+share("w3")+share("w4") == n
			}, "the late worker gets its share")
			t.Logf("join: the late worker holds its share %s after it started", time.Since(joined))
			require.Less(t, time.Since(joined), 3*time.Second, "a joining worker takes its share within 3 s")
		}
	}
	want := expected(t, e.db, n)
	testenv.Eventually(t, 60*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "every partition reaches the log")
	require.Positive(t, ws[3].metric(t, "artifactstore_projector_events_applied_total", nil), "the late worker applied events")
	for i, w := range ws {
		if i != 1 {
			require.NoError(t, w.stop())
		}
	}
	requireReplayEqual(t, e.db)
}

// TestKilledAfterCommit: a worker dies right after a commit, before it
// can do anything else; the next worker starts from the checkpoint and
// applies nothing twice.
func TestKilledAfterCommit(t *testing.T) {
	t.Parallel()
	e := setup(t)
	appendPackages(t, e.db, 0, 400)
	e.relay(t)
	var crashedAt atomic.Int64
	cfg := fastConfig("doomed")
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

	next := e.start(t, fastConfig("next"))
	want := expected(t, e.db, e.parts)
	testenv.Eventually(t, 60*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "the next worker finishes")
	require.NoError(t, next.stop())
	requireReplayEqual(t, e.db)
}

// TestPausedWorkerPastLease: a worker stops (heartbeat and partition work,
// as under SIGSTOP) between its lease check and a batch transaction, past
// its lease; the other takes over; when the paused one resumes its
// compare-and-set fails and it applies nothing twice.
func TestPausedWorkerPastLease(t *testing.T) {
	t.Parallel()
	e := setup(t)
	appendPackages(t, e.db, 0, 100)
	e.relay(t)
	a, pause, resume := e.startPausable(t, "a", false, e.open(t))
	want := expected(t, e.db, e.parts)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "a applies the first events")
	pause()
	b := e.start(t, fastConfig("b"))
	want = expected(t, e.db, e.parts)
	testenv.Eventually(t, 60*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "b takes over from the paused worker")
	resume()
	testenv.Eventually(t, 30*time.Second, func() bool {
		return a.metric(t, "artifactstore_projector_errors_total", map[string]string{"kind": "checkpoint_moved"}) > 0
	}, "the resumed worker's stale commit is refused")
	e.finish(t, a, b)
}

// TestStoppedInsideTransaction: a worker stops in the middle of batch
// transactions (their checkpoint rows locked). PostgreSQL ends its idle
// sessions (idle_in_transaction_session_timeout, as cmd sets for
// projectors), the other worker takes the partitions over, and the stopped
// one's commits fail when it resumes.
func TestStoppedInsideTransaction(t *testing.T) {
	t.Parallel()
	e := setup(t)
	appendPackages(t, e.db, 0, 100)
	e.relay(t)
	cfg := e.pg
	cfg.IdleInTransactionTimeout = time.Second
	a, pause, resume := e.startPausable(t, "a", true, testenv.OpenPostgresConfig(t, cfg))
	want := expected(t, e.db, e.parts)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "a applies the first events")
	pause()
	b := e.start(t, fastConfig("b"))
	want = expected(t, e.db, e.parts)
	testenv.Eventually(t, 60*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "b takes over from the stopped worker")
	resume()
	e.finish(t, a, b)
}

// startPausable starts worker id whose heartbeats and partition work stop
// at pause() — before a batch transaction, or inside it before its commit
// when insideTx — until resume(). pause returns once a partition is held.
func (e *env) startPausable(t *testing.T, id string, insideTx bool, db store.DB) (w *worker, pause, resume func()) {
	var paused atomic.Bool
	gate := make(chan struct{})
	var once sync.Once
	resume = func() { paused.Store(false); once.Do(func() { close(gate) }) }
	t.Cleanup(resume)
	held := make(chan int, 16)
	hold := func(p int) {
		if paused.Load() {
			select {
			case held <- p:
			default:
			}
			<-gate
		}
	}
	cfg := fastConfig(id)
	if insideTx {
		cfg.hooks.beforeCommit = hold
	} else {
		cfg.hooks.beforeTx = hold
		// The batch's own deadline must outlast the pause, or the resumed
		// transaction fails on it before it reaches the compare-and-set.
		cfg.ShutdownTimeout = 2 * time.Minute
	}
	cfg.hooks.beforeHeartbeat = func() { hold(-1) }
	w = e.startWith(t, cfg, e.srv.Connect(t), db)
	pause = func() {
		paused.Store(true)
		appendPackages(t, e.db, 100, 200)
		e.relay(t)
		for {
			select {
			case p := <-held:
				if p >= 0 {
					return
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the worker never reached a batch while paused")
			}
		}
	}
	return w, pause, resume
}

// finish appends more events, waits for the workers to apply them, stops
// them and checks the views against a replay.
func (e *env) finish(t *testing.T, ws ...*worker) {
	appendPackages(t, e.db, 10000, 10040)
	e.relay(t)
	want := expected(t, e.db, e.parts)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "the workers go on")
	for _, w := range ws {
		require.NoError(t, w.stop())
	}
	requireReplayEqual(t, e.db)
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
	n := e.parts
	appendPackages(t, e.db, 0, 200)
	e.relay(t)
	poisoned := storetest.PackageID(10)
	pp := Partition(poisoned, n)
	var broken atomic.Bool
	broken.Store(true)
	cfg := fastConfig("p1")
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
		return w.metric(t, "artifactstore_projector_parked", map[string]string{"partition": partLabel(pp)}) == 1
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
	requireReplayEqual(t, e.db)
}

// TestCatchUpFromLog: the stream holds only the last events of a longer
// log; a fresh projection reads the rest from PostgreSQL, then follows the
// stream.
func TestCatchUpFromLog(t *testing.T) {
	t.Parallel()
	e := setup(t)
	appendPackages(t, e.db, 0, 600) // 900 events
	e.relay(t)
	ctx := context.Background()
	s, err := e.js.Stream(ctx, DefaultStream)
	require.NoError(t, err)
	require.NoError(t, s.Purge(ctx, jetstream.WithPurgeKeep(100)))

	w := e.start(t, fastConfig("c"))
	want := expected(t, e.db, e.parts)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "caught up from the log")
	appendPackages(t, e.db, 600, 650)
	e.relay(t)
	want = expected(t, e.db, e.parts)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "then follows the stream")
	require.NoError(t, w.stop())
	require.GreaterOrEqual(t, w.metric(t, "artifactstore_projector_catchup_events_total", nil), 800.0)
	requireReplayEqual(t, e.db)
}

// TestLostMessageAppliedFromLog: the stream lost an event that has later
// events in its partition. The next message's predecessor header names
// it, and the worker applies it from the log before going on: never
// skipped, never parked.
func TestLostMessageAppliedFromLog(t *testing.T) {
	t.Parallel()
	e := setup(t)
	appendPackages(t, e.db, 0, 60)
	ctx := context.Background()
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

	w := e.start(t, fastConfig("g"))
	want := expected(t, e.db, e.parts)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "every partition reaches the log")
	pkg, err := e.db.Package(ctx, lost)
	require.NoError(t, err, "the lost event was applied from the log")
	require.Equal(t, lostEv.Sequence, pkg.CreatedSequence)
	require.NoError(t, w.stop())
	require.Equal(t, 1.0, w.metric(t, "artifactstore_projector_errors_total", map[string]string{"kind": "gap"}))
	require.GreaterOrEqual(t, w.metric(t, "artifactstore_projector_catchup_events_total", nil), 1.0)
	requireReplayEqual(t, e.db)
}

// TestCutOffFromPostgres: one of two workers loses PostgreSQL through a
// partition that keeps its connections open and moves no bytes (NATS is
// fine). It cannot renew its leases, so it stops its partitions, and the
// other worker takes them within the lease TTL; the views reach the log.
// When the partition heals it takes its share back, applying nothing twice.
func TestCutOffFromPostgres(t *testing.T) {
	t.Parallel()
	e := setup(t)
	u, err := url.Parse(e.pg.URL)
	require.NoError(t, err)
	proxy := testenv.NewProxy(t, u.Host)
	u.Host = proxy.Addr()
	cfg := e.pg
	cfg.URL = u.String()
	cfg.IdleInTransactionTimeout = time.Second
	a := e.startWith(t, fastConfig("a"), e.srv.Connect(t), testenv.OpenPostgresConfig(t, cfg))
	b := e.start(t, fastConfig("b"))
	testenv.Eventually(t, 30*time.Second, func() bool {
		return len(owned(t, e.db, "a")) == e.parts/2 && len(owned(t, e.db, "b")) == e.parts/2
	}, "the workers share the partitions")
	appendPackages(t, e.db, 0, 200)
	e.relay(t)
	want := expected(t, e.db, e.parts)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "both apply")

	proxy.Freeze()
	cut := time.Now()
	appendPackages(t, e.db, 200, 400)
	e.relay(t)
	testenv.Eventually(t, 10*time.Second, func() bool { return len(owned(t, e.db, "b")) == e.parts }, "b takes every partition")
	took := time.Since(cut)
	t.Logf("cut off: b holds every partition %s after the partition began", took)
	require.Less(t, took, 3*time.Second, "partitions move within 3 s (default LeaseTTL 2 s)")
	want = expected(t, e.db, e.parts)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "the views reach the log without a")
	testenv.Eventually(t, 10*time.Second, func() bool {
		return a.metric(t, "artifactstore_projector_leases_lost_total", nil) > 0
	}, "a gives its partitions up")
	require.False(t, a.w.Healthy(), "a cut-off worker is not healthy (readiness)")
	require.True(t, b.w.Healthy())

	proxy.Resume()
	testenv.Eventually(t, 30*time.Second, func() bool { return len(owned(t, e.db, "a")) == e.parts/2 }, "a takes its share back")
	e.finish(t, a, b)
}
