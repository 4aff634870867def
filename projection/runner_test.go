package projection_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/projection"
)

// TestFollowsTheStream: one runner, fed by the real relay, builds the
// tables a replay of the stream builds, skips event types it does not
// handle (their checkpoints advance), and reports its position in Inspect
// and its metrics.
func TestFollowsTheStream(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startRelay(t, nil)
	p := counting("counting", nil)
	e.appendPackages(t, 300)
	in := e.start(t, p, fastConfig(t, "w1"))
	e.appendPackages(t, 300)
	head := e.awaitPublished(t)
	e.awaitCaughtUp(t, p.Name, 30*time.Second)

	st, err := projection.Inspect(context.Background(), e.pool, e.js, "", p.Name)
	require.NoError(t, err)
	require.Equal(t, e.logID, st.LogID)
	require.Equal(t, e.parts, st.LogPartitions)
	require.Equal(t, head, st.StreamLast)
	require.Equal(t, head, st.Applied)
	require.Zero(t, st.Lag, "nothing pending in the stream")
	require.Zero(t, st.Parked)
	require.Len(t, st.Partitions, e.parts)
	for _, ps := range st.Partitions {
		require.Equal(t, "w1", ps.Worker, "w1 holds every lease")
		require.Zero(t, ps.Pending)
	}

	// The last event of the log is a retagged one (appendPackages ends with
	// them): its partition's checkpoint passed it although nobody handles it.
	last := e.lastPerPartition(t)
	cps := checkpoints(t, e.pool, p.Name)
	for part, seq := range last {
		require.Equal(t, seq, cps[part], "partition %d", part)
	}
	require.Positive(t, in.metric(t, "artifactstore_projection_events_applied_total", nil))
	require.Positive(t, in.metric(t, "artifactstore_projection_batches_total", nil))
	require.Equal(t, float64(e.parts), in.metric(t, "artifactstore_projection_owned_partitions", nil))
	require.Zero(t, in.metric(t, "artifactstore_projection_parked", nil))
	require.True(t, in.r.Healthy())
	require.NoError(t, in.stop())
	e.requireReplayEqual(t, p)

	// A stopped instance gave its leases back.
	st, err = projection.Inspect(context.Background(), e.pool, nil, "", p.Name)
	require.NoError(t, err)
	for _, ps := range st.Partitions {
		require.Empty(t, ps.Worker)
		require.Equal(t, int64(-1), ps.Pending, "without a stream nothing is counted")
	}
	require.Equal(t, int64(-1), st.Lag)
}

// TestInstancesKilledMidBatch: three instances share the partitions while
// events keep coming; one at a time dies inside a batch transaction (before
// COMMIT: nothing of the batch is written, its leases are left to expire)
// or right after a commit, and a new instance replaces it. The tables end
// equal to a replay of the stream, every event counted once.
func TestInstancesKilledMidBatch(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startRelay(t, nil)
	p := counting("counting", nil)
	var live []*killable
	for i := range 3 {
		live = append(live, e.startKillable(t, p, fmt.Sprintf("w%d", i)))
	}
	for round := range 6 {
		e.appendPackages(t, 150)
		victim := live[round%3]
		if round%2 == 0 {
			victim.beforeCommit.Store(true)
		} else {
			victim.afterCommit.Store(true)
		}
		require.ErrorIs(t, victim.in.wait(t, 30*time.Second), projection.ErrCrashed, "round %d: the hook kills %s", round, victim.id)
		live[round%3] = e.startKillable(t, p, fmt.Sprintf("w%d", 3+round))
	}
	e.appendPackages(t, 150)
	e.awaitPublished(t)
	e.awaitCaughtUp(t, p.Name, 60*time.Second)
	for _, k := range live {
		require.NoError(t, k.in.stop())
	}
	e.requireReplayEqual(t, p)
}

// killable is an instance that dies at its next commit once armed.
type killable struct {
	id                        string
	in                        *instance
	beforeCommit, afterCommit atomic.Bool
}

func (e *env) startKillable(t testing.TB, p projection.Projection, id string) *killable {
	k := &killable{id: id}
	cfg := fastConfig(t, id)
	projection.SetBeforeCommit(&cfg, func(int) error {
		if k.beforeCommit.Load() {
			return errors.New("killed inside the transaction")
		}
		return nil
	})
	projection.SetAfterCommit(&cfg, func(int, int64) error {
		if k.afterCommit.Load() {
			return errors.New("killed after a commit")
		}
		return nil
	})
	k.in = e.start(t, p, cfg)
	return k
}

// TestFailover: an instance dies inside a batch, its leases left to
// expire; the survivor holds every partition within LeaseTTL (600 ms)
// plus a renewal, and the dead one's partitions are applied to the end.
func TestFailover(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startRelay(t, nil)
	p := perSubject("subjects")
	e.appendPackages(t, 100) // the first start learns the log from the stream's events
	survivor := e.start(t, p, fastConfig(t, "w1"))
	victim := e.startKillable(t, p, "w2")
	testenv.Eventually(t, 10*time.Second, func() bool {
		return survivor.metric(t, "artifactstore_projection_owned_partitions", nil) == float64(e.parts/2) &&
			victim.in.metric(t, "artifactstore_projection_owned_partitions", nil) == float64(e.parts/2)
	}, "the two instances share the partitions")
	victim.beforeCommit.Store(true)
	e.appendPackages(t, 100)
	require.ErrorIs(t, victim.in.wait(t, 30*time.Second), projection.ErrCrashed)
	died := time.Now()
	testenv.Eventually(t, 10*time.Second, func() bool {
		return survivor.metric(t, "artifactstore_projection_owned_partitions", nil) == float64(e.parts)
	}, "the survivor takes every partition")
	took := time.Since(died)
	t.Logf("failover: the survivor holds every partition %s after the death (LeaseTTL 600ms)", took)
	require.Less(t, took, 2*time.Second, "within LeaseTTL plus a renewal, with room for a loaded machine")
	e.awaitPublished(t)
	e.awaitCaughtUp(t, p.Name, 30*time.Second)
	require.NoError(t, survivor.stop())
	e.requireReplayEqual(t, p)
}
