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
	l := lockCommands(t, url, schema)

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
	blocked := l.awaitBlocked(t)
	var terminated bool
	require.NoError(t, l.watcher.QueryRow(ctx, "SELECT pg_terminate_backend($1)", blocked).Scan(&terminated))
	require.True(t, terminated)
	l.release(t)

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

// commandsLock holds the commands table in SHARE mode: reads go through,
// the claim of a batch with a command id (an INSERT into commands, the
// first write of its transaction) waits.
type commandsLock struct {
	locker, watcher *pgx.Conn
	tx              pgx.Tx
}

func lockCommands(t *testing.T, url, schema string) *commandsLock {
	t.Helper()
	ctx := context.Background()
	cfg, err := pgx.ParseConfig(url)
	require.NoError(t, err)
	cfg.RuntimeParams["search_path"] = schema
	l := &commandsLock{}
	for _, c := range []**pgx.Conn{&l.locker, &l.watcher} {
		*c, err = pgx.ConnectConfig(ctx, cfg)
		require.NoError(t, err)
		conn := *c
		t.Cleanup(func() { conn.Close(ctx) })
	}
	l.tx, err = l.locker.Begin(ctx)
	require.NoError(t, err)
	_, err = l.tx.Exec(ctx, "LOCK TABLE commands IN SHARE MODE")
	require.NoError(t, err)
	return l
}

// awaitBlocked waits until exactly one backend waits on the lock and
// returns its pid.
func (l *commandsLock) awaitBlocked(t *testing.T) uint32 {
	t.Helper()
	var blocked []uint32
	testenv.Eventually(t, 10*time.Second, func() bool {
		rows, err := l.watcher.Query(context.Background(), "SELECT pid FROM pg_stat_activity WHERE $1::int = ANY(pg_blocking_pids(pid))", l.locker.PgConn().PID())
		require.NoError(t, err)
		blocked, err = pgx.CollectRows(rows, pgx.RowTo[uint32])
		require.NoError(t, err)
		return len(blocked) > 0
	}, "a batch's transaction to wait on the lock")
	require.Len(t, blocked, 1)
	return blocked[0]
}

func (l *commandsLock) release(t *testing.T) {
	t.Helper()
	require.NoError(t, l.tx.Rollback(context.Background()))
}
