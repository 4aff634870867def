package relay_test

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/sourcegraph/conc"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/relay"
)

// TestStandbyTakesOverFromCutOffRelay cuts the active relay A off from
// PostgreSQL with a proxy that stops moving bytes but keeps every
// connection open (the server still sees A's sessions as healthy) while
// 1,500 events are committed. The standby B, connected directly, must
// become active within seconds and the stream must get every event,
// exactly once and in order. When the partition heals, A must stand by and
// publish nothing.
func TestStandbyTakesOverFromCutOffRelay(t *testing.T) {
	t.Parallel()
	base, schema := testenv.Schema(t)
	direct := testenv.OpenPostgres(t, base, schema)
	u, err := url.Parse(base)
	require.NoError(t, err)
	proxy := testenv.NewProxy(t, u.Host)
	u.Host = proxy.Addr()
	cut := testenv.OpenPostgres(t, u.String(), schema)
	e := setupDB(t, direct)

	a := e.newRelay(t, cut, nil).start(t)
	testenv.Eventually(t, 10*time.Second, a.r.Active, "relay A to become active")
	b := e.newRelay(t, direct, nil).start(t)

	ctx, stopWriter := context.WithCancel(context.Background())
	defer stopWriter()
	var wg conc.WaitGroup
	wg.Go(func() {
		for i := 0; i < 150 && ctx.Err() == nil; i++ {
			e.appendEvents(t, direct, 10, 10)
			time.Sleep(5 * time.Millisecond) // a steady trickle, ~1,500 events over a few seconds
		}
	})
	testenv.Eventually(t, 20*time.Second, func() bool { return a.r.Position() >= 300 }, "relay A to publish")
	require.False(t, b.r.Active(), "B stands by while A is active")

	proxy.Freeze()
	frozen := time.Now()
	testenv.Eventually(t, 15*time.Second, b.r.Active, "standby B to take over from the cut-off relay A")
	takeover := time.Since(frozen)
	require.False(t, a.r.Active(), "A gave up before B took over")
	wg.Wait()
	e.awaitCaughtUp(t, 30*time.Second)
	caughtUp := time.Since(frozen)
	e.requireStreamEqualsLog(t)
	head, err := direct.Head(context.Background())
	require.NoError(t, err)
	require.Equal(t, int64(1500), head)
	t.Logf("partition → B active: %s; → stream holds all %d events: %s (A had published %d)",
		takeover, head, caughtUp, a.r.Position())
	require.Less(t, takeover, 8*time.Second)

	proxy.Resume()
	publishedByA := relay.Published(a.r)
	e.appendEvents(t, direct, 100, 10)
	e.requireStreamEqualsLog(t)
	require.True(t, b.r.Active())
	require.False(t, a.r.Active(), "the healed relay stands by")
	require.Equal(t, publishedByA, relay.Published(a.r), "the healed relay published nothing")
	require.NoError(t, a.stop())
	require.NoError(t, b.stop())
}
