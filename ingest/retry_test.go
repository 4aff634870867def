package ingest_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/internal/testenv"
)

// TestBatchRetriedAfterATemporaryError: the backend of a batch's
// transaction is terminated before COMMIT (the transaction waits on a
// lock the test holds meanwhile); the batch is retried after a pause, on
// another connection, and the client gets its reply as if nothing had
// happened. The retry is counted.
func TestBatchRetriedAfterATemporaryError(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	e := setupDB(t, testenv.OpenPostgres(t, url, schema), ingest.Config{RequestTimeout: 10 * time.Second})
	cfg, err := pgx.ParseConfig(url)
	require.NoError(t, err)
	cfg.RuntimeParams["search_path"] = schema
	locker, err := pgx.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { locker.Close(ctx) })
	watcher, err := pgx.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { watcher.Close(ctx) })

	// SHARE mode lets reads through and holds back the batch's claim (an
	// INSERT into commands), the first write of its transaction.
	lock, err := locker.Begin(ctx)
	require.NoError(t, err)
	_, err = lock.Exec(ctx, "LOCK TABLE commands IN SHARE MODE")
	require.NoError(t, err)

	type outcome struct {
		reply ingest.CommandReply
		err   error
	}
	done := make(chan outcome, 1)
	go func() {
		var o outcome
		o.err = ingest.Call(ctx, e.client, ingest.SubjectCreate, ingest.CreateRequest{CommandID: "c1", Actor: "a", Name: "n", Version: "1"}, &o.reply)
		done <- o
	}()
	var blocked []uint32
	testenv.Eventually(t, 10*time.Second, func() bool {
		rows, err := watcher.Query(ctx, "SELECT pid FROM pg_stat_activity WHERE $1::int = ANY(pg_blocking_pids(pid))", locker.PgConn().PID())
		require.NoError(t, err)
		blocked, err = pgx.CollectRows(rows, pgx.RowTo[uint32])
		require.NoError(t, err)
		return len(blocked) > 0
	}, "the batch's transaction to wait on the lock")
	require.Len(t, blocked, 1)
	var terminated bool
	require.NoError(t, watcher.QueryRow(ctx, "SELECT pg_terminate_backend($1)", blocked[0]).Scan(&terminated))
	require.True(t, terminated)
	require.NoError(t, lock.Rollback(ctx))

	select {
	case o := <-done:
		require.NoError(t, o.err, "the retried batch commits")
		require.Equal(t, int64(1), o.reply.Sequence)
	case <-time.After(20 * time.Second):
		t.Fatal("no reply")
	}
	require.Len(t, e.log(t), 1)
	require.Equal(t, 1.0, counter(t, e.reg, "artifactstore_ingest_batch_retries_total"))
}
