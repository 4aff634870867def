package postgres_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store/postgres"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// TestListenerReconnects: the append listener's backend is terminated; the
// listener wakes everybody, reconnects after its backoff on a new backend,
// and appends made through another handle wake waiters again.
func TestListenerReconnects(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	db := testenv.OpenPostgres(t, url, schema)
	other := testenv.OpenPostgres(t, url, schema) // its appends reach db by NOTIFY only
	c := conn(t, url, schema)
	listeners := func() []uint32 {
		rows, err := c.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE query = $1`,
			"LISTEN "+pgx.Identifier{"artifactstore_events_" + schema}.Sanitize())
		require.NoError(t, err)
		pids, err := pgx.CollectRows(rows, pgx.RowTo[uint32])
		require.NoError(t, err)
		return pids
	}
	awaitSignal := func(signal <-chan struct{}, what string) {
		t.Helper()
		select {
		case <-signal:
		case <-time.After(20 * time.Second):
			t.Fatal(what)
		}
	}

	appendWakes := func(i int) {
		t.Helper()
		signal := db.AppendSignal()
		storetest.Append(t, other, storetest.Created(t, storetest.PackageID(i), "n", fmt.Sprint(i), "a"))
		awaitSignal(signal, "an append through another handle wakes waiters")
	}

	db.AppendSignal()
	var first []uint32
	testenv.Eventually(t, 10*time.Second, func() bool { first = listeners(); return len(first) == 1 }, "the listener to LISTEN")
	// The listener wakes everybody once it listens, before it reads any
	// notification: after this append only a lost connection or a
	// notification can close a channel.
	appendWakes(0)

	signal := db.AppendSignal()
	var terminated bool
	require.NoError(t, c.QueryRow(ctx, "SELECT pg_terminate_backend($1)", first[0]).Scan(&terminated))
	require.True(t, terminated)
	awaitSignal(signal, "the lost listener wakes everybody")
	testenv.Eventually(t, 10*time.Second, func() bool {
		now := listeners()
		return len(now) == 1 && now[0] != first[0]
	}, "the listener to reconnect on a new backend")
	// The first round may be woken by the reconnected listener's own
	// wake-up; the second only by a notification.
	appendWakes(1)
	appendWakes(2)
}

// TestLongSchemaName: a log in a schema whose name takes PostgreSQL's
// whole 63 bytes appends, and its appends wake another handle's waiters
// (the NOTIFY channel's name must fit in 63 bytes too).
func TestLongSchemaName(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := testenv.PostgresURL(t)
	schema := testenv.Name("t")
	schema += strings.Repeat("x", 63-len(schema))
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), url)
		if err == nil {
			_, _ = c.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+schema+" CASCADE")
			_ = c.Close(context.Background())
		}
	})
	db := testenv.OpenPostgres(t, url, schema)
	other := testenv.OpenPostgres(t, url, schema)
	c := conn(t, url, "public")
	db.AppendSignal()
	testenv.Eventually(t, 10*time.Second, func() bool {
		var n int
		require.NoError(t, c.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE query = $1`,
			"LISTEN "+pgx.Identifier{postgres.Channel(db)}.Sanitize()).Scan(&n))
		return n == 1
	}, "the listener to LISTEN")
	// The first round may be woken by the listener's own wake-up; the
	// second only by a notification.
	for i := range 2 {
		signal := db.AppendSignal()
		storetest.Append(t, other, storetest.Created(t, storetest.PackageID(i), "n", fmt.Sprint(i), "a"))
		select {
		case <-signal:
		case <-time.After(20 * time.Second):
			t.Fatal("an append through another handle wakes waiters")
		}
	}
	head, err := db.Head(ctx)
	require.NoError(t, err)
	require.Equal(t, int64(2), head)
}

// TestSchemaNameTooLong: a schema name PostgreSQL would truncate is refused
// before anything is created.
func TestSchemaNameTooLong(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := testenv.PostgresURL(t)
	schema := testenv.Name("t")
	schema += strings.Repeat("x", 64-len(schema))
	for _, cfg := range []postgres.Config{{URL: url, Schema: schema}, {URL: url, Schema: "public", ViewSchema: schema}} {
		_, err := postgres.Open(ctx, cfg)
		require.ErrorContains(t, err, "is 64 bytes long; PostgreSQL's names are at most 63")
	}
	var n int
	require.NoError(t, conn(t, url, "public").QueryRow(ctx, "SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema[:63]).Scan(&n))
	require.Zero(t, n, "no schema created")
}
