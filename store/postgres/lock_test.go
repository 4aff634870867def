package postgres_test

import (
	"context"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
)

// TestLockTakenOverAcrossSilentPartition cuts the lock holder off from
// PostgreSQL with a proxy that stops moving bytes but keeps its
// connections open, so that the server still sees a healthy session. The
// holder must learn that it lost the lock, and another process must take
// it within seconds, after the holder gave up. When the partition heals,
// the old holder's release must not free the new holder's lock.
func TestLockTakenOverAcrossSilentPartition(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	base, schema := testenv.Schema(t)
	direct := testenv.OpenPostgres(t, base, schema)
	u, err := url.Parse(base)
	require.NoError(t, err)
	proxy := testenv.NewProxy(t, u.Host)
	u.Host = proxy.Addr()
	cut := testenv.OpenPostgres(t, u.String(), schema)

	release, lost, err := cut.TryLock(ctx, "relay")
	require.NoError(t, err)
	_, _, err = direct.TryLock(ctx, "relay")
	require.ErrorIs(t, err, store.ErrLockHeld)

	proxy.Freeze()
	frozen := time.Now()
	var lostAfter time.Duration
	select {
	case <-lost:
		lostAfter = time.Since(frozen)
	case <-time.After(15 * time.Second):
		t.Fatal("the cut-off holder never learned that it lost the lock")
	}
	var took func()
	testenv.Eventually(t, 15*time.Second, func() bool {
		rel, _, err := direct.TryLock(ctx, "relay")
		if err != nil {
			require.ErrorIs(t, err, store.ErrLockHeld)
			return false
		}
		took = rel
		return true
	}, "another process to take the lock")
	takeover := time.Since(frozen)
	t.Logf("holder gave up %s after the partition; the other took over after %s", lostAfter, takeover)
	require.Less(t, lostAfter, takeover, "the holder gives up before anyone else can take the lock")
	require.Less(t, takeover, 6*time.Second)

	proxy.Resume()
	release() // the stale holder's release leaves the new holder's lock alone
	testenv.Eventually(t, 15*time.Second, func() bool {
		rel, _, err := cut.TryLock(ctx, "relay")
		if err == nil {
			rel()
			t.Fatal("the stale holder took the lock back while it is held")
		}
		return errors.Is(err, store.ErrLockHeld)
	}, "the healed holder to see the lock held")
	_, _, err = cut.TryLock(ctx, "relay")
	require.ErrorIs(t, err, store.ErrLockHeld)
	took()
	again, _, err := cut.TryLock(ctx, "relay")
	require.NoError(t, err, "released, the lock can be taken")
	again()
}
