package storetest

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/store"
)

// fenceParts is the partition count of the simulated projector.
const fenceParts = 4

func fencePartition(id string) int {
	h := fnv.New32a()
	h.Write([]byte(id))
	return int(h.Sum32() % fenceParts)
}

// testReplayResetBesideWorker runs replay with Reset again and again while
// a simulated projector worker applies the log (its exact transaction:
// compare-and-set checkpoint, view reads, view writes) and a writer keeps
// appending. Replay must fence the worker: no run fails, no checkpoint
// ever moves backwards (sampled, and seen by the worker when its
// compare-and-set fails), and the views end as a fresh replay builds them.
func testReplayResetBesideWorker(t *testing.T, db store.DB) {
	ctx := ctxT(t)
	a := &fenceAppender{db: db}
	for range 100 {
		require.NoError(t, a.appendOne(ctx))
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	run := func(fn func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(); err != nil {
				errs <- err
				stop.Store(true)
			}
		}()
	}
	appended := make(chan struct{})
	run(func() error {
		defer close(appended)
		tick := time.NewTicker(2 * time.Millisecond) // pacing, not synchronisation
		defer tick.Stop()
		for !stop.Load() {
			if err := a.appendOne(ctx); err != nil {
				return fmt.Errorf("appending: %w", err)
			}
			<-tick.C
		}
		return nil
	})
	w := &fenceWorker{db: db}
	run(func() error { return w.run(ctx, &stop, appended) })
	samplerDone, sampled := make(chan struct{}), make(chan error, 1)
	go func() { sampled <- sampleCheckpoints(ctx, db, samplerDone) }()

	// A replay may lose a race the database settles by aborting it (SQLite's
	// busy timeout under this load): that is a store.ErrUnavailable, worth a
	// retry; any other error fails the test.
	var last int64
	runs, retries := 0, 0
	for runs < 20 && !stop.Load() {
		// Each run starts after more appends, which the worker races to apply.
		require.Eventually(t, func() bool {
			h, err := db.Head(ctx)
			require.NoError(t, err)
			if h < last+5 && !stop.Load() {
				return false
			}
			last = h
			return true
		}, time.Minute, time.Millisecond)
		_, err := store.Replay(ctx, db, store.RegistryViews{}, store.ReplayOptions{Reset: true, Partitions: fenceParts})
		if err != nil && store.Temporary(err) && retries < 10 {
			t.Logf("replay --reset run %d: %v (retrying)", runs, err)
			retries++
			continue
		}
		require.NoError(t, err, "replay --reset run %d beside a live worker", runs)
		runs++
	}
	stop.Store(true)
	<-appended
	wg.Wait() // the worker returns once it has applied the whole log
	close(samplerDone)
	require.NoError(t, <-sampled)
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	head, err := db.Head(ctx)
	require.NoError(t, err)
	// At least 5 appends before each run after the first (the 100 came
	// before any).
	require.GreaterOrEqual(t, head, int64(100+5*(runs-1)), "appends ran beside the replays")
	worker, err := db.DumpViews(ctx)
	require.NoError(t, err)
	_, err = store.Replay(ctx, db, store.RegistryViews{}, store.ReplayOptions{Reset: true, Partitions: fenceParts})
	require.NoError(t, err)
	fresh, err := db.DumpViews(ctx)
	require.NoError(t, err)
	require.Equal(t, fresh, worker, "the views the worker and the replays left equal a fresh replay")
}

// fenceAppender appends creates and finalizes of earlier creates.
type fenceAppender struct {
	db   store.DB
	n    int
	open []string
}

func (a *fenceAppender) appendOne(ctx context.Context) error {
	var e store.Event
	var err error
	if len(a.open) > 0 && a.n%3 == 2 {
		id := a.open[0]
		a.open = a.open[1:]
		e, err = store.NewEvent(store.TypePackageFinalized, store.SubjectKindPackage, id, "bob",
			fmt.Appendf(nil, `{"package_id":%q,"manifest_digest":"%064x"}`, id, a.n))
	} else {
		id := PackageID(a.n)
		a.open = append(a.open, id)
		e, err = store.NewEvent(store.TypePackageCreated, store.SubjectKindPackage, id, "alice",
			fmt.Appendf(nil, `{"package_id":%q,"name":"n","version":"%d","retention":{"policy":"keep_forever"}}`, id, a.n))
	}
	if err != nil {
		return err
	}
	a.n++
	return a.db.InTx(ctx, func(tx store.Tx) error { _, err := tx.Append(ctx, e); return err })
}

// fenceWorker is a projector worker reduced to its transactions: it reads
// the log in order as the stream would deliver it and applies each
// partition's events with a compare-and-set of that partition's checkpoint
// in the view transaction, as projector.Worker.apply does.
type fenceWorker struct {
	db store.DB
	cp [fenceParts]int64
}

