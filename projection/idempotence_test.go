package projection_test

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/projection"
	"github.com/artifactstore/artifactstore/relay"
)

// TestCheckpointFencesTwins: two instances with the same worker id both
// hold every lease, so both apply every partition. One is held inside its
// first batch transaction (checkpoint compare-and-set done, rows written,
// not committed) until the other is waiting on the same rows; then it
// commits. The other's compare-and-set finds the checkpoint moved, it
// re-reads it and applies nothing twice: every count is exact.
func TestCheckpointFencesTwins(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startRelay(t, nil)
	// Rows of one subject only: the twins meet on the checkpoint row alone.
	p := perSubject("subjects")
	e.appendPackages(t, 400)
	e.awaitPublished(t)

	release := make(chan struct{})
	held := make(chan int, 1)
	cfgA := fastConfig(t, "twin")
	var first atomic.Bool
	projection.SetBeforeCommit(&cfgA, func(part int) error {
		if first.CompareAndSwap(false, true) {
			held <- part
			<-release
		}
		return nil
	})
	a := e.start(t, p, cfgA)
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) }) // a failing test must not leave a blocked
	part := <-held
	b := e.start(t, p, fastConfig(t, "twin"))
	testenv.Eventually(t, 30*time.Second, func() bool {
		var waiting int
		require.NoError(t, e.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'UPDATE projection_checkpoints%'`).Scan(&waiting))
		return waiting > 0
	}, "the twin waits on partition %d's checkpoint row", part)
	once.Do(func() { close(release) })
	e.awaitCaughtUp(t, p.Name, 30*time.Second)
	require.Positive(t, b.metric(t, "artifactstore_projection_errors_total", map[string]string{"kind": "checkpoint_moved"}),
		"the twin's compare-and-set failed")
	require.NoError(t, a.stop())
	require.NoError(t, b.stop())
	e.requireReplayEqual(t, p)
}

// TestRedeliveryAndRestartApplyNothing: a message delivered again (the
// stream holds an old event twice, published again after the
// de-duplication window) and a restart from the checkpoints apply nothing:
// the redelivered event is skipped, the restarted instance commits no
// batch, every count stays exact.
func TestRedeliveryAndRestartApplyNothing(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startRelay(t, func(c *relay.Config) { c.DuplicateWindow = 100 * time.Millisecond })
	p := counting("counting", nil)
	evs := e.appendPackages(t, 200)
	in := e.start(t, p, fastConfig(t, "w1"))
	e.awaitPublished(t)
	e.awaitCaughtUp(t, p.Name, 30*time.Second)
	before, err := projection.Dump(context.Background(), e.pool, "", p)
	require.NoError(t, err)

	// Publish the first event again, past the de-duplication window.
	old := evs[0]
	part := wire.Partition(old.SubjectID, e.parts)
	time.Sleep(150 * time.Millisecond) // wait out the stream's 100 ms duplicate window: a fault's timing, not a synchronisation
	_, err = e.js.PublishMsg(context.Background(), wire.Encode(wire.Message{Event: old, LogID: e.logID, Partition: part}, 0))
	require.NoError(t, err)
	skipped := map[string]string{"partition": strconv.Itoa(part)}
	testenv.Eventually(t, 10*time.Second, func() bool {
		return in.metric(t, "artifactstore_projection_events_skipped_total", skipped) == 1
	}, "the redelivered event is skipped")
	require.NoError(t, in.stop())

	again := e.start(t, p, fastConfig(t, "w2"))
	testenv.Eventually(t, 10*time.Second, func() bool {
		return again.metric(t, "artifactstore_projection_owned_partitions", nil) == float64(e.parts)
	}, "the restarted instance holds every partition")
	// Several idle periods pass (IdleWait 50 ms); nothing is re-applied.
	time.Sleep(500 * time.Millisecond) // an absence is awaited for a while; nothing signals it
	require.Zero(t, again.metric(t, "artifactstore_projection_batches_total", nil), "a restart re-applies nothing")
	require.NoError(t, again.stop())
	after, err := projection.Dump(context.Background(), e.pool, "", p)
	require.NoError(t, err)
	require.Equal(t, before, after)
	// The stream now holds its first event twice; the log is the reference.
	e.requireEqualTo(t, p, projection.LogEvents(context.Background(), e.log, 0))
}
