package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/postgres"
	"github.com/artifactstore/artifactstore/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(testenv.MainNoLeaks(m)) }

func TestSuite(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) store.DB { return testenv.Postgres(t) })
}

func conn(t *testing.T, url, schema string) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close(context.Background()) })
	_, err = c.Exec(ctx, "SET search_path = "+schema)
	require.NoError(t, err)
	return c
}

// TestNaiveBigserialSkips replays, deterministically, the interleaving that
// makes a BIGSERIAL log with a "sequence > cursor" reader lose events: it is
// what the ordering test in storetest would catch, and why Append takes the
// log_head lock instead.
func TestNaiveBigserialSkips(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	setup := conn(t, url, "public")
	_, err := setup.Exec(ctx, "CREATE SCHEMA "+schema)
	require.NoError(t, err)
	a, b, reader := conn(t, url, schema), conn(t, url, schema), conn(t, url, schema)
	_, err = a.Exec(ctx, "CREATE TABLE naive (sequence bigserial PRIMARY KEY, v text)")
	require.NoError(t, err)

	txA, err := a.Begin(ctx)
	require.NoError(t, err)
	_, err = txA.Exec(ctx, "INSERT INTO naive (v) VALUES ('A')") // takes sequence 1
	require.NoError(t, err)
	_, err = b.Exec(ctx, "INSERT INTO naive (v) VALUES ('B')") // takes 2, commits first
	require.NoError(t, err)
	read := func(after int64) []int64 {
		rows, err := reader.Query(ctx, "SELECT sequence FROM naive WHERE sequence > $1 ORDER BY sequence", after)
		require.NoError(t, err)
		seqs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		require.NoError(t, err)
		return seqs
	}
	require.Equal(t, []int64{2}, read(0), "the reader sees 2 before 1 is committed")
	require.NoError(t, txA.Commit(ctx))
	require.Empty(t, read(2), "with its cursor at 2, the naive reader never sees 1: it was skipped")
}

// TestAppendWaitsForEarlierTransaction shows the fix: a second writer's
// Append cannot take a sequence while an earlier appending transaction is
// open, so a reader never sees a later sequence first.
func TestAppendWaitsForEarlierTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.Postgres(t)
	appendedA := make(chan struct{})
	commitA := make(chan struct{})
	doneA := make(chan error, 1)
	go func() {
		doneA <- db.InTx(ctx, func(tx store.Tx) error {
			if _, err := tx.Append(ctx, storetest.Created(t, "a", "n", "1", "x")); err != nil {
				return err
			}
			close(appendedA)
			<-commitA
			return nil
		})
	}()
	<-appendedA
	doneB := make(chan []store.Event, 1)
	go func() {
		var out []store.Event
		err := db.InTx(ctx, func(tx store.Tx) error {
			var err error
			out, err = tx.Append(ctx, storetest.Created(t, "b", "n", "2", "x"))
			return err
		})
		if err != nil {
			t.Errorf("writer B: %v", err)
		}
		doneB <- out
	}()
	// While A is open, B is blocked on the log_head lock and the log is empty
	// to readers. Check a few times that nothing became visible.
	for range 5 {
		select {
		case <-doneB:
			t.Fatal("writer B committed while writer A's append was still open")
		case <-time.After(20 * time.Millisecond):
		}
		head, err := db.Head(ctx)
		require.NoError(t, err)
		require.Zero(t, head)
	}
	close(commitA)
	require.NoError(t, <-doneA)
	outB := <-doneB
	require.Equal(t, int64(2), outB[0].Sequence)
	events, err := db.Fetch(ctx, 0, 10)
	require.NoError(t, err)
	require.Equal(t, "a", events[0].SubjectID)
	require.Equal(t, "b", events[1].SubjectID)
}

func TestConcurrentMigrate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	var wg sync.WaitGroup
	applied := make([][]int64, 4)
	errs := make([]error, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db, err := postgres.Open(ctx, postgres.Config{URL: url, Schema: schema})
			if err != nil {
				errs[i] = err
				return
			}
			defer db.Close()
			applied[i], errs[i] = db.Migrate(ctx)
		}()
	}
	wg.Wait()
	total := 0
	for i := range 4 {
		require.NoError(t, errs[i])
		total += len(applied[i])
	}
	db := testenv.OpenPostgres(t, url, schema)
	st, err := db.MigrationStatus(ctx)
	require.NoError(t, err)
	require.Equal(t, len(st), total, "each migration applied exactly once across concurrent migrators")
	for _, s := range st {
		require.True(t, s.Applied)
	}
	id, err := db.LogID(ctx)
	require.NoError(t, err)
	require.NotEmpty(t, id)
}

