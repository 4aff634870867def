package projector

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/postgres"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// adminConn is a connection of the database's owner, closed at cleanup.
func adminConn(t *testing.T, e *env) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), e.pg.URL)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// openAs opens a store on the test's schema as a new login role that is a
// member of group, with a pool of conns connections (without migrating:
// the service roles may not).
func openAs(t *testing.T, e *env, group string, conns int32) store.DB {
	t.Helper()
	ctx := context.Background()
	login := testenv.Name("login")
	admin := adminConn(t, e)
	_, err := admin.Exec(ctx, "CREATE ROLE "+login+" LOGIN IN ROLE "+group)
	require.NoError(t, err)
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), e.pg.URL)
		if err == nil {
			_, _ = c.Exec(context.Background(), "DROP ROLE IF EXISTS "+login)
			c.Close(context.Background())
		}
	})
	u, err := url.Parse(e.pg.URL)
	require.NoError(t, err)
	u.User = url.User(login)
	db, err := postgres.Open(ctx, postgres.Config{URL: u.String(), Schema: e.pg.Schema, MaxConns: conns, Logger: testenv.Logger(t)})
	require.NoError(t, err)
	t.Cleanup(db.Close)
	return db
}

// createRoles makes the least-privilege roles on the test's schema,
// dropped at cleanup.
func createRoles(t *testing.T, e *env) postgres.Roles {
	t.Helper()
	roles, err := e.db.(*postgres.DB).CreateRoles(context.Background(), testenv.Name("r"))
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx := context.Background()
		c, err := pgx.Connect(ctx, e.pg.URL)
		if err != nil {
			return
		}
		defer c.Close(ctx)
		for _, role := range []string{roles.Ingest, roles.Relay, roles.Projector, roles.Reader} {
			_, _ = c.Exec(ctx, "DROP OWNED BY "+role)
			_, _ = c.Exec(ctx, "DROP ROLE IF EXISTS "+role)
		}
	})
	return roles
}

