package projector

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
)

// TestNATSRestart: nats-server goes away and comes back (file storage
// keeps the stream); the workers keep their leases (they live in
// PostgreSQL), their ordered consumers are recreated, and the events
// committed meanwhile are applied.
func TestNATSRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t)
	ws := []*worker{e.start(t, fastConfig("w1")), e.start(t, fastConfig("w2"))}
	share := func() (int, int) { return len(owned(t, e.db, "w1")), len(owned(t, e.db, "w2")) }
	testenv.Eventually(t, 30*time.Second, func() bool { a, b := share(); return a == e.parts/2 && b == e.parts/2 }, "the workers share the partitions")
	appendPackages(t, e.db, 0, 100)
	e.relay(t)
	want := expected(t, e.db, e.parts)
	testenv.Eventually(t, 30*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "every partition reaches the log")

	e.srv.Shutdown()
	appendPackages(t, e.db, 100, 150) // committed while NATS is down
	e.srv.Start()
	testenv.Eventually(t, 30*time.Second, func() bool {
		_, err := e.js.Stream(ctx, DefaultStream)
		return err == nil
	}, "JetStream is back")
	e.relay(t)
	appendPackages(t, e.db, 150, 200)
	e.relay(t)
	want = expected(t, e.db, e.parts)
	testenv.Eventually(t, 60*time.Second, func() bool { return caughtUp(t, e.db, DefaultProjection, want) }, "events are applied after the restart")
	a, b := share()
	require.Equal(t, e.parts, a+b, "the partitions stay leased")
	for _, w := range ws {
		require.NoError(t, w.stop())
	}
	requireReplayEqual(t, e.db)
}
