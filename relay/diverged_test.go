package relay_test

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/postgres"
)

// restorable is a log in a database of its own, so that a test can back it
// up and restore it as an operator would: the restored database is the
// backup byte for byte, log id and all.
type restorable struct {
	*env
	url, name string
}

func setupRestorable(t *testing.T) *restorable {
	t.Helper()
	u := testenv.Database(t)
	p, err := url.Parse(u)
	require.NoError(t, err)
	r := &restorable{url: u, name: strings.TrimPrefix(p.Path, "/")}
	r.env = setupDB(t, r.open(t))
	return r
}

// open opens (and migrates, a no-op once done) the log's database.
func (r *restorable) open(t *testing.T) *postgres.DB { return testenv.OpenPostgres(t, r.url, "") }

// admin runs statements on the server's maintenance database.
func admin(t *testing.T, stmts ...string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, testenv.PostgresURL(t))
	require.NoError(t, err)
	defer conn.Close(ctx)
	for _, s := range stmts {
		_, err := conn.Exec(ctx, s)
		require.NoError(t, err, s)
	}
}

// backup copies the log's database (no session may be connected to it).
func (r *restorable) backup(t *testing.T) string {
	name := testenv.Name("backup")
	admin(t, "CREATE DATABASE "+name+" TEMPLATE "+r.name)
	t.Cleanup(func() { admin(t, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)") })
	return name
}

// restore replaces the log's database with the backup, ending every
// session connected to it.
func (r *restorable) restore(t *testing.T, backup string) {
	admin(t, "DROP DATABASE "+r.name+" WITH (FORCE)", "CREATE DATABASE "+r.name+" TEMPLATE "+backup)
}

// requireDiverged checks err and that the stream still holds exactly the
// 100 events of the old history.
func (r *restorable) requireDiverged(t *testing.T, err error, old []store.Event) {
	t.Helper()
	require.ErrorIs(t, err, relay.ErrDivergedHistory)
	var de *relay.DivergedError
	require.ErrorAs(t, err, &de)
	require.Equal(t, int64(100), de.Sequence)
	require.Equal(t, old[99].PayloadDigest.String(), de.StreamDigest)
	require.NotEqual(t, de.StreamDigest, de.LogDigest)
	require.Contains(t, err.Error(), "100")
	require.Contains(t, err.Error(), de.StreamDigest)
	info := r.streamInfo(t)
	require.Equal(t, uint64(100), info.State.Msgs, "nothing of the new history was published")
	require.Equal(t, uint64(100), info.State.LastSeq)
	pos, err := relay.ReadPosition(context.Background(), r.js, r.stream)
	require.NoError(t, err)
	require.Equal(t, int64(100), pos.Sequence)
}

// fetchAll returns every event of the log.
func fetchAll(t *testing.T, db store.DB) []store.Event {
	t.Helper()
	evs, err := db.Fetch(context.Background(), 0, 100000)
	require.NoError(t, err)
	return evs
}

// TestRestoredLogRefused restores the log from a backup taken at event 95
// after the stream got events 96–100, commits 10 other events (the log's
// 96–105) and starts the relay: the stream's event 100 is not the log's,
// so the relay must refuse rather than append the log's 101–105 after the
// stream's old 96–100.
func TestRestoredLogRefused(t *testing.T) {
	t.Parallel()
	e := setupRestorable(t)
	e.appendEvents(t, e.db, 95, 19)
	in := e.newRelay(t, e.db, nil).start(t)
	e.awaitCaughtUp(t, 20*time.Second)
	require.NoError(t, in.stop())
	e.db.Close()
	backup := e.backup(t)

	e.db = e.open(t)
	e.appendEvents(t, e.db, 5, 5)
	in = e.newRelay(t, e.db, nil).start(t)
	e.awaitCaughtUp(t, 20*time.Second)
	require.NoError(t, in.stop())
	old := fetchAll(t, e.db)
	e.db.Close()

	e.restore(t, backup)
	e.db = e.open(t)
	e.appendEvents(t, e.db, 10, 5) // other events: the log's 96–105
	head, err := e.db.Head(context.Background())
	require.NoError(t, err)
	require.Equal(t, int64(105), head)

	again := e.newRelay(t, e.db, nil).start(t)
	select {
	case <-again.done:
	case <-time.After(20 * time.Second):
		t.Fatal("the relay did not refuse the restored log")
	}
	e.requireDiverged(t, again.err, old)
}

// TestRestoredLogRefusedWhileRunning restores the log under a running
// relay while NATS is down, commits 10 other events and brings NATS back:
// whenever the relay notices (reading the log, or synchronising after the
// reconnect), it must stop with the same error and publish nothing.
func TestRestoredLogRefusedWhileRunning(t *testing.T) {
	t.Parallel()
	e := setupRestorable(t)
	e.appendEvents(t, e.db, 95, 19)
	e.db.Close()
	backup := e.backup(t)

	e.db = e.open(t)
	in := e.newRelay(t, e.db, nil).start(t)
	e.appendEvents(t, e.db, 5, 5)
	e.awaitCaughtUp(t, 20*time.Second)
	old := fetchAll(t, e.db)

	e.ns.Shutdown()
	e.restore(t, backup)
	writer := e.open(t)
	e.appendEvents(t, writer, 10, 5) // other events: the log's 96–105
	e.ns.Start()

	select {
	case <-in.done:
	case <-time.After(20 * time.Second):
		t.Fatal("the running relay did not stop on the restored log")
	}
	e.requireDiverged(t, in.err, old)
}