// hammer runs get and list queries on every handle from 8 goroutines at
// once, so that every pooled connection prepares (and caches) them.
func hammer(t *testing.T, before int, dbs ...store.DB) {
	t.Helper()
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 8*len(dbs))
	for _, db := range dbs {
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 40 {
					if err := checkGet(ctx, db, (g*40+i)%before); err != nil {
						errs <- err
						return
					}
					if _, err := db.ListPackages(ctx, store.PackageFilter{Name: "name-" + strconv.Itoa(i%17), Limit: 20}); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

// sessions counts the open sessions of login roles that are members of
// group (superusers, members of every role, aside).
func sessions(t *testing.T, e *env, group string) int {
	t.Helper()
	var n int
	require.NoError(t, adminConn(t, e).QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity a
		JOIN pg_roles r ON r.rolname = a.usename WHERE pg_has_role(r.oid, $1, 'MEMBER') AND r.rolname <> $1 AND NOT r.rolsuper`, group).Scan(&n))
	return n
}

// TestRebuildKeepsWarmConnectionsAndRolesWorking: connections that prepared
// the ingest queries and the projector's statements against the old tables
// (pgx's statement cache, PostgreSQL's plan cache) keep working after two
// switches and drops, and so do the least-privilege roles: a reader, an
// ingest that appends, and a live worker running as the projector role.
func TestRebuildKeepsWarmConnectionsAndRolesWorking(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	roles := createRoles(t, e)
	const before = 600
	appendPackages(t, e.db, 0, before)
	e.relay(t)
	e.startWith(t, fastConfig("live"), e.srv.Connect(t), openAs(t, e, roles.Projector, 0))
	reader, ingest := openAs(t, e, roles.Reader, 4), openAs(t, e, roles.Ingest, 4)
	require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, time.Minute, 20*time.Millisecond)
	hammer(t, before, reader, ingest)
	require.Equal(t, 4, sessions(t, e, roles.Reader), "every pooled reader connection is warm")
	require.Equal(t, 4, sessions(t, e, roles.Ingest), "every pooled ingest connection is warm")

	for round, version := range []int{2, 3} {
		res, err := Rebuild(ctx, e.db, e.js, RebuildConfig{Logger: testenv.Logger(t)})
		require.NoError(t, err)
		require.Equal(t, version, res.Version)
		hammer(t, before, reader, ingest)
		require.Equal(t, 4, sessions(t, e, roles.Reader), "the same connections answered")
		from := before + round*100
		evs := []store.Event{}
		for i := from; i < from+100; i++ {
			evs = append(evs, storetest.Created(t, storetest.PackageID(i), "name-"+strconv.Itoa(i%17), "1."+strconv.Itoa(i), "ci"))
		}
		storetest.Append(t, ingest, evs...)
		e.relay(t)
		require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, time.Minute, 20*time.Millisecond)
		p, err := reader.Package(ctx, storetest.PackageID(from+99))
		require.NoError(t, err, "the live worker (projector role) applied events after the switch")
		require.Equal(t, store.StatusOpen, p.Status)
	}
	requireReplayEqual(t, e.db)
}

// TestRebuildRefusedWhileObjectsDependOnTheLiveTables: a SQL reader's view
// over artifact_packages, or a trigger a team put on it, follows the table
// it was made on. A switch would leave it on the old version's tables, and
// dropping those (DROP SCHEMA ... CASCADE) would drop it. The rebuild is
// refused with an error naming it, at the start (nothing is built) and at
// the switch (a view made during the load): the live version and the
// reader's objects stay as they were, and once they are gone a rerun
// resumes the loaded version.
func TestRebuildRefusedWhileObjectsDependOnTheLiveTables(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	appendPackages(t, e.db, 0, 300)
	e.relay(t)
	e.start(t, fastConfig("live"))
	require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, time.Minute, 20*time.Millisecond)
	admin := adminConn(t, e)
	exec := func(sql string) {
		t.Helper()
		_, err := admin.Exec(ctx, sql)
		require.NoError(t, err, sql)
	}
	view := pgx.Identifier{e.pg.Schema, "finalized"}.Sanitize()
	finalized := func() int {
		t.Helper()
		var n int
		require.NoError(t, admin.QueryRow(ctx, "SELECT count(*) FROM "+view).Scan(&n))
		return n
	}
	exec("CREATE VIEW " + view + " AS SELECT package_id FROM " + pgx.Identifier{e.pg.Schema, "artifact_packages"}.Sanitize() + " WHERE status = 'finalized'")
	require.Equal(t, 150, finalized())

	_, err := Rebuild(ctx, e.db, e.js, RebuildConfig{Logger: testenv.Logger(t)})
	require.ErrorIs(t, err, postgres.ErrDependents)
	require.ErrorContains(t, err, "finalized")
	requireVersions(t, e.db, map[int]string{1: store.VersionLive})
	requireSchemas(t, e, 0)
	require.Equal(t, 150, finalized())

	exec("DROP VIEW " + view)
	_, err = Rebuild(ctx, e.db, e.js, RebuildConfig{Logger: testenv.Logger(t), afterLoad: func() error {
		exec("CREATE VIEW " + view + " AS SELECT package_id FROM " + pgx.Identifier{e.pg.Schema, "artifact_packages"}.Sanitize() + " WHERE status = 'finalized'")
		return nil
	}})
	require.ErrorIs(t, err, postgres.ErrDependents, "a view made during the load is seen at the switch")
	requireVersions(t, e.db, map[int]string{1: store.VersionLive, 2: store.VersionBuilding})
	appendPackages(t, e.db, 300, 302)
	e.relay(t)
	require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, time.Minute, 20*time.Millisecond)
	require.Equal(t, 151, finalized(), "the view still reads the live tables")

	exec("DROP VIEW " + view)
	res, err := Rebuild(ctx, e.db, e.js, RebuildConfig{Logger: testenv.Logger(t)})
	require.NoError(t, err)
	require.True(t, res.Resumed)
	requireVersions(t, e.db, map[int]string{1: store.VersionDropped, 2: store.VersionLive})
	requireReplayEqual(t, e.db)
}

// blockedBy waits for a backend of application app that holder blocks,
// and returns its pid (the activity is in the failure message).
func blockedBy(t *testing.T, e *env, holder *pgx.Conn, app string) int {
	t.Helper()
	admin := adminConn(t, e)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		var pid int
		// Directly, or behind a batch that waits for holder in the
		// row's lock queue.
		err := admin.QueryRow(context.Background(), `SELECT a.pid FROM pg_stat_activity a
			WHERE a.application_name = $1 AND ($2 = ANY(pg_blocking_pids(a.pid))
				OR EXISTS (SELECT FROM unnest(pg_blocking_pids(a.pid)) b WHERE $2 = ANY(pg_blocking_pids(b))))`,
			app, holder.PgConn().PID()).Scan(&pid)
		if err == nil {
			return pid
		}
		require.ErrorIs(t, err, pgx.ErrNoRows)
		if time.Now().After(deadline) {
			t.Fatalf("no backend of %s blocked by pid %d; activity:\n%s", app, holder.PgConn().PID(), activity(t, admin))
		}
	}
}

// terminate ends (pg_terminate_backend) the backend of app that holder
// blocks.
func terminate(t *testing.T, e *env, holder *pgx.Conn, app string) {
	t.Helper()
	var ok bool
	require.NoError(t, adminConn(t, e).QueryRow(context.Background(), "SELECT pg_terminate_backend($1)", blockedBy(t, e, holder, app)).Scan(&ok))
	require.True(t, ok)
}

func activity(t *testing.T, c *pgx.Conn) string {
	rows, err := c.Query(context.Background(), `SELECT pid || ' ' || application_name || ' ' || coalesce(wait_event_type, '') || ' ' || state || ' blocked by ' || pg_blocking_pids(pid)::text || ' ' || left(query, 80) FROM pg_stat_activity WHERE datname = current_database()`)
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return strings.Join(lines, "\n")
}

// TestRebuildSwitchTerminatedWhileWaiting terminates the switch's backend
// (pg_terminate_backend) while it waits for the live checkpoints (a batch
// in flight) and again while it waits for the live tables (a reader's
// transaction): each time nothing changes, the switch is tried again on
// another connection, and it goes through once the locks are free.
func TestRebuildSwitchTerminatedWhileWaiting(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	appendPackages(t, e.db, 0, 500)
	e.relay(t)
	e.start(t, fastConfig("live"))
	require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, time.Minute, 20*time.Millisecond)
	const app = "review-rebuild"
	rdb := testenv.OpenPostgresConfig(t, postgres.Config{URL: e.pg.URL, Schema: e.pg.Schema, ApplicationName: app})
	live, err := e.db.DumpViews(ctx)
	require.NoError(t, err)

	tables, cps := adminConn(t, e), adminConn(t, e)
	for _, c := range []*pgx.Conn{tables, cps} {
		_, err := c.Exec(ctx, "BEGIN; SET LOCAL search_path TO "+pgx.Identifier{e.pg.Schema}.Sanitize())
		require.NoError(t, err)
	}
	_, err = tables.Exec(ctx, "SELECT count(*) FROM artifact_packages")
	require.NoError(t, err)
	_, err = cps.Exec(ctx, "SELECT * FROM checkpoints WHERE projection = 'registry' AND partition = 0 FOR UPDATE")
	require.NoError(t, err)

	type result struct {
		res RebuildResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := Rebuild(ctx, rdb, e.js, RebuildConfig{Logger: testenv.Logger(t), LockTimeout: time.Minute})
		done <- result{res, err}
	}()
	terminate(t, e, cps, app)
	blockedBy(t, e, cps, app) // tried again
	requireDump(t, e.db, live)
	requireVersions(t, e.db, map[int]string{1: store.VersionLive, 2: store.VersionBuilding})
	_, err = cps.Exec(ctx, "COMMIT")
	require.NoError(t, err)

	terminate(t, e, tables, app)
	blockedBy(t, e, tables, app) // tried again
	_, err = tables.Exec(ctx, "COMMIT")
	require.NoError(t, err)
	r := <-done
	require.NoError(t, r.err)
	require.Equal(t, 2, r.res.Version)
	requireVersions(t, e.db, map[int]string{1: store.VersionDropped, 2: store.VersionLive})
	requireSchemas(t, e, 0)
	appendPackages(t, e.db, 500, 600)
	e.relay(t)
	require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, time.Minute, 20*time.Millisecond)
	requireReplayEqual(t, e.db)
}

// answerLost is a store whose first successful SwitchVersion loses its
// answer: the switch committed, the caller gets store.ErrOutcomeUnknown
// (a connection cut during COMMIT).
type answerLost struct {
	*postgres.DB
	lost atomic.Bool
}

func (d *answerLost) SwitchVersion(ctx context.Context, v store.ProjectionVersion, opts store.SwitchOptions) (store.ProjectionVersion, error) {
	retired, err := d.DB.SwitchVersion(ctx, v, opts)
	if err == nil && d.lost.CompareAndSwap(false, true) {
		return store.ProjectionVersion{}, fmt.Errorf("%w: %w: connection reset by peer", store.ErrOutcomeUnknown, store.ErrUnavailable)
	}
	return retired, err
}

// TestRebuildSwitchCommittedButItsAnswerLost: a switch whose COMMIT went
// through but whose answer was lost is not an error: the rebuild sees the
// version live in the catalog, drops the old one and reports success.
func TestRebuildSwitchCommittedButItsAnswerLost(t *testing.T) {
	e := setup(t)
	appendPackages(t, e.db, 0, 300)
	e.relay(t)
	e.start(t, fastConfig("live"))
	require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, time.Minute, 20*time.Millisecond)
	db := &answerLost{DB: e.db.(*postgres.DB)}
	res, err := Rebuild(context.Background(), db, e.js, RebuildConfig{Logger: testenv.Logger(t)})
	require.True(t, db.lost.Load())
	require.NoError(t, err)
	require.Equal(t, 2, res.Version)
	require.Equal(t, 1, res.Retired)
	require.Equal(t, int64(450), res.SwitchedAt)
	requireVersions(t, e.db, map[int]string{1: store.VersionDropped, 2: store.VersionLive})
	requireSchemas(t, e, 0)
	requireReplayEqual(t, e.db)
}

// failsAt applies the registry views, except event seq, which fails (a
// handler bug).
type failsAt struct{ seq int64 }

func (f failsAt) Reset(ctx context.Context, tx store.Tx) error {
	return store.RegistryViews{}.Reset(ctx, tx)
}
func (f failsAt) Apply(ctx context.Context, tx store.ViewTx, e store.Event) error {
	if e.Sequence == f.seq {
		return fmt.Errorf("a handler bug at %d", e.Sequence)
	}
	return store.RegistryViews{}.Apply(ctx, tx, e)
}

// TestRebuildWithAFixedHandlerResumesAParkedPartition: the live version
// parked a partition on a handler bug; a rebuild with the fixed handler
// applies the event, and the switch moves the parked partition's
// checkpoint past it only because the new version applied it. The live
// worker resumes the partition after its retry pause.
func TestRebuildWithAFixedHandlerResumesAParkedPartition(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	appendPackages(t, e.db, 0, 200)
	e.relay(t)
	var bad store.Event
	for ev, err := range store.All(ctx, e.db, 0, 0) {
		require.NoError(t, err)
		if ev.SubjectID == storetest.PackageID(10) && ev.Type == store.TypePackageFinalized {
			bad = ev
		}
	}
	require.NotZero(t, bad.Sequence)
	cfg := fastConfig("live")
	cfg.Views, cfg.ParkRetry = failsAt{bad.Sequence}, 500*time.Millisecond
	e.start(t, cfg)
	p := Partition(bad.SubjectID, e.parts)
	testenv.Eventually(t, time.Minute, func() bool {
		parked, err := e.db.Parked(ctx)
		require.NoError(t, err)
		return len(parked) == 1 && parked[0].Sequence == bad.Sequence
	}, "partition %d to park on event %d", p, bad.Sequence)

	res, err := Rebuild(ctx, e.db, e.js, RebuildConfig{Logger: testenv.Logger(t)})
	require.NoError(t, err)
	require.Equal(t, 2, res.Version)
	parked, err := e.db.Parked(ctx)
	require.NoError(t, err)
	require.Empty(t, parked)
	pkg, err := e.db.Package(ctx, bad.SubjectID)
	require.NoError(t, err)
	require.Equal(t, store.StatusFinalized, pkg.Status, "the new version applied the event the old one parked on")
	require.True(t, caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)))

	appendPackages(t, e.db, 200, 400)
	e.relay(t)
	require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, time.Minute, 20*time.Millisecond)
	requireReplayEqual(t, e.db)
}

// TestRebuildStopsOnAPoisonEvent: an event the handlers refuse stops the
// load with an error naming it; the live version (which parked the
// partition) is untouched, and the half-built version is abandoned by the
// next run, which stops the same way.
func TestRebuildStopsOnAPoisonEvent(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	appendPackages(t, e.db, 0, 100)
	poison := storetest.Append(t, e.db, storetest.Finalized(t, "ghost", "ci", store.DigestOf([]byte("ghost"))))[0]
	appendPackages(t, e.db, 100, 200)
	e.relay(t)
	e.start(t, fastConfig("live"))
	testenv.Eventually(t, time.Minute, func() bool {
		parked, err := e.db.Parked(ctx)
		require.NoError(t, err)
		if len(parked) != 1 {
			return false
		}
		want := expected(t, e.db, e.parts)
		want[parked[0].Partition] = 0
		return caughtUp(t, e.db, DefaultProjection, want)
	}, "the live version to park on the poison event and apply every other partition")
	live, err := e.db.DumpViews(ctx)
	require.NoError(t, err)

	for version := 2; version <= 3; version++ {
		_, err = Rebuild(ctx, e.db, e.js, RebuildConfig{Logger: testenv.Logger(t)})
		require.ErrorContains(t, err, "sequence "+strconv.FormatInt(poison.Sequence, 10))
		require.ErrorContains(t, err, "ghost")
		vs, err := e.db.(store.Versions).ProjectionVersions(ctx)
		require.NoError(t, err)
		require.Equal(t, store.VersionBuilding, vs[version-1].State)
		require.False(t, vs[version-1].Loaded)
		requireDump(t, e.db, live)
	}
	requireVersions(t, e.db, map[int]string{1: store.VersionLive, 2: store.VersionDropped, 3: store.VersionBuilding})
	requireSchemas(t, e, 1)
}

// dropHook is a store that calls before ahead of its first DropVersion.
type dropHook struct {
	*postgres.DB
	before func(v store.ProjectionVersion)
}

func (d *dropHook) DropVersion(ctx context.Context, v store.ProjectionVersion) error {
	if d.before != nil {
		d.before(v)
		d.before = nil
	}
	return d.DB.DropVersion(ctx, v)
}

// TestRebuildDropTerminatedWhileWaiting terminates the backend dropping the
// retired version while a reader's transaction holds one of its tables:
// the new version is live already, and the drop is tried again instead of
// failing the rebuild (whose rerun would build yet another version to get
// rid of the old one).
func TestRebuildDropTerminatedWhileWaiting(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	appendPackages(t, e.db, 0, 300)
	e.relay(t)
	e.start(t, fastConfig("live"))
	require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, time.Minute, 20*time.Millisecond)
	const app = "review-rebuild-drop"
	holder := adminConn(t, e)
	locked := make(chan error, 1)
	db := &dropHook{DB: testenv.OpenPostgresConfig(t, postgres.Config{URL: e.pg.URL, Schema: e.pg.Schema, ApplicationName: app}),
		before: func(v store.ProjectionVersion) {
			_, err := holder.Exec(ctx, "BEGIN; LOCK TABLE "+pgx.Identifier{v.Schema, "artifact_packages"}.Sanitize()+" IN ACCESS SHARE MODE")
			locked <- err
		}}
	done := make(chan error, 1)
	go func() {
		_, err := Rebuild(ctx, db, e.js, RebuildConfig{Logger: testenv.Logger(t)})
		done <- err
	}()
	require.NoError(t, <-locked)
	terminate(t, e, holder, app)
	select {
	case err := <-done:
		t.Fatalf("the rebuild ended on the terminated drop: %v", err)
	default:
	}
	blockedBy(t, e, holder, app) // tried again
	_, err := holder.Exec(ctx, "COMMIT")
	require.NoError(t, err)
	require.NoError(t, <-done)
	requireVersions(t, e.db, map[int]string{1: store.VersionDropped, 2: store.VersionLive})
	requireSchemas(t, e, 0)
}

// TestRebuildSwitchDoesNotStallQueriesBehindALongReader: a reader's long
// transaction (a report, pg_dump) holds the live tables. While the switch
// waits to move them, every query on them queues behind it; the switch
// gives up its wait quickly and tries again instead, so queries keep
// answering, and it goes through once the reader is done.
func TestRebuildSwitchDoesNotStallQueriesBehindALongReader(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	appendPackages(t, e.db, 0, 300)
	e.relay(t)
	e.start(t, fastConfig("live"))
	require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, time.Minute, 20*time.Millisecond)
	reader := adminConn(t, e)
	_, err := reader.Exec(ctx, "BEGIN; SELECT count(*) FROM "+pgx.Identifier{e.pg.Schema, "artifact_packages"}.Sanitize())
	require.NoError(t, err)

	q := e.open(t)
	stop := make(chan struct{})
	var slowest atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			began := time.Now()
			if err := checkGet(ctx, q, 3); err != nil {
				t.Errorf("a query failed during the rebuild: %v", err)
				return
			}
			if d := time.Since(began); d > time.Duration(slowest.Load()) {
				slowest.Store(int64(d))
			}
		}
	}()
	attempts := 0
	var released error
	_, err = Rebuild(ctx, e.db, e.js, RebuildConfig{Logger: testenv.Logger(t), Progress: func(p RebuildProgress) {
		if p.Phase == PhaseSwitch {
			if attempts++; attempts == 3 { // the reader is done
				_, released = reader.Exec(ctx, "COMMIT")
			}
		}
	}})
	close(stop)
	wg.Wait()
	require.NoError(t, err)
	require.NoError(t, released)
	require.Equal(t, 3, attempts)
	t.Logf("slowest query during the rebuild: %s", time.Duration(slowest.Load()))
	require.Less(t, time.Duration(slowest.Load()), 2*time.Second, "queries queued behind the switch's wait for the live tables")
	requireVersions(t, e.db, map[int]string{1: store.VersionDropped, 2: store.VersionLive})
}

// TestRebuildOnOddSchemaNames rebuilds in log schemas whose names need
// quoting: upper case, a hyphen and a space.
func TestRebuildOnOddSchemaNames(t *testing.T) {
	for _, schema := range []string{"Upper_" + testenv.Name("T"), "odd-name " + testenv.Name("x")} {
		t.Run(schema, func(t *testing.T) {
			url := testenv.PostgresURL(t)
			t.Cleanup(func() {
				c, err := pgx.Connect(context.Background(), url)
				if err != nil {
					return
				}
				defer c.Close(context.Background())
				for _, s := range []string{schema, schema + "_registry_v1", schema + "_registry_v2"} {
					_, _ = c.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{s}.Sanitize()+" CASCADE")
				}
			})
			open := func(t testing.TB) store.DB { return testenv.OpenPostgres(t, url, schema) }
			e := setupWith(t, open(t), open)
			e.pg = postgres.Config{URL: url, Schema: schema}
			appendPackages(t, e.db, 0, 300)
			e.relay(t)
			e.start(t, fastConfig("live"))
			require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, time.Minute, 20*time.Millisecond)
			res, err := Rebuild(context.Background(), e.db, e.js, RebuildConfig{Logger: testenv.Logger(t)})
			require.NoError(t, err)
			require.Equal(t, 2, res.Version)
			requireVersions(t, e.db, map[int]string{1: store.VersionDropped, 2: store.VersionLive})
			appendPackages(t, e.db, 300, 350)
			e.relay(t)
			require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, time.Minute, 20*time.Millisecond)
			requireReplayEqual(t, e.db)
		})
	}
}

// TestRebuildBesideReplayReset runs replay --reset of the live version over
// and over while a rebuild loads, follows and switches under live load:
// both lock the live checkpoints first, so each waits for the other, and
// the views equal a replay at the end.
func TestRebuildBesideReplayReset(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	appendPackages(t, e.db, 0, 1000)
	e.relay(t)
	e.start(t, fastConfig("live"))
	require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, time.Minute, 20*time.Millisecond)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var replays atomic.Int64
	replayer := e.open(t)
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := store.Replay(ctx, replayer, store.RegistryViews{}, store.ReplayOptions{Reset: true, Partitions: e.parts}); err != nil {
				t.Errorf("replay --reset beside the rebuild: %v", err)
				return
			}
			replays.Add(1)
		}
	}()
	go func() {
		defer wg.Done()
		for n := 1000; ; n += 20 {
			select {
			case <-stop:
				return
			default:
			}
			appendPackages(t, e.db, n, n+20)
			e.relay(t)
		}
	}()
	res, err := Rebuild(ctx, e.db, e.js, RebuildConfig{Logger: testenv.Logger(t), SwitchLag: 50})
	close(stop)
	wg.Wait()
	require.NoError(t, err)
	require.Equal(t, 2, res.Version)
	require.Positive(t, replays.Load())
	t.Logf("%d replays --reset beside the rebuild", replays.Load())
	e.relay(t)
	require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, time.Minute, 20*time.Millisecond)
	requireReplayEqual(t, e.db)
}

// TestRebuildCatchUpWithStatementsPreparedOnTheLiveTables: the switch's
// catch-up runs on a connection of the rebuild's store, whose connections
// prepared the view reads and bulk upserts against the live tables before
// (pgx caches statements, PostgreSQL their plans). With the version's
// schema first in search_path inside the switch, they must write the new
// version's tables: events applied to the old ones would be missing from
// the new version while its checkpoints say they are in.
func TestRebuildCatchUpWithStatementsPreparedOnTheLiveTables(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	appendPackages(t, e.db, 0, 500)
	e.relay(t)
	e.start(t, fastConfig("live"))
	require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, time.Minute, 20*time.Millisecond)
	rdb := testenv.OpenPostgresConfig(t, postgres.Config{URL: e.pg.URL, Schema: e.pg.Schema, MaxConns: 2})
	warm := func() {
		t.Helper()
		rolledBack := errors.New("rolled back")
		var wg sync.WaitGroup
		barrier := make(chan struct{})
		for range 2 { // both connections at once
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := rdb.InTx(ctx, func(tx store.Tx) error {
					<-barrier
					p, err := tx.GetPackage(ctx, storetest.PackageID(1))
					if err != nil {
						return err
					}
					r, err := tx.GetRetention(ctx, storetest.PackageID(1))
					if err != nil {
						return err
					}
					if err := tx.PutPackages(ctx, []store.Package{p}); err != nil {
						return err
					}
					if err := tx.PutRetentions(ctx, []store.Retention{r}); err != nil {
						return err
					}
					_, err = tx.Checkpoint(ctx, DefaultProjection, 0)
					if err != nil {
						return err
					}
					return rolledBack
				})
				if !errors.Is(err, rolledBack) {
					t.Errorf("warming a connection: %v", err)
				}
			}()
		}
		close(barrier)
		wg.Wait()
	}
	warm()
	res, err := Rebuild(ctx, rdb, e.js, RebuildConfig{Logger: testenv.Logger(t), SwitchLag: 10,
		afterLoad: func() error {
			// Updates and new packages the switch applies from the log
			// (not relayed), on connections warmed again.
			appendPackages(t, e.db, 500, 700)
			var evs []store.Event
			for i := 1; i < 200; i += 2 {
				evs = append(evs, storetest.Finalized(t, storetest.PackageID(i), "ci", store.DigestOf([]byte("late"))))
			}
			storetest.Append(t, e.db, evs...)
			warm()
			return nil
		}})
	require.NoError(t, err)
	head, err := e.db.Head(ctx)
	require.NoError(t, err)
	require.Equal(t, head, res.SwitchedAt, "the switch applied the log up to its head")
	p, err := e.db.Package(ctx, storetest.PackageID(199))
	require.NoError(t, err)
	require.Equal(t, store.StatusFinalized, p.Status, "the catch-up's updates are in the new live tables")
	e.relay(t)
	require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, time.Minute, 20*time.Millisecond)
	requireReplayEqual(t, e.db)
}

// TestRebuildAfterAMigrationChangedTheLiveTables: a migration adds a column
// to the live tables while a version is built. The switch would take the
// column away; it is refused and the version, which can never switch, is
// abandoned. A new rebuild is refused before it builds anything while the
// code's tables and the database's differ.
func TestRebuildAfterAMigrationChangedTheLiveTables(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	appendPackages(t, e.db, 0, 300)
	e.relay(t)
	e.start(t, fastConfig("live"))
	require.Eventually(t, func() bool { return caughtUp(t, e.db, DefaultProjection, expected(t, e.db, e.parts)) }, time.Minute, 20*time.Millisecond)
	admin := adminConn(t, e)
	table := pgx.Identifier{e.pg.Schema, "artifact_packages"}.Sanitize()
	_, err := Rebuild(ctx, e.db, e.js, RebuildConfig{Logger: testenv.Logger(t), afterLoad: func() error {
		_, err := admin.Exec(ctx, "ALTER TABLE "+table+" ADD COLUMN note text")
		return err
	}})
	require.ErrorIs(t, err, store.ErrVersionObsolete)
	requireVersions(t, e.db, map[int]string{1: store.VersionLive, 2: store.VersionDropped})
	requireSchemas(t, e, 0)
	var note *string
	require.NoError(t, admin.QueryRow(ctx, "SELECT note FROM "+table+" LIMIT 1").Scan(&note), "the migrated column stays")

	_, err = Rebuild(ctx, e.db, e.js, RebuildConfig{Logger: testenv.Logger(t)})
	require.ErrorIs(t, err, store.ErrVersionObsolete)
	requireVersions(t, e.db, map[int]string{1: store.VersionLive, 2: store.VersionDropped})

	_, err = admin.Exec(ctx, "ALTER TABLE "+table+" DROP COLUMN note")
	require.NoError(t, err)
	res, err := Rebuild(ctx, e.db, e.js, RebuildConfig{Logger: testenv.Logger(t)})
	require.NoError(t, err)
	require.Equal(t, 3, res.Version)
	requireReplayEqual(t, e.db)
}
