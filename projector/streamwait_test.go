package projector

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/internal/wire"
)

// TestWaitsForTheStream: a worker started before the stream exists looks
// for it again and again, backing off, and applies the log once the
// stream is there; a worker stopped while it waits returns nil at once.
func TestWaitsForTheStream(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	require.NoError(t, e.js.DeleteStream(ctx, DefaultStream))
	appendPackages(t, e.db, 0, 50)
	waiting := func(logs *observer.ObservedLogs) int {
		return logs.FilterMessage("waiting for the events stream").Len()
	}

	core, stopped := observer.New(zap.InfoLevel)
	cfg := fastConfig("stopped")
	cfg.Logger = zap.New(core)
	w := e.start(t, cfg)
	testenv.Eventually(t, 10*time.Second, func() bool { return waiting(stopped) > 0 }, "the worker to wait for the stream")
	began := time.Now()
	require.NoError(t, w.stop())
	require.Less(t, time.Since(began), 5*time.Second, "a stop ends the wait at once")

	core, logs := observer.New(zap.InfoLevel)
	cfg = fastConfig("early")
	cfg.Logger = zap.New(core)
	w = e.start(t, cfg)
	testenv.Eventually(t, 10*time.Second, func() bool { return waiting(logs) >= 3 }, "the worker to look for the stream again")
	_, err := e.js.CreateStream(ctx, jetstream.StreamConfig{
		Name: DefaultStream, Subjects: []string{wire.Subjects}, Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute,
	})
	require.NoError(t, err)
	e.relay(t)
	want := expected(t, e.db, e.parts)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "checkpoints reach the log")
	require.NoError(t, w.stop())
	require.Equal(t, 75.0, w.metric(t, "artifactstore_projector_events_applied_total", nil))
}
