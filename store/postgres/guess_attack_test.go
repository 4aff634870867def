package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// awaitBlocked waits (bounded) until a backend of schema's log whose query
// starts with prefix waits for a lock.
func awaitBlocked(t *testing.T, ctx context.Context, url, schema, prefix string) {
	t.Helper()
	c := conn(t, url, schema)
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, c.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND datname = current_database() AND query LIKE $1 || '%'`, prefix).Scan(&n))
		return n > 0
	}, 10*time.Second, 5*time.Millisecond, "a backend waits for a lock in %q", prefix)
}

// isDeadlock reports whether err is PostgreSQL's deadlock error.
func isDeadlock(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "40P01"
}

// TestTurnIsNoHiddenDeadlock: a handle's first appends take turns in the
// process, a wait PostgreSQL's deadlock detector does not see. X holds a
// claim and appends; Y, in its turn, waits for the head Z holds; Z waits
// for X's claim. Without the turn, X would wait for the head in the
// database, which reports the cycle (40P01) to one of them and the others
// complete. With it, X waited for Y's turn until its context ran
// out: a deadlock no one detected.
func TestTurnIsNoHiddenDeadlock(t *testing.T) {
	t.Parallel()
	url, schema := testenv.Schema(t)
	db, other := testenv.OpenPostgres(t, url, schema), testenv.OpenPostgres(t, url, schema)
	ev := func(i int) store.Event { return storetest.Created(t, storetest.PackageID(i), "g", fmt.Sprint(i), "a") }
	appendOne(t, db, 1) // db expects the head

	// Everyone gives up after 20s; the database reports a deadlock after
	// deadlock_timeout (1s by default).
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	xClaimed, xGo, zHolds, zGo := make(chan struct{}), make(chan struct{}), make(chan struct{}), make(chan struct{})
	xDone, yDone, zDone := make(chan error, 1), make(chan error, 1), make(chan error, 1)
	go func() {
		xDone <- db.InTx(ctx, func(tx store.Tx) error {
			if _, err := tx.ClaimCommand(ctx, "c-x", []byte{1}); err != nil {
				return err
			}
			close(xClaimed)
			<-xGo
			_, err := tx.Append(ctx, ev(2))
			return err
		})
	}()
	<-xClaimed
	go func() {
		zDone <- other.InTx(ctx, func(tx store.Tx) error {
			if _, err := tx.Append(ctx, ev(3)); err != nil {
				return err
			}
			close(zHolds)
			<-zGo
			_, err := tx.ClaimCommand(ctx, "c-x", []byte{1})
			return err
		})
	}()
	<-zHolds
	go func() {
		yDone <- db.InTx(ctx, func(tx store.Tx) error { _, err := tx.Append(ctx, ev(4)); return err })
	}()
	awaitBlocked(t, ctx, url, schema, "WITH head AS (UPDATE log_head") // Y, in its turn, waits for Z
	close(xGo)
	close(zGo)

	start := time.Now()
	errX, errZ, errY := <-xDone, <-zDone, <-yDone
	for _, err := range []error{errX, errY, errZ} {
		require.NotErrorIs(t, err, context.DeadlineExceeded, "stuck until the context ran out (after %v)", time.Since(start))
	}
	// X's wait for the head may queue behind Y's: the database may pick
	// any of them, and once Y is gone X and Z may form a second cycle.
	committed := int64(1)
	for _, err := range []error{errX, errY, errZ} {
		if err != nil {
			require.True(t, isDeadlock(err), "only the deadlock fails: X %v, Y %v, Z %v", errX, errY, errZ)
			continue
		}
		committed++
	}
	require.Less(t, committed, int64(4), "the database reported the cycle")
	res, err := store.VerifyLog(context.Background(), db, store.VerifyOptions{})
	require.NoError(t, err)
	require.Equal(t, committed, res.To, "the first event and those of the transactions that committed")
}

// TestTurnHolderWaitsForBegunTransaction is the two-transaction form: Y's
// first Append, in its turn, carries a view write (PutPackage, sent with
// the next round trip) that waits for X's lock on that row, and X then
// appends. Only the turn stood between X and the head.
func TestTurnHolderWaitsForBegunTransaction(t *testing.T) {
	t.Parallel()
	url, schema := testenv.Schema(t)
	db := testenv.OpenPostgres(t, url, schema)
	ev := func(i int) store.Event { return storetest.Created(t, storetest.PackageID(i), "g", fmt.Sprint(i), "a") }
	appendOne(t, db, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pkg := store.Package{ID: "p", Name: "n", Version: "1", Status: "open", CreatedBy: "a", CreatedAt: time.Now().UTC()}
	xHolds, xGo := make(chan struct{}), make(chan struct{})
	xDone, yDone := make(chan error, 1), make(chan error, 1)
	go func() {
		xDone <- db.InTx(ctx, func(tx store.Tx) error {
			if err := tx.PutPackage(ctx, pkg); err != nil {
				return err
			}
			if _, err := tx.GetPackage(ctx, pkg.ID); err != nil { // sends the write: X holds the row
				return err
			}
			close(xHolds)
			<-xGo
			_, err := tx.Append(ctx, ev(2))
			return err
		})
	}()
	<-xHolds
	go func() {
		yDone <- db.InTx(ctx, func(tx store.Tx) error {
			if err := tx.PutPackage(ctx, pkg); err != nil {
				return err
			}
			_, err := tx.Append(ctx, ev(3))
			return err
		})
	}()
	awaitBlocked(t, ctx, url, schema, "INSERT INTO artifact_packages") // Y, in its turn, waits for X
	close(xGo)
	require.NoError(t, <-xDone)
	require.NoError(t, <-yDone)
	res, err := store.VerifyLog(context.Background(), db, store.VerifyOptions{})
	require.NoError(t, err)
	require.Equal(t, int64(3), res.To)
}

// TestHeadClockIsReadAfterTheLock: a handle that waited for the head
// while another transaction held it and then rolled back read the head's
// clock from before its wait (SELECT ... FOR UPDATE computes its columns
// before it locks, and rechecks them only when the row changed). The
// handle's clock offset, taken from that read, was then behind by the
// wait, and every guessed append after it got a created_at that far in
// the past, until the next read.
func TestHeadClockIsReadAfterTheLock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	db, other := testenv.OpenPostgres(t, url, schema), testenv.OpenPostgres(t, url, schema)
	c := conn(t, url, schema)
	now := func() time.Time {
		var ts time.Time
		require.NoError(t, c.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&ts))
		return ts
	}
	ev := func(i int) store.Event { return storetest.Created(t, storetest.PackageID(i), "g", fmt.Sprint(i), "a") }
	holding, release, otherDone := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		otherDone <- other.InTx(ctx, func(tx store.Tx) error {
			if _, err := tx.Append(ctx, ev(1)); err != nil { // locks the head
				return err
			}
			close(holding)
			<-release
			return errAbort
		})
	}()
	<-holding
	const wait = time.Second
	done := make(chan error, 1)
	var first []store.Event
	before := now()
	go func() {
		done <- db.InTx(ctx, func(tx store.Tx) error {
			var err error
			first, err = tx.Append(ctx, ev(2)) // nothing to guess from: locks and reads the head
			return err
		})
	}()
	awaitBlocked(t, ctx, url, schema, "SELECT sequence, created_at, chain_digest")
	time.Sleep(wait) // the time the head is held is what the test measures
	close(release)
	require.ErrorIs(t, <-otherDone, errAbort)
	require.NoError(t, <-done)
	require.False(t, first[0].CreatedAt.Before(before.Add(wait).Truncate(time.Microsecond)),
		"created_at %v: the clock when the lock was had, not before the wait (from %v)", first[0].CreatedAt, before)
	for i := range 3 {
		before := now()
		e := appendOne(t, db, 10+i)
		require.False(t, e.CreatedAt.Before(before.Add(-wait/2)),
			"a guessed append's created_at %v is behind the database's clock %v by the wait", e.CreatedAt, before)
	}
	hits, _ := db.HeadGuesses()
	require.Equal(t, int64(3), hits, "the appends after the read guessed")
}

// holdHead starts a transaction of db that appends ev (and so holds the
// log's head) and ends it, committed or not as commit says, once release
// is closed; its error comes on the channel returned.
func holdHead(t *testing.T, db store.DB, ev store.Event, release <-chan struct{}, commit bool) <-chan error {
	t.Helper()
	holding, done := make(chan struct{}), make(chan error, 1)
	go func() {
		done <- db.InTx(context.Background(), func(tx store.Tx) error {
			if _, err := tx.Append(context.Background(), ev); err != nil {
				close(holding)
				return err
			}
			close(holding)
			select {
			case <-release:
			case <-t.Context().Done(): // the test failed
			}
			if !commit {
				return errAbort
			}
			return nil
		})
	}()
	<-holding
	return done
}

// awaitWaiting waits (bounded) until n backends of the test's log wait for
// a lock of the given kind (pg_stat_activity.wait_event: "advisory",
// "transactionid", "tuple").
func awaitWaiting(t *testing.T, ctx context.Context, url, schema, event string, n int) {
	t.Helper()
	c := conn(t, url, schema)
	require.Eventually(t, func() bool {
		var got int
		require.NoError(t, c.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity a
			WHERE wait_event_type = 'Lock' AND wait_event = $1 AND datname = current_database()
			AND EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class r ON r.oid = l.relation JOIN pg_namespace s ON s.oid = r.relnamespace
				WHERE l.pid = a.pid AND s.nspname = $2)`, event, schema).Scan(&got))
		return got >= n
	}, 10*time.Second, 5*time.Millisecond, "%d backends wait for a lock (%s)", n, event)
}

