package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/postgres"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// TestProjectionRebuildAndList runs `projection list` and `projection
// rebuild` as an operator would, beside a real relay and projector.
func TestProjectionRebuildAndList(t *testing.T) {
	t.Parallel()
	dbURL := testenv.Database(t)
	natsURL := testenv.NATS(t).URL()
	env := []string{"ARTIFACTSTORE_DATABASE_URL=" + dbURL, "ARTIFACTSTORE_NATS_URL=" + natsURL}
	r := runBinary(t, time.Minute, env, "migrate", "up")
	require.Equal(t, 0, r.code, "migrate up: %s", r.stderr)
	db, err := postgres.Open(context.Background(), postgres.Config{URL: dbURL})
	require.NoError(t, err)
	t.Cleanup(db.Close)
	for i := range 300 {
		storetest.Append(t, db, storetest.Created(t, storetest.PackageID(i), "n", "1."+storetest.PackageID(i), "ci"))
	}
	for _, sub := range []string{"relay", "projector"} {
		startProc(t, env, "--log-format", "json", sub, "--http-listen", "127.0.0.1:0")
	}
	list := func() []versionStatus {
		r := runBinary(t, time.Minute, env, "projection", "list", "--json")
		require.Equal(t, 0, r.code, r.stderr)
		var out struct{ Versions []versionStatus }
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &out), r.stdout)
		return out.Versions
	}
	testenv.Eventually(t, time.Minute, func() bool {
		vs := list()
		return len(vs) == 1 && vs[0].Status != nil && vs[0].Status.Applied == 300
	}, "the live version to apply the log")
	require.Equal(t, store.VersionLive, list()[0].State)

	r = runBinary(t, 2*time.Minute, env, "projection", "rebuild", "registry")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "registry version 2 is live")
	vs := list()
	require.Len(t, vs, 1, "the old version is dropped: %+v", vs)
	require.Equal(t, 2, vs[0].Version)
	require.Equal(t, store.VersionLive, vs[0].State)
	r = runBinary(t, time.Minute, env, "projection", "list")
	require.Equal(t, 0, r.code, r.stderr)
	require.Regexp(t, `registry\s+2\s+live\s+300\s+0\s+0\s+live tables`, r.stdout)

	r = runBinary(t, time.Minute, env, "projection", "rebuild", "nope")
	require.Equal(t, exitNotFound, r.code, r.stderr)
	require.Contains(t, r.stderr, `no projection "nope"`)
}

// TestProjectionRebuildRefusedWhileAViewDependsOnTheLiveTables: exit 4,
// naming the view, and nothing built; exit 4 too when the live tables are
// not defined as this binary's.
func TestProjectionRebuildRefusedWhileAViewDependsOnTheLiveTables(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := testenv.Database(t)
	env := []string{"ARTIFACTSTORE_DATABASE_URL=" + dbURL, "ARTIFACTSTORE_NATS_URL=" + testenv.NATS(t).URL()}
	r := runBinary(t, time.Minute, env, "migrate", "up")
	require.Equal(t, 0, r.code, "migrate up: %s", r.stderr)
	conn, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "CREATE VIEW open_packages AS SELECT package_id FROM artifact_packages WHERE status = 'open'")
	require.NoError(t, err)
	r = runBinary(t, time.Minute, env, "projection", "rebuild")
	require.Equal(t, exitConflict, r.code, r.stderr)
	require.Contains(t, r.stderr, "depend on the projection's live tables: view open_packages")
	r = runBinary(t, time.Minute, env, "projection", "list")
	require.Equal(t, 0, r.code, r.stderr)
	require.Regexp(t, `registry\s+1\s+live`, r.stdout)
	require.NotContains(t, r.stdout, "building")

	_, err = conn.Exec(ctx, "DROP VIEW open_packages; ALTER TABLE artifact_packages ADD COLUMN note text")
	require.NoError(t, err)
	r = runBinary(t, time.Minute, env, "projection", "rebuild")
	require.Equal(t, exitConflict, r.code, r.stderr)
	require.Contains(t, r.stderr, "not defined as the live ones")
}

