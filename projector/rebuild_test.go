package projector

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// TestRebuildUnderLiveLoad rebuilds the registry while commands keep
// arriving and two workers keep the live version current: every get and
// list answers with complete data throughout, the rebuilt version replaces
// a live one that held a row no event determines, and the views equal a
// replay afterwards.
func TestRebuildUnderLiveLoad(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	const before = 3000
	appendPackages(t, e.db, 0, before)
	e.relay(t)
	for _, id := range []string{"live-a", "live-b"} {
		e.start(t, fastConfig(id))
	}
	require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, 60*time.Second, 20*time.Millisecond)
	plantStrayRow(t, e)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var written atomic.Int64
	written.Store(before)
	wg.Add(1)
	go func() { // writer: new packages, relayed as they commit
		defer wg.Done()
		for n := before; ; n += 20 {
			select {
			case <-stop:
				return
			default:
			}
			appendPackages(t, e.db, n, n+20)
			written.Store(int64(n + 20))
			e.relay(t)
		}
	}()
	var reads atomic.Int64
	readErr := make(chan error, 2)
	read := func(check func(i int) error) { // what was projected before the rebuild stays visible
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := check(i); err != nil {
				readErr <- err
				return
			}
			reads.Add(1)
		}
	}
	wg.Add(2)
	go read(func(i int) error { return checkGet(ctx, e.db, i%before) })
	go read(func(int) error { return checkList(ctx, e.db, before) })

	var phases sync.Map
	res, err := Rebuild(ctx, e.db, e.js, RebuildConfig{Logger: testenv.Logger(t), SwitchLag: 100,
		Progress: func(p RebuildProgress) { phases.Store(p.Phase, true) }})
	close(stop)
	wg.Wait()
	require.NoError(t, err)
	select {
	case err := <-readErr:
		t.Fatalf("a read during the rebuild saw incomplete data: %v", err)
	default:
	}
	t.Logf("rebuild: %+v, %d reads, %d packages written", res, reads.Load(), written.Load())
	require.Equal(t, 2, res.Version)
	require.Equal(t, 1, res.Retired)
	require.Greater(t, reads.Load(), int64(100))
	for _, ph := range []string{PhaseLoad, PhaseFollow, PhaseSwitch} {
		_, ok := phases.Load(ph)
		require.True(t, ok, "phase %s reported", ph)
	}
	requireVersions(t, e.db, map[int]string{1: store.VersionDropped, 2: store.VersionLive})

	e.relay(t)
	require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, 60*time.Second, 20*time.Millisecond)
	_, err = e.db.Package(ctx, "stray")
	require.ErrorIs(t, err, store.ErrNotFound, "the stray row of version 1 went with it")
	requireReplayEqual(t, e.db)
}

// plantStrayRow puts a package row no event determines into the live
// views: a rebuilt version does not have it.
func plantStrayRow(t *testing.T, e *env) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), e.pg.URL)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	_, err = conn.Exec(context.Background(), `INSERT INTO `+pgx.Identifier{e.pg.Schema, "artifact_packages"}.Sanitize()+`
		(package_id, name, version, status, created_by, created_at, created_sequence, last_sequence)
		VALUES ('stray', 'stray', '1', 'open', 'nobody', now(), 0, 0)`)
	require.NoError(t, err)
}

// checkGet reads package i, projected before the rebuild began: it must
// be there in its final state.
func checkGet(ctx context.Context, db store.DB, i int) error {
	p, err := db.Package(ctx, storetest.PackageID(i))
	if err != nil {
		return err
	}
	if want := map[bool]string{true: store.StatusFinalized, false: store.StatusOpen}[i%2 == 0]; p.Status != want {
		return errors.New("package " + p.ID + " is " + p.Status + ", want " + want)
	}
	return nil
}

// checkList pages through the whole list: it must hold every package
// below before, projected before the rebuild began.
func checkList(ctx context.Context, db store.DB, before int) error {
	seen, after := 0, ""
	for {
		page, err := db.ListPackages(ctx, store.PackageFilter{After: after, Limit: 1000})
		if err != nil {
			return err
		}
		for _, p := range page {
			if p.ID < storetest.PackageID(before) && p.ID >= storetest.PackageID(0) {
				seen++
			}
		}
		if len(page) < 1000 {
			break
		}
		after = page[len(page)-1].ID
	}
	if seen < before {
		return errors.New("list returned fewer packages than were projected before the rebuild")
	}
	return nil
}

// requireVersions checks the registry's versions in the catalog.
func requireVersions(t *testing.T, db store.DB, want map[int]string) {
	t.Helper()
	vs, err := db.(store.Versions).ProjectionVersions(context.Background())
	require.NoError(t, err)
	got := map[int]string{}
	for _, v := range vs {
		if v.Projection == DefaultProjection {
			got[v.Version] = v.State
		}
	}
	require.Equal(t, want, got)
}

