package sqlite_test

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/sqlite"
	"github.com/artifactstore/artifactstore/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(testenv.MainNoLeaks(m)) }

func TestSuite(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) store.DB { return testenv.SQLite(t) })
}

func TestEventsAreAppendOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "log.db")
	db, err := sqlite.Open(ctx, sqlite.Config{Path: path})
	require.NoError(t, err)
	defer db.Close()
	_, err = db.Migrate(ctx)
	require.NoError(t, err)
	storetest.Append(t, db, storetest.Created(t, "p", "n", "1", "a"))
	raw, err := sql.Open("sqlite", path)
	require.NoError(t, err)
	defer raw.Close()
	for _, stmt := range []string{"UPDATE events SET actor = 'mallory'", "DELETE FROM events"} {
		_, err := raw.ExecContext(ctx, stmt)
		require.Error(t, err, stmt)
		require.Contains(t, err.Error(), "append-only")
	}
	events, err := db.Fetch(ctx, 0, 10)
	require.NoError(t, err)
	require.Len(t, events, 1)
	require.Equal(t, "a", events[0].Actor)
}

func TestReopenKeepsLog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "log.db")
	db, err := sqlite.Open(ctx, sqlite.Config{Path: path})
	require.NoError(t, err)
	_, err = db.Migrate(ctx)
	require.NoError(t, err)
	id, err := db.LogID(ctx)
	require.NoError(t, err)
	storetest.Append(t, db, storetest.Created(t, "p", "n", "1", "a"))
	db.Close()
	db, err = sqlite.Open(ctx, sqlite.Config{Path: path})
	require.NoError(t, err)
	defer db.Close()
	applied, err := db.Migrate(ctx)
	require.NoError(t, err)
	require.Empty(t, applied, "migrating again applies nothing")
	again, err := db.LogID(ctx)
	require.NoError(t, err)
	require.Equal(t, id, again)
	out := storetest.Append(t, db, storetest.Created(t, "q", "n", "2", "a"))
	require.Equal(t, int64(2), out[0].Sequence)
}
