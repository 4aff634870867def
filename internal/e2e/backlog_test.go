package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/projector"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/store"
)

// EnvBacklogEvents overrides how many events TestRelayOutageLargeBacklog
// commits while the relay is down.
const EnvBacklogEvents = "ARTIFACTSTORE_BACKLOG_EVENTS"

// backlogEvents is the backlog size: 250,000 in the long mode (issue 13's
// reproduction ended with ~147,000 of 261,000 packages in the views),
// 120,000 otherwise — still above the 100,000 log keys the old projector
// kept in memory, so a window of that size cannot hide a skip.
func backlogEvents(t *testing.T) int {
	if n, err := strconv.Atoi(os.Getenv(EnvBacklogEvents)); err == nil && n > 0 {
		return n
	}
	if currentMode(t).name == "long" {
		return 250_000
	}
	return 120_000
}

// TestRelayOutageLargeBacklog stops the relay, commits a backlog larger
// than any in-memory window of the projectors (creates of real package
// payloads and a finalize for every ninth package, appended through the
// store API in transactions of 5,000 events), starts the relay again and
// asserts that the stream gets every event with its partition headers
// (O1), that every partition's checkpoint reaches the log head, that the
// views hold every package, and that they equal a replay of the log (O2).
func TestRelayOutageLargeBacklog(t *testing.T) {
	skipIfOff(t)
	n := backlogEvents(t)
	pg := newPG(t)
	e := startEnv(t, pg, "backlog", envOptions{ingest: 1, relays: 1, projectors: 2})
	waitAssigned(t, e)
	require.NoError(t, e.relays[0].kill())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	began := time.Now()
	creates, finalizes := appendBacklog(t, ctx, e.db, n)
	committed := time.Since(began)
	head, err := e.db.Head(ctx)
	require.NoError(t, err)
	t.Logf("committed %d events (%d creates, %d finalizes) with the relay down in %s; log head %d",
		creates+finalizes, creates, finalizes, committed.Round(time.Millisecond), head)

	resumed := time.Now()
	e.relays[0].setWant(true)
	nc, js := e.connect(t)
	defer nc.Close()
	var inStream, atHead time.Duration
	for deadline := resumed.Add(5 * time.Minute); inStream == 0 || atHead == 0; {
		require.True(t, time.Now().Before(deadline), "not caught up within 5 minutes: %s", projectionState(ctx, e))
		if inStream == 0 {
			if st, err := relay.ReadStatus(ctx, e.db, js, relay.DefaultStream); err == nil && st.Lag == 0 {
				inStream = time.Since(resumed)
			}
		}
		if ps, err := projector.Inspect(ctx, e.db, projector.DefaultProjection); err == nil && len(ps.Partitions) == e.parts {
			low := ps.Partitions[0].Checkpoint
			for _, p := range ps.Partitions {
				low = min(low, p.Checkpoint)
			}
			if low == head && ps.ParkedPartitions == 0 {
				atHead = time.Since(resumed)
			}
		}
		time.Sleep(100 * time.Millisecond) // poll interval
	}
	t.Logf("after the relay resumed: the stream held the head after %s, every partition's checkpoint was at the head after %s",
		inStream.Round(time.Millisecond), atHead.Round(time.Millisecond))

	var pkgs, final int
	conn, err := pgx.Connect(ctx, e.dbURL)
	require.NoError(t, err)
	defer conn.Close(ctx)
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*), count(*) FILTER (WHERE status = 'finalized') FROM artifact_packages").Scan(&pkgs, &final))
	require.Equal(t, creates, pkgs, "every created package is in the views")
	require.Equal(t, finalizes, final, "every finalized package is finalized in the views")

	checked := time.Now()
	requireVerdicts(t, e, nil, time.Minute)
	t.Logf("O1 and O2 over %d events took %s", head, time.Since(checked).Round(time.Millisecond))
}

// appendBacklog appends n events straight to the log: creates with the
// payload ingest writes (UUIDv7 ids, keep_forever), and after every eighth
// create a finalize of the package created four events before. It
// returns how many of each.
func appendBacklog(t *testing.T, ctx context.Context, db store.DB, n int) (creates, finalizes int) {
	t.Helper()
	const perTx = 5000
	var ids []string
	batch := make([]store.Event, 0, perTx)
	flush := func() {
		require.NoError(t, db.InTx(ctx, func(tx store.Tx) error {
			_, err := tx.Append(ctx, batch...)
			return err
		}))
		batch = batch[:0]
	}
	for i := range n {
		var ev store.Event
		var err error
		if i%9 == 8 {
			id := ids[len(ids)-4]
			b, _ := json.Marshal(store.PackageFinalized{PackageID: id, ManifestDigest: store.DigestOf([]byte(id))})
			ev, err = store.NewEvent(store.TypePackageFinalized, store.SubjectKindPackage, id, "backlog", b)
			finalizes++
		} else {
			id := uuid.Must(uuid.NewV7()).String()
			ids = append(ids, id)
			b, _ := json.Marshal(store.PackageCreated{PackageID: id, Name: fmt.Sprintf("backlog-%d", i/100), Version: fmt.Sprintf("%d.0.0", i%100),
				Retention: store.RetentionPolicy{Policy: store.RetentionKeepForever}})
			ev, err = store.NewEvent(store.TypePackageCreated, store.SubjectKindPackage, id, "backlog", b)
			creates++
		}
		require.NoError(t, err)
		if batch = append(batch, ev); len(batch) == perTx {
			flush()
		}
	}
	if len(batch) > 0 {
		flush()
	}
	return creates, finalizes
}