func TestProjectionRebuildRefusedOnSQLite(t *testing.T) {
	t.Parallel()
	env := []string{"ARTIFACTSTORE_DATABASE_URL=" + filepath.Join(t.TempDir(), "x.db")}
	r := runBinary(t, time.Minute, env, "migrate", "up")
	require.Equal(t, 0, r.code, r.stderr)
	r = runBinary(t, time.Minute, env, "projection", "rebuild")
	require.Equal(t, exitInvalid, r.code, r.stderr)
	require.Contains(t, r.stderr, "needs PostgreSQL")
	r = runBinary(t, time.Minute, env, "projection", "list")
	require.Equal(t, 0, r.code, r.stderr)
	require.Regexp(t, `registry\s+1\s+live`, r.stdout)
}

// TestProjectionRebuildKilledDuringItsLoad kills a rebuild process with
// SIGKILL while it loads: the live version is untouched, and the next run
// (once the killed one's lock has expired) abandons the half-loaded version
// and finishes a new one.
func TestProjectionRebuildKilledDuringItsLoad(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := testenv.Database(t)
	natsURL := testenv.NATS(t).URL()
	env := []string{"ARTIFACTSTORE_DATABASE_URL=" + dbURL, "ARTIFACTSTORE_NATS_URL=" + natsURL}
	r := runBinary(t, time.Minute, env, "migrate", "up")
	require.Equal(t, 0, r.code, "migrate up: %s", r.stderr)
	db, err := postgres.Open(ctx, postgres.Config{URL: dbURL})
	require.NoError(t, err)
	t.Cleanup(db.Close)
	const n = 20_000
	for from := 0; from < n; from += 1000 {
		var evs []store.Event
		for i := from; i < from+1000; i++ {
			evs = append(evs, storetest.Created(t, storetest.PackageID(i), "n", "1."+storetest.PackageID(i), "ci"))
		}
		storetest.Append(t, db, evs...)
	}
	startProc(t, env, "--log-format", "json", "relay", "--http-listen", "127.0.0.1:0")
	startProc(t, env, "--log-format", "json", "projector", "--http-listen", "127.0.0.1:0")
	testenv.Eventually(t, 2*time.Minute, func() bool {
		cps, err := db.Checkpoints(ctx)
		require.NoError(t, err)
		low := int64(n)
		for _, c := range cps {
			if c.Projection == "registry" {
				low = min(low, c.Sequence)
			}
		}
		return len(cps) > 0 && low == n
	}, "the live version to apply the log")
	live, err := db.DumpViews(ctx)
	require.NoError(t, err)

	p := startProc(t, env, "--log-format", "json", "projection", "rebuild")
	testenv.Eventually(t, time.Minute, func() bool { return len(p.logLines("building a new version")) > 0 },
		"the rebuild to start its load; output:\n%s", p.output)
	require.NoError(t, p.cmd.Process.Kill())
	<-p.done
	vs, err := db.ProjectionVersions(ctx)
	require.NoError(t, err)
	require.Len(t, vs, 2)
	require.Equal(t, store.VersionBuilding, vs[1].State)
	require.False(t, vs[1].Loaded, "killed during its load")
	after, err := db.DumpViews(ctx)
	require.NoError(t, err)
	require.Equal(t, live, after, "the live version changed")

	var out result
	testenv.Eventually(t, time.Minute, func() bool {
		out = runBinary(t, 2*time.Minute, env, "projection", "rebuild")
		return out.code != exitConflict // the killed run's lock expires after its TTL
	}, "the killed rebuild's lock to expire")
	require.Equal(t, 0, out.code, out.stderr)
	require.Contains(t, out.stdout, "registry version 3 is live")
	require.Contains(t, out.stderr, "abandoning a version whose load did not finish")
	after, err = db.DumpViews(ctx)
	require.NoError(t, err)
	require.Equal(t, live, after, "the rebuilt views differ from the projected ones")
}
