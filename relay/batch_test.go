package relay_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/relay"
)

// oneBatchInFlight makes batches of 50 events from reads of 100, one in
// flight: when event 230 is published, events 1..200 are acked and
// 201..230 are the open batch.
func oneBatchInFlight(c *relay.Config) { c.PublishBatch, c.MaxInFlight = 50, 50 }

// TestBatchKilledMidWay kills the relay's connection between two messages
// of a batch: the stream keeps none of the batch, and the next relay
// publishes it whole.
func TestBatchKilledMidWay(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.batch = 50
	e.appendEvents(t, e.db, 1000, 100)
	in := e.newRelay(t, e.db, oneBatchInFlight)
	var once sync.Once
	killed := make(chan struct{})
	relay.SetHook(in.r, func(stage string, seq int64) {
		if stage == "published" && seq == 230 {
			once.Do(func() { in.kill(); close(killed) })
		}
	})
	in.start(t)
	<-killed
	require.NoError(t, in.stop())
	info := e.streamInfo(t)
	require.Equal(t, uint64(200), info.State.LastSeq, "the stream holds the acked batches and nothing of the open one")
	require.Equal(t, int64(200), in.r.Position())

	again := e.newRelay(t, e.db, oneBatchInFlight).start(t)
	e.requireStreamEqualsLog(t)
	require.NoError(t, again.stop())
}

// TestBatchServerRestartMidWay restarts nats-server between two messages
// of a batch, under the running relay: the restarted server has none of
// the batch, refuses the rest of it (incomplete batch) or leaves it
// unanswered, and the relay re-reads the stream and resumes.
func TestBatchServerRestartMidWay(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.batch = 50
	e.appendEvents(t, e.db, 1000, 100)
	in := e.newRelay(t, e.db, oneBatchInFlight)
	var once sync.Once
	restarted := make(chan uint64, 1)
	relay.SetHook(in.r, func(stage string, seq int64) {
		if stage == "published" && seq == 230 {
			once.Do(func() {
				e.ns.Restart()
				last := uint64(0)
				await(10*time.Second, func() bool {
					s, err := e.js.Stream(context.Background(), e.stream)
					if err == nil {
						last = s.CachedInfo().State.LastSeq
					}
					return err == nil
				})
				restarted <- last
			})
		}
	})
	in.start(t)
	require.Equal(t, uint64(200), <-restarted, "after the restart the stream holds nothing of the open batch")
	e.requireStreamEqualsLog(t)
	require.NoError(t, in.stop())
	require.GreaterOrEqual(t, relay.Errors(in.r, "nats")+relay.Errors(in.r, "timeout"), float64(1), "the broken batch ended a session")
}

// TestBatchStreamWithoutAtomicPublish runs a batching relay on a stream
// made without atomic publishing (by a relay of an older release, say): it
// publishes event by event, correctly, and warns once how to fix it.
func TestBatchStreamWithoutAtomicPublish(t *testing.T) {
	t.Parallel()
	e := setup(t)
	cfg := e.config(t)
	s, err := relay.EnsureStream(context.Background(), e.js, cfg) // PublishBatch 0
	require.NoError(t, err)
	require.False(t, s.CachedInfo().Config.AllowAtomicPublish)
	e.appendEvents(t, e.db, 300, 100)

	core, logs := observer.New(zap.WarnLevel)
	in := e.newRelay(t, e.db, func(c *relay.Config) { c.PublishBatch, c.Logger = testBatch, zap.New(core) }).start(t)
	e.requireStreamEqualsLog(t) // e.batch is 0: per-event headers, every message fenced
	require.NoError(t, in.stop())
	warnings := logs.FilterMessageSnippet("does not allow atomic publishing").All()
	require.Len(t, warnings, 1)
	require.Contains(t, warnings[0].Message, "allow_atomic: true")
	require.Equal(t, float64(300), relay.Published(in.r))
}

// TestBatchTooLarge runs a relay whose batches exceed the server's limit:
// retrying cannot help, Run says what to change.
func TestBatchTooLarge(t *testing.T) {
	t.Parallel()
	ns := testenv.NATSWith(t, func(o *server.Options) { o.JetStreamLimits.MaxBatchSize = 10 })
	e := &env{db: testenv.Postgres(t), ns: ns, js: ns.JetStream(t), stream: testenv.Name("EVENTS"), batch: testBatch}
	e.appendEvents(t, e.db, 100, 100)
	in := e.newRelay(t, e.db, nil).start(t)
	select {
	case <-in.done:
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
	}
	require.ErrorIs(t, in.err, relay.ErrBatchTooLarge)
	require.ErrorContains(t, in.err, "--publish-batch")
	require.Zero(t, e.streamInfo(t).State.Msgs)
}
