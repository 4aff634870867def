package postgres_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/postgres"
)

// TestViewWritesTravelLater: view writes are not sent when called but
// ahead of the transaction's next statement — a read in the same
// transaction sees them — or with COMMIT, whose answer then carries their
// error, and a failed write leaves nothing of its transaction behind.
func TestViewWritesTravelLater(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	db := testenv.OpenPostgres(t, url, schema)
	pkg := store.Package{ID: "p1", Name: "n", Version: "1", Status: store.StatusOpen, CreatedBy: "a"}

	require.NoError(t, db.InTx(ctx, func(tx store.Tx) error {
		require.NoError(t, tx.PutPackage(ctx, pkg))
		got, err := tx.GetPackage(ctx, "p1")
		require.NoError(t, err, "the pending write goes ahead of the read")
		require.Equal(t, "n", got.Name)
		return tx.PutRetention(ctx, store.Retention{PackageID: "p1", Policy: store.RetentionKeepForever})
	}))
	v, err := db.Package(ctx, "p1")
	require.NoError(t, err)
	require.Equal(t, store.RetentionKeepForever, v.Retention.Policy, "a write left pending at the end commits with COMMIT")

	// The retention row breaks a check constraint: the call itself
	// succeeds (nothing was sent), the commit fails with the server's
	// error, and the checkpoint advanced in the same transaction is not
	// committed.
	err = db.InTx(ctx, func(tx store.Tx) error {
		require.NoError(t, tx.AdvanceCheckpoint(ctx, "views", 0, 0, 7))
		require.NoError(t, tx.PutPackage(ctx, store.Package{ID: "p2", Name: "n", Version: "2", Status: store.StatusOpen, CreatedBy: "a"}))
		require.NoError(t, tx.PutRetention(ctx, store.Retention{PackageID: "p2", Policy: "no-such-policy"}), "not sent yet")
		return nil
	})
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, "23514", pgErr.Code, "check_violation, reported by the commit")
	require.NotErrorIs(t, err, store.ErrOutcomeUnknown, "the server answered: the outcome is known")
	_, err = db.Package(ctx, "p2")
	require.ErrorIs(t, err, store.ErrNotFound)
	cps, err := db.Checkpoints(ctx)
	require.NoError(t, err)
	for _, c := range cps {
		require.Zero(t, c.Sequence, "nothing of the failed transaction is committed")
	}
}

// TestAdvanceCheckpointAndRead: the checkpoint's compare-and-set and the
// reads of a batch's rows in one call; a stale expectation is
// ErrCheckpointMoved, and nothing of that transaction commits.
func TestAdvanceCheckpointAndRead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	db := testenv.OpenPostgres(t, url, schema)
	require.NoError(t, db.InTx(ctx, func(tx store.Tx) error {
		for _, id := range []string{"a", "b"} {
			if err := tx.PutPackage(ctx, store.Package{ID: id, Name: id, Version: "1", Status: store.StatusOpen, CreatedBy: "x"}); err != nil {
				return err
			}
		}
		return tx.PutRetention(ctx, store.Retention{PackageID: "a", Policy: store.RetentionKeepForever})
	}))

	read := func(from, to int64, ids ...string) (map[string]store.Package, map[string]store.Retention, error) {
		var ps map[string]store.Package
		var rs map[string]store.Retention
		err := db.InTx(ctx, func(tx store.Tx) error {
			var err error
			ps, rs, err = tx.(store.BatchReader).AdvanceCheckpointAndRead(ctx, "views", 3, from, to, ids)
			if err != nil {
				return err
			}
			// Written after the read: must commit only with the checkpoint.
			return tx.PutPackage(ctx, store.Package{ID: "w", Name: "w", Version: "1", Status: store.StatusOpen, CreatedBy: "x"})
		})
		return ps, rs, err
	}
	checkpoint := func() int64 {
		cps, err := db.Checkpoints(ctx)
		require.NoError(t, err)
		for _, c := range cps {
			if c.Projection == "views" && c.Partition == 3 {
				return c.Sequence
			}
		}
		return 0
	}

	ps, rs, err := read(0, 5, "a", "b", "c", "a")
	require.NoError(t, err)
	require.Len(t, ps, 2)
	require.Equal(t, "a", ps["a"].Name)
	require.Equal(t, "b", ps["b"].Name)
	require.Len(t, rs, 1)
	require.Equal(t, store.RetentionKeepForever, rs["a"].Policy)
	require.Equal(t, int64(5), checkpoint())

	require.NoError(t, db.InTx(ctx, func(tx store.Tx) error {
		return tx.PutPackage(ctx, store.Package{ID: "w", Name: "changed", Version: "1", Status: store.StatusOpen, CreatedBy: "x"})
	}))
	_, _, err = read(0, 9, "a")
	require.ErrorIs(t, err, store.ErrCheckpointMoved)
	_, _, err = read(4, 9)
	require.ErrorIs(t, err, store.ErrCheckpointMoved)
	require.Equal(t, int64(5), checkpoint())
	w, err := db.Package(ctx, "w")
	require.NoError(t, err)
	require.Equal(t, "changed", w.Name, "the write after a failed compare-and-set did not commit")

	_, _, err = read(5, 9)
	require.NoError(t, err)
	require.Equal(t, int64(9), checkpoint())
}

// TestApplicationName: connections report the configured application_name
// (what an operator sees in pg_stat_activity), unless the URL names one.
func TestApplicationName(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	c := conn(t, url, schema)
	count := func(name string) int {
		var n int
		require.NoError(t, c.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name).Scan(&n))
		return n
	}
	name := "artifactstore-test-" + schema
	db, err := postgres.Open(ctx, postgres.Config{URL: url, Schema: schema, ApplicationName: name})
	require.NoError(t, err)
	defer db.Close()
	require.Positive(t, count(name))

	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	own := "from-url-" + schema
	db2, err := postgres.Open(ctx, postgres.Config{URL: url + sep + "application_name=" + own, Schema: schema, ApplicationName: name + "-2"})
	require.NoError(t, err)
	defer db2.Close()
	require.Positive(t, count(own), "the URL's application_name wins")
	require.Zero(t, count(name+"-2"))
}