// TestRebuildKilledAndRestarted kills a rebuild after its load (the rerun
// resumes the version) and another during its load (the rerun abandons it
// and starts a new one); the live views stay as they were until a switch.
func TestRebuildKilledAndRestarted(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	appendPackages(t, e.db, 0, 1500)
	e.relay(t)
	e.start(t, fastConfig("live"))
	require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, 60*time.Second, 20*time.Millisecond)
	plantStrayRow(t, e)
	live, err := e.db.DumpViews(ctx)
	require.NoError(t, err)

	killed := errors.New("killed after the load")
	_, err = Rebuild(ctx, e.db, e.js, RebuildConfig{Logger: testenv.Logger(t), afterLoad: func() error { return killed }})
	require.ErrorIs(t, err, killed)
	requireVersions(t, e.db, map[int]string{1: store.VersionLive, 2: store.VersionBuilding})
	requireDump(t, e.db, live)

	appendPackages(t, e.db, 1500, 1600)
	e.relay(t)
	res, err := Rebuild(ctx, e.db, e.js, RebuildConfig{Logger: testenv.Logger(t)})
	require.NoError(t, err)
	require.True(t, res.Resumed)
	require.Equal(t, 2, res.Version)
	requireVersions(t, e.db, map[int]string{1: store.VersionDropped, 2: store.VersionLive})

	lctx, kill := context.WithCancel(ctx)
	_, err = Rebuild(lctx, e.db, e.js, RebuildConfig{Logger: testenv.Logger(t), Progress: func(p RebuildProgress) {
		if p.Phase == PhaseLoad {
			kill()
		}
	}})
	require.Error(t, err)
	requireVersions(t, e.db, map[int]string{1: store.VersionDropped, 2: store.VersionLive, 3: store.VersionBuilding})
	res, err = Rebuild(ctx, e.db, e.js, RebuildConfig{Logger: testenv.Logger(t)})
	require.NoError(t, err)
	require.False(t, res.Resumed)
	require.Equal(t, 4, res.Version)
	requireVersions(t, e.db, map[int]string{1: store.VersionDropped, 2: store.VersionDropped, 3: store.VersionDropped, 4: store.VersionLive})
	requireSchemas(t, e, 0)

	require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, 60*time.Second, 20*time.Millisecond)
	requireReplayEqual(t, e.db)
}

func requireDump(t *testing.T, db store.DB, want string) {
	t.Helper()
	got, err := db.DumpViews(context.Background())
	require.NoError(t, err)
	require.Equal(t, want, got, "the live views changed")
}

// requireSchemas checks how many version schemas of the log's schema exist.
func requireSchemas(t *testing.T, e *env, want int) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), e.pg.URL)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var n int
	require.NoError(t, conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_namespace WHERE nspname LIKE $1`,
		e.pg.Schema+`\_registry\_v%`).Scan(&n))
	require.Equal(t, want, n)
}

func TestRebuildRefusedOnSQLite(t *testing.T) {
	e := setupSQLite(t)
	_, err := Rebuild(context.Background(), e.db, e.js, RebuildConfig{})
	require.ErrorIs(t, err, ErrRebuildUnsupported)
	requireVersions(t, e.db, map[int]string{1: store.VersionLive})
}

func TestRebuildRefusedWhileAnotherRuns(t *testing.T) {
	e := setup(t)
	release, _, err := e.db.TryLock(context.Background(), "rebuild-"+DefaultProjection)
	require.NoError(t, err)
	defer release()
	_, err = Rebuild(context.Background(), e.db, e.js, RebuildConfig{})
	require.ErrorIs(t, err, ErrRebuildRunning)
	requireVersions(t, e.db, map[int]string{1: store.VersionLive})
}

// TestRebuildWhileTheRelayIsDown: the stream stops at what was relayed,
// so neither version can follow it to the head; the rebuild switches once
// it has caught up with the live version and applies the rest from the
// log, instead of waiting for the relay.
func TestRebuildWhileTheRelayIsDown(t *testing.T) {
	e := setup(t)
	appendPackages(t, e.db, 0, 1000)
	e.relay(t)
	e.start(t, fastConfig("live"))
	require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, 60*time.Second, 20*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := Rebuild(ctx, e.db, e.js, RebuildConfig{Logger: testenv.Logger(t), SwitchLag: 10,
		afterLoad: func() error { appendPackages(t, e.db, 1000, 3000); return nil }}) // committed, not relayed
	head, herr := e.db.Head(context.Background())
	require.NoError(t, herr)
	require.NoError(t, err, "the rebuild waited for the relay")
	require.Equal(t, head, res.SwitchedAt, "the switch applied the log up to its head")
	e.relay(t)
	require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, 60*time.Second, 20*time.Millisecond)
	requireReplayEqual(t, e.db)
}
