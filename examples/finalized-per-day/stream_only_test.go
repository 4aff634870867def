package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/projection"
)

// TestDrivenOnlyByTheStream: the example program, given only a NATS URL
// and the team's database URL (a role of its own that cannot read the
// log's schema: a query on the log's events fails with permission
// denied), builds packages finalized per actor per day from the events
// the real relay publishes; its table equals a replay of the stream and
// the counts the log's events make; --status reports it caught up; SIGTERM
// stops it cleanly.
func TestDrivenOnlyByTheStream(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	tm := newTeam(t)
	ctx := context.Background()
	_, err := tm.pool.Exec(ctx, fmt.Sprintf("SELECT count(*) FROM %s.events", w.logSchema))
	var pe *pgconn.PgError
	require.True(t, errors.As(err, &pe), "the team's role cannot read the log: %v", err)
	require.Equal(t, "42501", pe.Code, "permission denied: %v", err)
	require.Contains(t, pe.Message, "permission denied")

	w.appendPackages(t, 200)
	ex := newProc(t, "finalized-per-day", exampleBin, nil,
		"--nats-url", w.ns.URL(), "--database-url", tm.url, "--worker-id", "ex-1", "--http-listen", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort()))
	ex.start(t)
	w.appendPackages(t, 200)
	want := w.lastPerPartition(t)
	testenv.Eventually(t, 60*time.Second, func() bool { return caughtUp(tm.checkpoints(t), want) },
		"the example catches up with the log through the stream")

	var out bytes.Buffer
	status := exec.Command(exampleBin, "--status", "--nats-url", w.ns.URL(), "--database-url", tm.url)
	status.Stdout = &out
	require.NoError(t, status.Run())
	var st projection.Status
	require.NoError(t, json.Unmarshal(out.Bytes(), &st), out.String())
	require.Equal(t, Name, st.Projection)
	require.Equal(t, w.logID, st.LogID)
	require.Equal(t, w.parts, st.LogPartitions, "learnt from the stream")
	require.Zero(t, st.Lag)
	require.Zero(t, st.Parked)
	require.Equal(t, "ex-1", st.Partitions[0].Worker)

	require.NoError(t, ex.signal(syscall.SIGTERM), "SIGTERM ends it with status 0")
	tm.requireReplayEqual(t, w)
}
