package postgres_test

import (
	"context"
	"errors"
	"net/url"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/postgres"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// loginAs creates a login role that is a member of group and returns a URL
// that connects as it.
func loginAs(t *testing.T, base, login, group string) string {
	t.Helper()
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, base)
	require.NoError(t, err)
	defer admin.Close(ctx)
	_, err = admin.Exec(ctx, "CREATE ROLE "+login+" LOGIN IN ROLE "+group)
	require.NoError(t, err)
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), base)
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		_, _ = c.Exec(context.Background(), "DROP ROLE IF EXISTS "+login)
	})
	u, err := url.Parse(base)
	require.NoError(t, err)
	u.User = url.User(login)
	return u.String()
}

func dropRoles(t *testing.T, base string, r postgres.Roles) {
	t.Cleanup(func() {
		ctx := context.Background()
		c, err := pgx.Connect(ctx, base)
		if err != nil {
			return
		}
		defer c.Close(ctx)
		for _, role := range []string{r.Ingest, r.Relay, r.Projector, r.Reader} {
			_, _ = c.Exec(ctx, "DROP OWNED BY "+role)
			_, _ = c.Exec(ctx, "DROP ROLE IF EXISTS "+role)
		}
	})
}

func TestRolesRefuseRewritingTheLog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	base, schema := testenv.Schema(t)
	owner := testenv.OpenPostgres(t, base, schema)
	roles, err := owner.CreateRoles(ctx, schema)
	require.NoError(t, err)
	dropRoles(t, base, roles)
	again, err := owner.CreateRoles(ctx, schema)
	require.NoError(t, err, "CreateRoles is idempotent")
	require.Equal(t, roles, again)

	// The ingest service, running as a member of the ingest role, appends.
	ingestURL := loginAs(t, base, schema+"_svc_ingest", roles.Ingest)
	ing, err := postgres.Open(ctx, postgres.Config{URL: ingestURL, Schema: schema})
	require.NoError(t, err)
	defer ing.Close()
	storetest.Append(t, ing, storetest.Created(t, "p1", "web", "1", "alice"))

	// ...but PostgreSQL refuses it any rewrite of history.
	c, err := pgx.Connect(ctx, ingestURL)
	require.NoError(t, err)
	defer c.Close(ctx)
	_, err = c.Exec(ctx, "SET search_path = "+schema)
	require.NoError(t, err)
	for _, stmt := range []string{"UPDATE events SET actor = 'mallory'", "DELETE FROM events", "TRUNCATE events",
		"UPDATE artifact_packages SET status = 'finalized'", "DROP TABLE events"} {
		_, err := c.Exec(ctx, stmt)
		var pgErr *pgconn.PgError
		require.True(t, errors.As(err, &pgErr), "%s: %v", stmt, err)
		require.Contains(t, []string{"42501", "42P01"}, pgErr.Code, "%s is refused by privileges: %v", stmt, err)
	}

	// A reader can only read.
	readerURL := loginAs(t, base, schema+"_svc_reader", roles.Reader)
	rd, err := postgres.Open(ctx, postgres.Config{URL: readerURL, Schema: schema})
	require.NoError(t, err)
	defer rd.Close()
	events, err := rd.Fetch(ctx, 0, 10)
	require.NoError(t, err)
	require.Len(t, events, 1)
	err = rd.InTx(ctx, func(tx store.Tx) error {
		_, err := tx.Append(ctx, storetest.Created(t, "p2", "web", "2", "mallory"))
		return err
	})
	require.Error(t, err, "a reader cannot append")

	// The projector role writes views but cannot append.
	projURL := loginAs(t, base, schema+"_svc_projector", roles.Projector)
	pj, err := postgres.Open(ctx, postgres.Config{URL: projURL, Schema: schema})
	require.NoError(t, err)
	defer pj.Close()
	_, err = store.Replay(ctx, pj, store.RegistryViews{}, store.ReplayOptions{Reset: true})
	require.NoError(t, err, "the projector role can rebuild the views")
	err = pj.InTx(ctx, func(tx store.Tx) error {
		_, err := tx.Append(ctx, storetest.Created(t, "p3", "web", "3", "mallory"))
		return err
	})
	require.Error(t, err, "a projector cannot append")

	// The relay role reads the log and holds its leader lease.
	relayURL := loginAs(t, base, schema+"_svc_relay", roles.Relay)
	rl, err := postgres.Open(ctx, postgres.Config{URL: relayURL, Schema: schema})
	require.NoError(t, err)
	defer rl.Close()
	release, _, err := rl.TryLock(ctx, "relay")
	require.NoError(t, err, "the relay role can take its lease")
	_, _, err = owner.TryLock(ctx, "relay")
	require.ErrorIs(t, err, store.ErrLockHeld)
	release()
	_, err = rl.Fetch(ctx, 0, 10)
	require.NoError(t, err)

	final, err := owner.Fetch(ctx, 0, 10)
	require.NoError(t, err)
	require.Len(t, final, 1)
	require.Equal(t, "alice", final[0].Actor)
}
