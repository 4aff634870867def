package relay_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/store"
)

// relayed is a log of n events, all in the stream; the relay is stopped.
func relayed(t *testing.T, n int, allowDeletes bool) *env {
	e := setup(t)
	e.allowDeletes = allowDeletes
	e.appendEvents(t, e.db, n, 7)
	in := e.newRelay(t, e.db, nil).start(t)
	e.awaitCaughtUp(t, 20*time.Second)
	require.NoError(t, in.stop())
	return e
}

// checkStream runs a StreamCheck from from over events (the log's, in
// order) and finishes it at the last of them.
func (e *env) checkStream(t *testing.T, from int64, events []store.Event) (relay.StreamResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	logID, err := e.db.LogID(ctx)
	require.NoError(t, err)
	sc, err := relay.NewStreamCheck(ctx, e.js, e.stream, logID, wire.DefaultPartitions, from)
	require.NoError(t, err)
	defer sc.Close()
	for _, ev := range events {
		if ev.Sequence < from {
			continue
		}
		if err := sc.Check(ev); err != nil {
			return sc.Result(), err
		}
	}
	return sc.Result(), sc.Finish(events[len(events)-1].Sequence)
}

func (e *env) logEvents(t *testing.T) []store.Event {
	evs, err := e.db.Fetch(context.Background(), 0, 10_000)
	require.NoError(t, err)
	return evs
}

func requireStreamBreak(t *testing.T, err error, seq int64, reason string) {
	t.Helper()
	var be *store.BreakError
	require.ErrorAs(t, err, &be)
	require.Equal(t, seq, be.Sequence, "%v", err)
	require.Contains(t, be.Reason, reason)
}

func TestStreamCheck(t *testing.T) {
	t.Parallel()
	e := relayed(t, 20, true)
	log := e.logEvents(t)
	res, err := e.checkStream(t, 1, log)
	require.NoError(t, err)
	require.Equal(t, relay.StreamResult{Stream: e.stream, First: 1, Last: 20, Messages: 20}, res)
	res, err = e.checkStream(t, 12, log)
	require.NoError(t, err, "from the middle")
	require.Equal(t, int64(12), res.First)

	// The log as a rewrite left it: event 7's payload and digest changed.
	forged := append([]store.Event(nil), log...)
	forged[6].Payload = []byte(`{"forged":true}`)
	forged[6].PayloadDigest = store.DigestOf(forged[6].Payload)
	_, err = e.checkStream(t, 1, forged)
	requireStreamBreak(t, err, 7, "payload_digest differs")

	// Its chain digest only.
	forged = append([]store.Event(nil), log...)
	forged[8].ChainDigest = store.DigestOf([]byte("other"))
	_, err = e.checkStream(t, 1, forged)
	requireStreamBreak(t, err, 9, "chain_digest differs")

	// The log lost its last three events; the stream still has them.
	_, err = e.checkStream(t, 1, log[:17])
	requireStreamBreak(t, err, 18, "the log lost events the stream has")

	// A message deleted from the stream.
	s, err := e.js.Stream(context.Background(), e.stream)
	require.NoError(t, err)
	require.NoError(t, s.DeleteMsg(context.Background(), 5))
	_, err = e.checkStream(t, 1, log)
	requireStreamBreak(t, err, 5, "missing from the stream")

	// The stream's first messages removed (as its limits would): what it
	// holds still matches.
	require.NoError(t, s.Purge(context.Background(), jetstream.WithPurgeKeep(8)))
	res, err = e.checkStream(t, 1, log)
	require.NoError(t, err)
	require.Equal(t, int64(13), res.First)
	require.Equal(t, int64(8), res.Messages)

	// Events the relay has not published yet are its lag, not a break.
	e.appendEvents(t, e.db, 3, 3)
	res, err = e.checkStream(t, 1, e.logEvents(t))
	require.NoError(t, err)
	require.Equal(t, int64(20), res.Last)
}

// TestCheckpoints: with a key, the active relay signs its position and
// puts it in the checkpoint bucket under the log id, again when it moves.
func TestCheckpoints(t *testing.T) {
	t.Parallel()
	e := setup(t)
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	e.appendEvents(t, e.db, 10, 4)
	in := e.newRelay(t, e.db, func(c *relay.Config) {
		c.CheckpointKey, c.CheckpointInterval = key, 20*time.Millisecond
	}).start(t)
	ctx := context.Background()
	logID, err := e.db.LogID(ctx)
	require.NoError(t, err)
	await := func(seq int64) wire.Checkpoint {
		var cp wire.Checkpoint
		testenv.Eventually(t, 20*time.Second, func() bool {
			cp, err = relay.ReadCheckpoint(ctx, e.js, logID)
			return err == nil && cp.Sequence == seq
		}, "a checkpoint of event %d", seq)
		return cp
	}
	cp := await(10)
	require.NoError(t, cp.Verify(pub))
	log := e.logEvents(t)
	require.Equal(t, logID, cp.LogID)
	require.Equal(t, log[9].ChainDigest, cp.ChainDigest)

	e.appendEvents(t, e.db, 5, 5)
	cp = await(15)
	require.NoError(t, cp.Verify(pub))
	require.NoError(t, in.stop())

	kv, err := e.js.KeyValue(ctx, wire.CheckpointBucket)
	require.NoError(t, err)
	hist, err := kv.History(ctx, logID)
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(hist), 2, "earlier checkpoints are kept")

	_, err = relay.New(e.db, e.js, relay.Config{Stream: e.stream, CheckpointKey: key[:10]})
	require.ErrorContains(t, err, "CheckpointKey")
}
