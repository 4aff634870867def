package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/internal/ops"
	"github.com/artifactstore/artifactstore/internal/testenv"
)

// TestIngestLiveness: the ingest service's commit loops feed a liveness
// watchdog; /healthz lists it and passes while Run runs.
func TestIngestLiveness(t *testing.T) {
	t.Parallel()
	ns := testenv.NATS(t)
	srv := ops.New("", nil)
	svc, err := ingest.New(testenv.Postgres(t), ns.Connect(t), ingest.Config{Registerer: srv.Registerer(), Logger: testenv.Logger(t)})
	require.NoError(t, err)
	c, _ := watchComponent(srv, "ingest", svc, svc.Run)
	results, _ := srv.Live()
	require.Len(t, results, 1)
	require.Equal(t, "ingest", results[0].Name)
	start := time.Now()
	runWatched(t, srv, c)
	testenv.Eventually(t, 30*time.Second, func() bool { return svc.LastProgress().After(start) }, "Run to start")
	_, ok := srv.Live()
	require.True(t, ok)
}
