package postgres_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// TestAppendCommandsCommits: AppendCommands commits (InTx has nothing
// left to do), a statement that fails in its pipeline leaves nothing
// behind, a backend that dies before AppendCommands is a known failure,
// and one that dies in the round trip with COMMIT reports an unknown
// outcome — and in both cases nothing was committed.
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
	// round trip that appends fails before COMMIT was sent, so
	// the outcome is known: nothing committed, worth retrying.
	terminate := func(where string) int {
		var n int
		require.NoError(t, c.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE `+where+` AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL AND datname = current_database()
			AND EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class r ON r.oid = l.relation JOIN pg_namespace s ON s.oid = r.relnamespace
				WHERE l.pid = pg_stat_activity.pid AND s.nspname = $1)`, schema).Scan(&n))
		return n
	}
	err = db.InTx(ctx, func(stx store.Tx) error {
		tx := stx.(store.CommandBatcher)
		if _, _, _, _, err := tx.ClaimAll(ctx, []string{"c3"}, [][]byte{{1}}, []string{ev2.SubjectID}, []string{"n"}, []string{"2"}, nil); err != nil {
			return err
		}
		// The only backend of this schema's pool in a transaction is ours.
		// ClaimAll's last statement: it marks the transaction in flight
		// (commands_guess.go), or locks the head.
		require.Equal(t, 1, terminate("state LIKE 'idle in transaction%' AND (query LIKE 'SELECT pg_advisory_xact_lock%' OR query LIKE 'SELECT sequence, created_at, chain_digest%')"),
			"terminated the transaction's backend")
		_, err := tx.AppendCommands(ctx, nil, []store.Event{ev2}, []string{"c3"}, nil)
		return err
	})
	require.ErrorIs(t, err, store.ErrUnavailable)
	require.NotErrorIs(t, err, store.ErrOutcomeUnknown)
	head, err = db.Head(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(1), head, "the terminated transaction did not commit")

	// The backend dies while the round trip that ends with COMMIT is on
	// its way, in the statement before COMMIT (a trigger holds the one
	// that records the command's sequence): the server ended the session
	// before it ran COMMIT, so the outcome is known.
	_, err = c.Exec(ctx, `CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(60); RETURN NEW; END $$;
		CREATE TRIGGER slow BEFORE UPDATE ON commands FOR EACH ROW WHEN (NEW.sequence IS NOT NULL) EXECUTE FUNCTION slow()`)
	require.NoError(t, err)
	killWhen := func(where string) chan int {
		killed := make(chan int, 1)
		go func() {
			deadline := time.Now().Add(30 * time.Second)
			for time.Now().Before(deadline) {
				if n := terminate(where); n > 0 {
					killed <- n
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
			killed <- 0
		}()
		return killed
	}
	killed := killWhen("wait_event = 'PgSleep' AND query LIKE 'INSERT INTO commands (command_id, sequence)%'")
	_, err = appendWithCommand(ctx, db, "c4", storetest.Created(t, storetest.PackageID(4), "n", "4", "a"))
	require.Equal(t, 1, <-killed, "terminated the backend during the commit round trip")
	require.ErrorIs(t, err, store.ErrUnavailable)
	require.NotErrorIs(t, err, store.ErrOutcomeUnknown)

	// The backend dies during COMMIT itself (a deferred trigger holds it):
	// the outcome is reported unknown, and the transaction did not commit.
	_, err = c.Exec(ctx, `DROP TRIGGER slow ON commands;
		CREATE CONSTRAINT TRIGGER slow AFTER UPDATE ON commands DEFERRABLE INITIALLY DEFERRED
			FOR EACH ROW WHEN (NEW.sequence IS NOT NULL) EXECUTE FUNCTION slow()`)
	require.NoError(t, err)
	killed = killWhen("wait_event = 'PgSleep' AND query = 'commit'")
	_, err = appendWithCommand(ctx, db, "c5", storetest.Created(t, storetest.PackageID(5), "n", "5", "a"))
	require.Equal(t, 1, <-killed, "terminated the backend during COMMIT")
	require.ErrorIs(t, err, store.ErrOutcomeUnknown)
	head, err = db.Head(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(1), head, "the terminated transactions did not commit")
}

func appendWithCommand(ctx context.Context, db store.DB, id string, ev store.Event) ([]store.Event, error) {
	var out []store.Event
	err := db.InTx(ctx, func(stx store.Tx) error {
		tx := stx.(store.CommandBatcher)
		if _, _, _, _, err := tx.ClaimAll(ctx, []string{id}, [][]byte{{1}}, []string{ev.SubjectID}, []string{ev.SubjectID}, []string{"1"}, nil); err != nil {
			return err
		}
		var err error
		out, err = tx.AppendCommands(ctx, nil, []store.Event{ev}, []string{id}, nil)
		return err
	})
	return out, err
}