// TestSuccessorOfAbortedOrCancelled: T1's batch chains to the head it
// expects and waits for the head another process holds; T2 chains after
// T1 and waits for T1's mark. In one run T1's backend is terminated (the
// transaction T2 chained to never commits); in another T2's context is
// cancelled while it waits, its pipeline (COMMIT included) already sent.
// Each outcome reported must be the one the log shows, and the handle
// goes on appending.
func TestSuccessorOfAbortedOrCancelled(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name             string
		killT1, cancelT2 bool
		otherCommits     bool
	}{
		{name: "T1 terminated, other commits", killT1: true, otherCommits: true},
		{name: "T1 terminated, other rolls back", killT1: true},
		{name: "T2 cancelled, other commits", cancelT2: true, otherCommits: true},
		{name: "T2 cancelled, other rolls back", cancelT2: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			url, schema := testenv.Schema(t)
			db, other := testenv.OpenPostgres(t, url, schema), testenv.OpenPostgres(t, url, schema)
			ev := func(i int) store.Event { return storetest.Created(t, storetest.PackageID(i), "g", fmt.Sprint(i), "a") }
			_, err := appendCommands(ctx, db, ev(1))
			require.NoError(t, err)

			release := make(chan struct{})
			otherDone := holdHead(t, other, ev(2), release, c.otherCommits)
			t1, t2 := make(chan error, 1), make(chan error, 1)
			var out1, out2 []store.Event
			go func() {
				var err error
				out1, err = appendCommands(ctx, db, ev(3))
				t1 <- err
			}()
			awaitWaiting(t, ctx, url, schema, "transactionid", 1) // T1's insert waits for the head
			ctx2, cancel2 := context.WithCancel(ctx)
			defer cancel2()
			go func() {
				var err error
				out2, err = appendCommands(ctx2, db, ev(4))
				t2 <- err
			}()
			awaitWaiting(t, ctx, url, schema, "advisory", 1) // T2 waits for T1's mark
			pg := conn(t, url, schema)
			if c.killT1 {
				var n int
				require.NoError(t, pg.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity a
					WHERE wait_event = 'transactionid' AND query LIKE 'WITH head AS (UPDATE log_head%' AND datname = current_database()
					AND EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class r ON r.oid = l.relation JOIN pg_namespace s ON s.oid = r.relnamespace
						WHERE l.pid = a.pid AND s.nspname = $1)`, schema).Scan(&n))
				require.Equal(t, 1, n, "terminated T1")
				err := <-t1
				require.ErrorIs(t, err, store.ErrUnavailable)
				require.NotErrorIs(t, err, store.ErrOutcomeUnknown, "T1 was terminated before its COMMIT ran")
			}
			var err2 error
			if c.cancelT2 {
				cancel2()
				err2 = <-t2
				require.Error(t, err2)
			}
			close(release)
			otherErr := <-otherDone
			if c.otherCommits {
				require.NoError(t, otherErr)
			}
			if !c.killT1 {
				require.NoError(t, <-t1)
			}
			if !c.cancelT2 {
				require.NoError(t, <-t2)
			}
			// T2's backend may outlive its cancelled client.
			awaitSettled(t, ctx, url, schema)
			out5, err := appendCommands(ctx, db, ev(5))
			require.NoError(t, err, "the handle goes on appending")

			log, err := db.Fetch(ctx, 0, 100)
			require.NoError(t, err)
			in := map[string]store.Event{}
			for i, e := range log {
				require.Equal(t, int64(i+1), e.Sequence)
				in[e.SubjectID] = e
			}
			_, has2 := in[ev(2).SubjectID]
			require.Equal(t, c.otherCommits, has2)
			_, has3 := in[ev(3).SubjectID]
			require.Equal(t, !c.killT1, has3, "T1 committed unless terminated")
			if !c.killT1 {
				require.Equal(t, out1[0], in[ev(3).SubjectID])
			}
			_, has4 := in[ev(4).SubjectID]
			switch {
			case !c.cancelT2:
				require.True(t, has4)
				require.Equal(t, out2[0], in[ev(4).SubjectID])
			case errors.Is(err2, store.ErrOutcomeUnknown):
				t.Logf("T2 cancelled: outcome unknown; committed: %v (%v)", has4, err2)
			default:
				require.False(t, has4, "T2 reported not committed (%v) but committed", err2)
			}
			require.Equal(t, out5[0], log[len(log)-1])
			for _, e := range log {
				if e.SubjectID == ev(2).SubjectID {
					continue
				}
				var seq int64
				require.NoError(t, pg.QueryRow(ctx, "SELECT sequence FROM commands WHERE command_id = $1", "cmd-"+e.SubjectID).Scan(&seq))
				require.Equal(t, e.Sequence, seq, "the command of %s points at its event", e.SubjectID)
			}
			var unclaimed int
			require.NoError(t, pg.QueryRow(ctx, "SELECT count(*) FROM commands WHERE sequence IS NULL").Scan(&unclaimed))
			require.Zero(t, unclaimed, "no claim without its event")
			_, err = store.VerifyLog(ctx, db, store.VerifyOptions{})
			require.NoError(t, err)
		})
	}
}

// awaitSettled waits (bounded) until no backend of the test's log is in a
// transaction.
func awaitSettled(t *testing.T, ctx context.Context, url, schema string) {
	t.Helper()
	c := conn(t, url, schema)
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, c.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity a WHERE pid <> pg_backend_pid()
			AND backend_xid IS NOT NULL AND datname = current_database()
			AND EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class r ON r.oid = l.relation JOIN pg_namespace s ON s.oid = r.relnamespace
				WHERE l.pid = a.pid AND s.nspname = $1)`, schema).Scan(&n))
		return n == 0
	}, 10*time.Second, 5*time.Millisecond, "the log's transactions ended")
}
