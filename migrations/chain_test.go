package migrations_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/migrations"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/sqlite"
	"github.com/artifactstore/artifactstore/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(testenv.MainNoLeaks(m)) }

// oldAppend appends events the way a binary from before migration 00008
// did: no chain digest.
func oldAppend(t *testing.T, db *sql.DB, dialect string, events ...store.Event) {
	t.Helper()
	ctx := context.Background()
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	q := `INSERT INTO events (sequence, event_type, subject_kind, subject_id, actor, payload, payload_digest, created_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`
	var head int64
	var at any
	if dialect == migrations.SQLite {
		q = strings.NewReplacer("$1", "?", "$2", "?", "$3", "?", "$4", "?", "$5", "?", "$6", "?", "$7", "?", "$8", "?").Replace(q)
		require.NoError(t, tx.QueryRowContext(ctx, `UPDATE log_head SET sequence = sequence + ?, created_at = max(?, created_at)
			RETURNING sequence, created_at`, len(events), time.Now().UnixMicro()).Scan(&head, &at))
	} else {
		require.NoError(t, tx.QueryRowContext(ctx, `UPDATE log_head SET sequence = sequence + $1,
			created_at = greatest(clock_timestamp(), created_at) RETURNING sequence, created_at`, len(events)).Scan(&head, &at))
	}
	for i, e := range events {
		_, err := tx.ExecContext(ctx, q, head-int64(len(events)-i-1), e.Type, e.SubjectKind, e.SubjectID, e.Actor, e.Payload, e.PayloadDigest[:], at)
		require.NoError(t, err)
	}
	require.NoError(t, tx.Commit())
}

func events(t *testing.T, from, n int) []store.Event {
	var out []store.Event
	for i := from; i < from+n; i++ {
		out = append(out, storetest.Created(t, storetest.PackageID(i), "m", fmt.Sprint(i), "alice"))
	}
	return out
}

// checkChained verifies the log after migration 00008 chained the events
// an older binary appended, then appends through the store and verifies
// again; a writer that still omits the chain digest is refused.
func checkChained(t *testing.T, db store.DB, raw *sql.DB, dialect string) {
	ctx := context.Background()
	res, err := store.VerifyLog(ctx, db, store.VerifyOptions{})
	require.NoError(t, err)
	require.Equal(t, int64(5), res.To)
	logged, err := db.Fetch(ctx, 0, 10)
	require.NoError(t, err)
	require.Equal(t, store.ChainHead{Sequence: 5, Digest: logged[4].ChainDigest}, res.Head, "log_head records the migrated chain head")

	storetest.Append(t, db, events(t, 5, 2)...)
	res, err = store.VerifyLog(ctx, db, store.VerifyOptions{})
	require.NoError(t, err)
	require.Equal(t, int64(7), res.To, "new appends chain on from the migrated head")

	tx, err := raw.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	q := `INSERT INTO events (sequence, event_type, subject_kind, subject_id, actor, payload, payload_digest, created_at)
		VALUES (8, 'v1.package.created', 'package', 'x', 'a', 'x', decode('` + strings.Repeat("00", 32) + `', 'hex'), now())`
	if dialect == migrations.SQLite {
		q = `INSERT INTO events (sequence, event_type, subject_kind, subject_id, actor, payload, payload_digest, created_at)
			VALUES (8, 'v1.package.created', 'package', 'x', 'a', 'x', zeroblob(32), 0)`
	}
	_, err = tx.ExecContext(ctx, q)
	require.Error(t, err, "an event without a chain digest is refused")
	require.Contains(t, err.Error(), "chain_digest")
}

func TestChainMigrationPostgres(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	cfg, err := pgx.ParseConfig(url)
	require.NoError(t, err)
	admin, err := pgx.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	_, err = admin.Exec(ctx, "CREATE SCHEMA "+schema)
	require.NoError(t, err)
	require.NoError(t, admin.Close(ctx))
	cfg.RuntimeParams["search_path"] = schema
	raw := stdlib.OpenDB(*cfg)
	defer raw.Close()

	require.NoError(t, migrations.UpTo(ctx, migrations.Postgres, raw, schema, 7))
	oldAppend(t, raw, migrations.Postgres, events(t, 0, 2)...)
	oldAppend(t, raw, migrations.Postgres, events(t, 2, 3)...)
	db := testenv.OpenPostgres(t, url, schema) // migrates up: 00008
	checkChained(t, db, raw, migrations.Postgres)
}

func TestChainMigrationSQLite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "log.db")
	raw, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_txlock=immediate")
	require.NoError(t, err)
	defer raw.Close()
	require.NoError(t, migrations.UpTo(ctx, migrations.SQLite, raw, path, 7))
	oldAppend(t, raw, migrations.SQLite, events(t, 0, 2)...)
	oldAppend(t, raw, migrations.SQLite, events(t, 2, 3)...)
	db, err := sqlite.Open(ctx, sqlite.Config{Path: path})
	require.NoError(t, err)
	defer db.Close()
	applied, err := db.Migrate(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(8), applied[0], "00008 and what follows it are applied")
	st, err := db.MigrationStatus(ctx)
	require.NoError(t, err)
	found := false
	for _, m := range st {
		if m.Name == "00008_chain_digest.go" {
			found = m.Applied
		}
	}
	require.True(t, found, "00008_chain_digest.go applied")
	checkChained(t, db, raw, migrations.SQLite)
}
