package relay_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/store"
)

// TestStreamDeniesDeletes: the relay creates the stream with deleting and
// purging messages denied, refuses an existing stream that allows either
// (naming both ways out), and accepts it when told to.
func TestStreamDeniesDeletes(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	e.appendEvents(t, e.db, 3, 3)
	in := e.newRelay(t, e.db, nil).start(t)
	e.awaitCaughtUp(t, 10*time.Second)
	require.NoError(t, in.stop())
	got := e.streamInfo(t).Config
	require.True(t, got.DenyDelete)
	require.True(t, got.DenyPurge)
	s, err := e.js.Stream(ctx, e.stream)
	require.NoError(t, err)
	require.Error(t, s.DeleteMsg(ctx, 2), "the server refuses to delete an event")
	require.Error(t, s.Purge(ctx), "the server refuses to purge the stream")
	require.Equal(t, uint64(3), e.streamInfo(t).State.Msgs)

	// A stream created by someone else, allowing both (on a server of its
	// own: the subjects are the events stream's).
	js := testenv.NATS(t).JetStream(t)
	open := relay.StreamConfig(relay.Config{Stream: testenv.Name("OPEN"), AllowStreamDeletes: true})
	_, err = js.CreateStream(ctx, open)
	require.NoError(t, err)
	cfg := relay.Config{Stream: open.Name}
	_, err = relay.EnsureStream(ctx, js, cfg)
	var conflict *relay.ConflictError
	require.ErrorAs(t, err, &conflict)
	require.Equal(t, "deny_delete", conflict.Field)
	require.Contains(t, err.Error(), "--allow-stream-deletes")
	require.Contains(t, err.Error(), "nats stream edit "+open.Name+" --deny-delete --deny-purge")
	r, err := relay.New(e.db, js, cfg)
	require.NoError(t, err)
	require.ErrorIs(t, r.Run(ctx), relay.ErrStreamConflict, "Run refuses it too")
	_, err = relay.EnsureStream(ctx, js, relay.Config{Stream: open.Name, AllowStreamDeletes: true})
	require.NoError(t, err, "accepted when told to")

	// Denying one of the two is not enough; denying both is.
	open.DenyDelete = true
	_, err = js.UpdateStream(ctx, open)
	require.NoError(t, err)
	_, err = relay.EnsureStream(ctx, js, cfg)
	require.ErrorAs(t, err, &conflict)
	require.Equal(t, "deny_purge", conflict.Field)
	open.DenyPurge = true
	_, err = js.UpdateStream(ctx, open)
	require.NoError(t, err)
	_, err = relay.EnsureStream(ctx, js, cfg)
	require.NoError(t, err)
}

// TestHistoryCheckComparesChain: the log's event at the stream's last
// sequence has the same fields and payload but another chain digest (the
// chain was rewritten under it): the relay stops instead of relaying on.
func TestHistoryCheckComparesChain(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.appendEvents(t, e.db, 5, 5)
	in := e.newRelay(t, e.db, nil).start(t)
	e.awaitCaughtUp(t, 10*time.Second)
	require.NoError(t, in.stop())

	other := store.DigestOf([]byte("another history"))
	testenv.Privileged(t, e.db, fmt.Sprintf("UPDATE events SET chain_digest = %s WHERE sequence = 5", testenv.Blob(e.db, other[:])))
	e.appendEvents(t, e.db, 2, 2)
	again := e.newRelay(t, e.db, nil).start(t)
	select {
	case <-again.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the relay did not stop")
	}
	var de *relay.DivergedError
	require.ErrorAs(t, again.err, &de)
	require.Equal(t, int64(5), de.Sequence)
	require.Equal(t, "chain_digest", de.Field)
	require.Equal(t, uint64(5), e.streamInfo(t).State.Msgs, "nothing was relayed after it")
}