func (w *fenceWorker) run(ctx context.Context, stop *atomic.Bool, appended <-chan struct{}) error {
	var cursor int64
	for {
		signal := w.db.AppendSignal()
		events, err := w.db.Fetch(ctx, cursor, 25)
		if err != nil {
			return fmt.Errorf("worker: fetching: %w", err)
		}
		var byPart [fenceParts][]store.Event
		for _, e := range events {
			p := fencePartition(e.SubjectID)
			byPart[p] = append(byPart[p], e)
		}
		for p, evs := range byPart {
			if err := w.apply(ctx, p, evs); err != nil {
				return err
			}
		}
		if len(events) > 0 {
			cursor = events[len(events)-1].Sequence
			continue
		}
		if stop.Load() {
			select {
			case <-appended: // nothing more will come: the log is applied
				return nil
			default:
			}
		}
		select {
		case <-signal:
		case <-appended:
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// apply applies evs (one partition's, in order), retrying after a lost
// compare-and-set with the checkpoint read back, which must not be behind
// the worker's: the stream would never deliver what lies between.
func (w *fenceWorker) apply(ctx context.Context, p int, evs []store.Event) error {
	for {
		var todo []store.Event
		for _, e := range evs {
			if e.Sequence > w.cp[p] {
				todo = append(todo, e)
			}
		}
		if len(todo) == 0 {
			return nil
		}
		to := todo[len(todo)-1].Sequence
		err := w.db.InTx(ctx, func(tx store.Tx) error { return w.applyTx(ctx, tx, p, todo, to) })
		switch {
		case err == nil:
			w.cp[p] = to
			return nil
		case store.Temporary(err):
			continue
		case !errors.Is(err, store.ErrCheckpointMoved):
			return fmt.Errorf("worker: partition %d: %w", p, err)
		}
		var cp int64
		if err := w.db.InTx(ctx, func(tx store.Tx) error {
			var err error
			cp, err = tx.Checkpoint(ctx, "registry", p)
			return err
		}); err != nil {
			return fmt.Errorf("worker: reading checkpoint: %w", err)
		}
		if cp < w.cp[p] {
			return fmt.Errorf("worker: partition %d's checkpoint moved back from %d to %d", p, w.cp[p], cp)
		}
		w.cp[p] = cp
	}
}

func (w *fenceWorker) applyTx(ctx context.Context, tx store.Tx, p int, todo []store.Event, to int64) error {
	views := store.NewBufferedViews(tx, false)
	if br, ok := tx.(store.BatchReader); ok {
		ids := make([]string, len(todo))
		for i, e := range todo {
			ids[i] = e.SubjectID
		}
		ps, rs, err := br.AdvanceCheckpointAndRead(ctx, "registry", p, w.cp[p], to, ids)
		if err != nil {
			return err
		}
		views.Preload(ids, ps, rs)
	} else if err := tx.AdvanceCheckpoint(ctx, "registry", p, w.cp[p], to); err != nil {
		return err
	}
	for _, e := range todo {
		if err := (store.RegistryViews{}).Apply(ctx, views, e); err != nil {
			return err
		}
	}
	return views.Flush(ctx)
}

// sampleCheckpoints reads the checkpoints until done and fails when one
// decreases (a row that disappears counts as 0).
func sampleCheckpoints(ctx context.Context, db store.DB, done <-chan struct{}) error {
	last := map[int]int64{}
	tick := time.NewTicker(2 * time.Millisecond) // pacing, not synchronisation
	defer tick.Stop()
	for {
		select {
		case <-done:
			return nil
		case <-tick.C:
		}
		cps, err := db.Checkpoints(ctx)
		if err != nil {
			return fmt.Errorf("sampling checkpoints: %w", err)
		}
		now := map[int]int64{}
		for _, c := range cps {
			if c.Projection == "registry" {
				now[c.Partition] = c.Sequence
			}
		}
		for p, seq := range last {
			if now[p] < seq {
				return fmt.Errorf("partition %d's checkpoint went from %d to %d", p, seq, now[p])
			}
		}
		last = now
	}
}

// testReplayResetNeverMovesBack: a Reset whose target is below a
// checkpoint would rebuild the views short of what a worker acknowledged;
// it is refused and changes nothing.
func testReplayResetNeverMovesBack(t *testing.T, db store.DB) {
	ctx := ctxT(t)
	Append(t, db, Created(t, "p1", "web", "1", "a"), Created(t, "p2", "web", "2", "a"), Created(t, "p3", "web", "3", "a"))
	applied, err := store.Replay(ctx, db, store.RegistryViews{}, store.ReplayOptions{Partitions: 2})
	require.NoError(t, err)
	require.Equal(t, int64(3), applied)
	before, err := db.DumpViews(ctx)
	require.NoError(t, err)
	_, err = store.Replay(ctx, db, store.RegistryViews{}, store.ReplayOptions{Reset: true, UpTo: 2})
	require.ErrorIs(t, err, store.ErrCheckpointAhead)
	require.Contains(t, err.Error(), "registry partition 0 is at 3, the replay would stop at 2")
	after, err := db.DumpViews(ctx)
	require.NoError(t, err)
	require.Equal(t, before, after)
	cps, err := db.Checkpoints(ctx)
	require.NoError(t, err)
	require.Equal(t, []store.Checkpoint{{Projection: "registry", Partition: 0, Sequence: 3},
		{Projection: "registry", Partition: 1, Sequence: 3}}, cps)
}

// testLockCheckpoints: the missing partitions are created at 0, every row
// of the projection (and only of it) is returned.
func testLockCheckpoints(t *testing.T, db store.DB) {
	ctx := ctxT(t)
	require.NoError(t, db.InTx(ctx, func(tx store.Tx) error {
		if err := tx.AdvanceCheckpoint(ctx, "p", 1, 0, 7); err != nil {
			return err
		}
		if err := tx.AdvanceCheckpoint(ctx, "p", 4, 0, 9); err != nil {
			return err
		}
		return tx.AdvanceCheckpoint(ctx, "q", 0, 0, 5)
	}))
	var got []store.Checkpoint
	require.NoError(t, db.InTx(ctx, func(tx store.Tx) error {
		var err error
		got, err = tx.LockCheckpoints(ctx, "p", 3)
		return err
	}))
	require.Equal(t, []store.Checkpoint{{Projection: "p", Partition: 0}, {Projection: "p", Partition: 1, Sequence: 7},
		{Projection: "p", Partition: 2}, {Projection: "p", Partition: 4, Sequence: 9}}, got)
}
