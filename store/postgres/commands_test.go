package postgres_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// TestAppendCommandsCommits: AppendCommands commits in its own round trip
// (InTx has nothing left to do), a statement that fails in its pipeline
// leaves nothing behind, and a backend that dies before COMMIT reports an
// unknown outcome — and in that case nothing was committed.
func TestAppendCommandsCommits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	db := testenv.OpenPostgres(t, url, schema)
	ev := storetest.Created(t, storetest.PackageID(1), "n", "1", "a")

	require.NoError(t, db.InTx(ctx, func(stx store.Tx) error {
		tx := stx.(store.CommandBatcher)
		claimed, created, _, _, err := tx.ClaimAll(ctx, []string{"c1"}, [][]byte{{1}}, []string{ev.SubjectID}, []string{"n"}, []string{"1"}, nil)
		require.NoError(t, err)
		require.Equal(t, []bool{true}, claimed)
		require.Equal(t, []bool{true}, created)
		out, err := tx.AppendCommands(ctx, nil, []store.Event{ev}, []string{"c1"}, nil)
		require.NoError(t, err)
		require.Equal(t, int64(1), out[0].Sequence)
		return nil
	}))
	head, err := db.Head(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(1), head)

	// A statement that fails inside a pipeline (a check constraint added
	// for the test refuses the claim) is a known failure and leaves
	// nothing behind.
	c := conn(t, url, schema)
	_, err = c.Exec(ctx, "ALTER TABLE commands ADD CONSTRAINT short_ids CHECK (length(command_id) < 10)")
	require.NoError(t, err)
	ev2 := storetest.Created(t, storetest.PackageID(2), "n", "2", "a")
	err = db.InTx(ctx, func(stx store.Tx) error {
		tx := stx.(store.CommandBatcher)
		// The claim is an INSERT that the check refuses: the pipeline
		// fails before anything is appended.
		_, _, _, _, err := tx.ClaimAll(ctx, []string{"a-command-id-too-long"}, [][]byte{{1}}, []string{ev2.SubjectID}, []string{"n"}, []string{"2"}, nil)
		return err
	})
	require.Error(t, err)
	require.False(t, errors.Is(err, store.ErrOutcomeUnknown))
	head, err = db.Head(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(1), head, "nothing appended")

	// The backend is terminated between ClaimAll and AppendCommands: the
	// commit pipeline fails, the outcome is reported unknown, and the
	// transaction did not commit.
	err = db.InTx(ctx, func(stx store.Tx) error {
		tx := stx.(store.CommandBatcher)
		if _, _, _, _, err := tx.ClaimAll(ctx, []string{"c3"}, [][]byte{{1}}, []string{ev2.SubjectID}, []string{"n"}, []string{"2"}, nil); err != nil {
			return err
		}
		// The only backend of this schema's pool in a transaction is ours.
		var n int
		require.NoError(t, c.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE state LIKE 'idle in transaction%' AND query LIKE 'INSERT INTO package_index%' AND pid <> pg_backend_pid()
			AND backend_xid IS NOT NULL AND datname = current_database()
			AND EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class r ON r.oid = l.relation JOIN pg_namespace s ON s.oid = r.relnamespace
				WHERE l.pid = pg_stat_activity.pid AND s.nspname = $1)`, schema).Scan(&n))
		require.Equal(t, 1, n, "terminated the transaction's backend")
		_, err := tx.AppendCommands(ctx, nil, []store.Event{ev2}, []string{"c3"}, nil)
		return err
	})
	require.ErrorIs(t, err, store.ErrOutcomeUnknown)
	head, err = db.Head(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(1), head, "the terminated transaction did not commit")
}
