package projection_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/projection"
	"github.com/artifactstore/artifactstore/relay"
)

// TestGapInATrimmedStream: the stream's limits (MaxMsgs 60) removed most
// of the log's events before the runner first started. Every partition's
// first message names a predecessor the runner never applied, and without
// access to the log it cannot have it: each partition parks with reason
// gap and its checkpoint stays at 0 however often it retries. Restarted
// with the log as its source (the projection's database is the log's),
// it applies the missing events from the log and ends equal to a replay
// of the log.
func TestGapInATrimmedStream(t *testing.T) {
	t.Parallel()
	e := setup(t)
	cfg := relay.StreamConfig(relay.Config{})
	cfg.MaxMsgs = 60
	_, err := e.js.CreateStream(context.Background(), cfg)
	require.NoError(t, err)
	e.startRelay(t, nil)
	e.appendPackages(t, 300)
	e.awaitPublished(t)

	p := counting("counting", nil)
	in := e.start(t, p, fastConfig(t, "w1"))
	testenv.Eventually(t, 30*time.Second, func() bool {
		st, err := projection.Inspect(context.Background(), e.pool, nil, "", p.Name)
		require.NoError(t, err)
		return st.Parked == e.parts
	}, "every partition parks")
	// Sample the checkpoints while the parked partitions retry (ParkRetry
	// 300 ms): none ever moves.
	for range 10 {
		for part, cp := range checkpoints(t, e.pool, p.Name) {
			require.Zero(t, cp, "partition %d's checkpoint passed events it never applied", part)
		}
		time.Sleep(100 * time.Millisecond) // sampling over several retries
	}
	st, err := projection.Inspect(context.Background(), e.pool, e.js, "", p.Name)
	require.NoError(t, err)
	for _, ps := range st.Partitions {
		require.NotNil(t, ps.Parked, "partition %d", ps.Partition)
		require.Equal(t, projection.ReasonGap, ps.Parked.Reason)
		require.Contains(t, ps.Parked.Error, "the stream lacks events of partition")
		require.Contains(t, ps.Parked.Error, "there is no log source")
		require.GreaterOrEqual(t, ps.Parked.Attempts, 1)
		require.Positive(t, ps.Pending, "its messages are still pending")
	}
	require.Equal(t, float64(e.parts), in.metric(t, "artifactstore_projection_parked", nil))
	require.Positive(t, in.metric(t, "artifactstore_projection_errors_total", map[string]string{"kind": "gap"}))
	require.Zero(t, in.metric(t, "artifactstore_projection_events_applied_total", nil), "nothing applied")
	var rows int
	require.NoError(t, e.pool.QueryRow(context.Background(), "SELECT count(*) FROM subjects").Scan(&rows))
	require.Zero(t, rows)
	require.NoError(t, in.stop())

	cfgLog := fastConfig(t, "w2")
	cfgLog.Log = e.log
	withLog := e.start(t, p, cfgLog)
	e.awaitCaughtUp(t, p.Name, 30*time.Second)
	require.Positive(t, withLog.metric(t, "artifactstore_projection_catchup_events_total", nil))
	require.NoError(t, withLog.stop())
	e.requireEqualTo(t, p, projection.LogEvents(context.Background(), e.log, 0))
}

// TestGapMidStream: one message in the middle of a partition is missing
// from the stream (deleted). The partition applies up to the event before
// it and parks on the next one with reason gap; its checkpoint never moves
// past the missing event, while the other partitions go on. With the log
// as its source the runner fills the gap.
func TestGapMidStream(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startRelay(t, nil)
	p := counting("counting", nil)
	e.appendPackages(t, 100)
	in := e.start(t, p, fastConfig(t, "w1"))
	e.awaitPublished(t)
	e.awaitCaughtUp(t, p.Name, 30*time.Second)
	require.NoError(t, in.stop())
	before := checkpoints(t, e.pool, p.Name)

	second := e.appendPackages(t, 100)
	e.awaitPublished(t)
	missing := second[0]
	part := wire.Partition(missing.SubjectID, e.parts)
	s, err := e.js.Stream(context.Background(), wire.StreamName)
	require.NoError(t, err)
	deleteEvent(t, s, part, missing.Sequence)

	in = e.start(t, p, fastConfig(t, "w2"))
	last := e.lastPerPartition(t)
	testenv.Eventually(t, 30*time.Second, func() bool {
		cps := checkpoints(t, e.pool, p.Name)
		for q, seq := range last {
			if q != part && cps[q] < seq {
				return false
			}
		}
		st, err := projection.Inspect(context.Background(), e.pool, nil, "", p.Name)
		require.NoError(t, err)
		return st.Parked == 1 && st.Partitions[part].Parked != nil
	}, "the other partitions catch up, partition %d parks", part)
	for range 10 {
		require.Equal(t, before[part], checkpoints(t, e.pool, p.Name)[part], "the checkpoint stays below the missing event %d", missing.Sequence)
		time.Sleep(100 * time.Millisecond) // sampling over several retries
	}
	st, err := projection.Inspect(context.Background(), e.pool, nil, "", p.Name)
	require.NoError(t, err)
	parked := st.Partitions[part].Parked
	require.Equal(t, projection.ReasonGap, parked.Reason)
	require.Greater(t, parked.Sequence, missing.Sequence, "parked on the event after the missing one")
	require.NoError(t, in.stop())

	cfgLog := fastConfig(t, "w3")
	cfgLog.Log = e.log
	withLog := e.start(t, p, cfgLog)
	e.awaitCaughtUp(t, p.Name, 30*time.Second)
	require.Equal(t, 1.0, withLog.metric(t, "artifactstore_projection_catchup_events_total", nil), "the one missing event came from the log")
	require.NoError(t, withLog.stop())
	e.requireEqualTo(t, p, projection.LogEvents(context.Background(), e.log, 0))
}

// deleteEvent deletes the message of log event seq (in partition part)
// from the stream.
func deleteEvent(t testing.TB, s jetstream.Stream, part int, seq int64) {
	t.Helper()
	ctx := context.Background()
	st := s.CachedInfo().State
	for at := st.FirstSeq; at <= st.LastSeq; at++ {
		m, err := s.GetMsg(ctx, at, jetstream.WithGetMsgSubject(wire.PartitionFilter(part)))
		require.NoError(t, err)
		if m.Header.Get(wire.HeaderSequence) == itoa(seq) {
			require.NoError(t, s.DeleteMsg(ctx, m.Sequence))
			return
		}
		at = m.Sequence
	}
	t.Fatalf("event %d is not in the stream", seq)
}
