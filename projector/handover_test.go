package projector

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
)

// TestHandOverWithoutAckWait: partitions that move while events flow — to
// a worker that joins, then away from a worker that stops — carry on at
// once. The releasing worker finishes the fetch in flight, applying and
// acking everything delivered to it, before it unpins; had it dropped
// those messages they would come back only after AckWait, set here far
// beyond the time the test allows for catching up.
func TestHandOverWithoutAckWait(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const n = 4
	cfg := func(id string) Config {
		c := fastConfig(id, n)
		c.AckWait = 2 * time.Minute
		c.FetchWait = time.Second // long fetches: a hand-over always has one in flight
		c.PinnedTTL = 2 * time.Second
		return c
	}
	a := e.start(t, cfg("a"))
	owned := func(r *running) float64 { return r.metric(t, "artifactstore_projector_owned_partitions", nil) }
	testenv.Eventually(t, 30*time.Second, func() bool { return owned(a) == n }, "a owns every partition")

	var b *running
	stopped := make(chan error, 1)
	for i := range 120 {
		appendPackages(t, e.db, i*10, i*10+10)
		e.relay(t)
		switch {
		case i == 20:
			b = e.start(t, cfg("b"))
		case i == 70:
			go func() { stopped <- a.stop() }()
		}
		time.Sleep(5 * time.Millisecond) // pacing the flow of events, not synchronisation
	}
	require.NoError(t, <-stopped, "a stops cleanly")
	testenv.Eventually(t, 10*time.Second, func() bool { return owned(b) == n }, "b takes every partition")
	want := expected(t, e.db, n)
	testenv.Eventually(t, 20*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) },
		"every partition reaches the log well within AckWait")
	require.Positive(t, a.metric(t, "artifactstore_projector_events_applied_total", nil))
	require.Positive(t, b.metric(t, "artifactstore_projector_events_applied_total", nil))
	requireReplayEqual(t, e.db, n)
}
