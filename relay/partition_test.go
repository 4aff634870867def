package relay_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/store"
)

// TestPredecessorsAfterTrim: the stream keeps only its last 2 messages, so
// most partitions have no message in it; a relay started then takes each
// partition's previous event from the log, and every new message names its
// partition's previous event exactly.
func TestPredecessorsAfterTrim(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.allowDeletes = true // the test purges the stream
	ctx := context.Background()
	e.appendEvents(t, e.db, 60, 7)
	in := e.newRelay(t, e.db, nil).start(t)
	e.awaitCaughtUp(t, 10*time.Second)
	require.NoError(t, in.stop())
	s, err := e.js.Stream(ctx, e.stream)
	require.NoError(t, err)
	require.NoError(t, s.Purge(ctx, jetstream.WithPurgeKeep(2)))

	e.appendEvents(t, e.db, 60, 7)
	again := e.newRelay(t, e.db, nil).start(t)
	e.awaitCaughtUp(t, 10*time.Second)
	require.NoError(t, again.stop())

	parts, err := e.db.Partitions(ctx)
	require.NoError(t, err)
	prev := map[int]int64{}
	want := map[int64]int64{} // sequence → its partition's previous event
	for ev, err := range store.All(ctx, e.db, 0, 0) {
		require.NoError(t, err)
		p := wire.Partition(ev.SubjectID, parts)
		want[ev.Sequence] = prev[p]
		prev[p] = ev.Sequence
	}
	s, err = e.js.Stream(ctx, e.stream)
	require.NoError(t, err)
	checked := 0
	for seq := s.CachedInfo().State.FirstSeq; seq <= s.CachedInfo().State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		require.NoError(t, err)
		wm, err := wire.Decode(m.Subject, m.Header, m.Data)
		require.NoError(t, err)
		require.Equal(t, want[wm.Event.Sequence], wm.Previous, "event %d's predecessor", wm.Event.Sequence)
		checked++
	}
	require.Equal(t, 62, checked)
}

// TestUnpartitionedStreamRefused: a stream written before subjects had a
// partition token is refused, with an error that names the fix.
func TestUnpartitionedStreamRefused(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	e.appendEvents(t, e.db, 3, 3)
	_, err := relay.EnsureStream(ctx, e.js, e.config(t))
	require.NoError(t, err)
	logID, err := e.db.LogID(ctx)
	require.NoError(t, err)
	evs, err := e.db.Fetch(ctx, 0, 1)
	require.NoError(t, err)
	old := relay.Encode(logID, evs[0], 16, 0)
	old.Subject = wire.SubjectPrefix + evs[0].Type + "." + evs[0].SubjectID // the format before partitions
	_, err = e.js.PublishMsg(ctx, old)
	require.NoError(t, err)

	in := e.newRelay(t, e.db, nil).start(t)
	select {
	case <-in.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the relay did not refuse the stream")
	}
	require.ErrorIs(t, in.err, relay.ErrStreamUnpartitioned)
	require.ErrorContains(t, in.err, "nats stream rm "+e.stream)
	require.Equal(t, uint64(1), e.streamInfo(t).State.Msgs, "nothing published after the old message")
}
