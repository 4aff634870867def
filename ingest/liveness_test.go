package ingest_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/internal/testenv"
)

// TestLastProgressWhileRunning: LastProgress is zero before Run and after
// it, and keeps up with the clock while Run runs, idle or with a batch
// waiting on a lock within its request timeout.
func TestLastProgressWhileRunning(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, schema := testenv.Schema(t)
	ns := testenv.NATS(t)
	s, err := ingest.New(testenv.OpenPostgres(t, url, schema), ns.Connect(t), ingest.Config{RequestTimeout: 10 * time.Second, Logger: testenv.Logger(t)})
	require.NoError(t, err)
	require.True(t, s.LastProgress().IsZero(), "before Run")

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- s.Run(runCtx) }()
	testenv.Eventually(t, 10*time.Second, func() bool { return !s.LastProgress().IsZero() }, "Run to start")
	require.WithinDuration(t, time.Now(), s.LastProgress(), time.Second, "idle")

	l := lockCommands(t, url, schema)
	client := ns.Connect(t)
	replied := make(chan error, 1)
	go func() {
		replied <- ingest.Call(ctx, client, ingest.SubjectCreate, ingest.CreateRequest{CommandID: "c1", Actor: "a", Name: "n", Version: "1"}, &ingest.CommandReply{})
	}()
	l.awaitBlocked(t)
	require.WithinDuration(t, time.Now(), s.LastProgress(), time.Second, "a batch within its time")
	l.release(t)
	select {
	case err := <-replied:
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("no reply")
	}

	cancel()
	select {
	case err := <-ran:
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
	}
	require.True(t, s.LastProgress().IsZero(), "after Run")
}
