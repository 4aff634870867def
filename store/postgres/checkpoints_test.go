package postgres_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
)

// TestLockCheckpointsAfterTheRowsWereReplaced: a replay --reset deletes a
// projection's checkpoint rows and inserts new ones. LockCheckpoints waiting
// for its lock meanwhile must lock and return the new rows, not skip the
// deleted ones and return nothing: its caller (a switch, another replay)
// would then go on holding no checkpoint, while projector batches commit.
func TestLockCheckpointsAfterTheRowsWereReplaced(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	db := testenv.OpenPostgres(t, url, schema)
	require.NoError(t, db.InTx(ctx, func(tx store.Tx) error {
		_, err := tx.LockCheckpoints(ctx, "p", 3)
		return err
	}))
	conn := func() *pgx.Conn {
		c, err := pgx.Connect(ctx, url)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close(context.Background()) })
		_, err = c.Exec(ctx, "SET search_path TO "+pgx.Identifier{schema}.Sanitize())
		require.NoError(t, err)
		return c
	}
	replay, probe := conn(), conn()
	_, err := replay.Exec(ctx, "BEGIN; SELECT * FROM checkpoints WHERE projection = 'p' FOR UPDATE")
	require.NoError(t, err)

	type result struct {
		cps       []store.Checkpoint
		stillHeld error
	}
	locked := make(chan result, 1)
	release := make(chan struct{})
	go func() {
		var r result
		err := db.InTx(ctx, func(tx store.Tx) error {
			var err error
			r.cps, err = tx.LockCheckpoints(ctx, "p", 3)
			// While this transaction is open, nobody else can lock them.
			_, r.stillHeld = probe.Exec(ctx, "SELECT * FROM checkpoints WHERE projection = 'p' AND partition = 1 FOR UPDATE NOWAIT")
			locked <- r
			<-release
			return err
		})
		if err != nil {
			t.Errorf("LockCheckpoints: %v", err)
		}
	}()
	var waiting bool
	testenv.Eventually(t, time.Minute, func() bool {
		require.NoError(t, probe.QueryRow(ctx, "SELECT count(*) > 0 FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
			replay.PgConn().PID()).Scan(&waiting))
		return waiting
	}, "LockCheckpoints to wait for the replay's lock")
	_, err = replay.Exec(ctx, `DELETE FROM checkpoints WHERE projection = 'p';
		INSERT INTO checkpoints (projection, partition, sequence) SELECT 'p', g, 7 FROM generate_series(0, 2) g; COMMIT`)
	require.NoError(t, err)
	r := <-locked
	close(release)
	require.Equal(t, []store.Checkpoint{{Projection: "p", Partition: 0, Sequence: 7}, {Projection: "p", Partition: 1, Sequence: 7},
		{Projection: "p", Partition: 2, Sequence: 7}}, r.cps)
	var pgErr *pgconn.PgError
	require.True(t, errors.As(r.stillHeld, &pgErr) && pgErr.Code == "55P03", "the new rows are locked: %v", r.stillHeld)
}