func TestFreshGivesNewLog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.Postgres(t)
	storetest.Append(t, db, storetest.Created(t, "p", "n", "1", "a"))
	before, err := db.LogID(ctx)
	require.NoError(t, err)
	require.NoError(t, db.Fresh(ctx))
	after, err := db.LogID(ctx)
	require.NoError(t, err)
	require.NotEqual(t, before, after)
	head, err := db.Head(ctx)
	require.NoError(t, err)
	require.Zero(t, head)
}

func TestEventsAreAppendOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	db := testenv.OpenPostgres(t, url, schema)
	storetest.Append(t, db, storetest.Created(t, "p", "n", "1", "a"))
	c := conn(t, url, schema)
	for _, stmt := range []string{
		"UPDATE events SET actor = 'mallory'",
		"DELETE FROM events",
		"TRUNCATE events",
	} {
		_, err := c.Exec(ctx, stmt)
		require.Error(t, err, stmt)
		require.Contains(t, err.Error(), "append-only", stmt)
	}
	events, err := db.Fetch(ctx, 0, 10)
	require.NoError(t, err)
	require.Len(t, events, 1)
	require.Equal(t, "a", events[0].Actor)
}

func TestUnreachableIsUnavailable(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	url := fmt.Sprintf("postgres://postgres:s3cret@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=2", testenv.FreePort())
	_, err := postgres.Open(ctx, postgres.Config{URL: url})
	require.Error(t, err)
	require.True(t, errors.Is(err, store.ErrUnavailable), "got %v", err)
	require.True(t, store.Temporary(err))
	require.NotContains(t, err.Error(), "s3cret", "errors never echo the password")
}

func TestDatabaseRestartRecovers(t *testing.T) {
	t.Parallel()
	if testenv.PGBinDir() == "" {
		t.Fatal("pg_ctl/initdb are required for this test")
	}
	ctx := context.Background()
	c, err := testenv.NewCluster()
	require.NoError(t, err)
	t.Cleanup(c.Remove)
	require.NoError(t, c.Start())
	db, err := postgres.Open(ctx, postgres.Config{URL: c.URL()})
	require.NoError(t, err)
	t.Cleanup(db.Close)
	_, err = db.Migrate(ctx)
	require.NoError(t, err)
	storetest.Append(t, db, storetest.Created(t, "p1", "n", "1", "a"))
	signal := db.AppendSignal()
	require.NoError(t, c.Stop())
	err = db.InTx(ctx, func(tx store.Tx) error {
		_, err := tx.Append(ctx, storetest.Created(t, "p2", "n", "2", "a"))
		return err
	})
	require.True(t, store.Temporary(err), "a stopped database is unavailable, got %v", err)
	select {
	case <-signal: // the listener lost its connection and woke everybody
	case <-time.After(30 * time.Second):
		t.Fatal("append signal did not fire when the listener lost its connection")
	}
	require.NoError(t, c.Start())
	testenv.Eventually(t, 30*time.Second, func() bool {
		return db.InTx(ctx, func(tx store.Tx) error {
			_, err := tx.Append(ctx, storetest.Created(t, "p2", "n", "2", "a"))
			return err
		}) == nil
	}, "append succeeds after the database is back")
	events, err := db.Fetch(ctx, 0, 10)
	require.NoError(t, err)
	require.Len(t, events, 2)
	require.Equal(t, int64(2), events[1].Sequence)
}

// TestConstraintViolationIsConflict: a write a unique constraint refuses
// reaches callers as store.ErrConflict, not as the driver's error alone.
func TestConstraintViolationIsConflict(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.Postgres(t)
	p := store.Package{ID: "p1", Name: "web", Version: "1", Status: store.StatusOpen, CreatedBy: "a", CreatedAt: time.Unix(1, 0).UTC()}
	load := func() error {
		return db.InTx(ctx, func(tx store.Tx) error { return tx.LoadViews(ctx, []store.Package{p}, nil) })
	}
	require.NoError(t, load())
	err := load()
	require.ErrorIs(t, err, store.ErrConflict)
	require.False(t, store.Temporary(err))
}
