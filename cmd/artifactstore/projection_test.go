package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

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
