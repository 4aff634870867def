package relay_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// TestForeignMessageInTheStream: a message published into the stream by
// anyone but the relay (NATS permissions that let it happen) while the
// relay runs, claiming to be an event of this log. The relay must never
// skip an event because of it: it stops and names the message.
func TestForeignMessageInTheStream(t *testing.T) {
	for _, tc := range []struct {
		name         string
		seq          func(head int64) int64
		deduplicated bool
	}{
		{"published sequence", func(head int64) int64 { return head / 2 }, true},
		{"next sequence", func(head int64) int64 { return head + 1 }, false},
		{"beyond the head", func(head int64) int64 { return head + 50 }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			e.appendEvents(t, e.db, 100, 10)
			in := e.newRelay(t, e.db, nil).start(t)
			e.awaitCaughtUp(t, 10*time.Second)
			ctx := context.Background()
			logID, err := e.db.LogID(ctx)
			require.NoError(t, err)
			parts, err := e.db.Partitions(ctx)
			require.NoError(t, err)
			ev := storetest.Created(t, "evil", "evil", "6.6.6", "mallory")
			ev.Sequence, ev.CreatedAt = tc.seq(100), time.Now().UTC()
			m := wire.Encode(wire.Message{Event: ev, LogID: logID, Partition: wire.Partition("evil", parts)}, 0)
			m.Subject = wire.Subject(ev, wire.Partition("evil", parts))
			_, err = e.js.PublishMsg(ctx, m)
			require.NoError(t, err)
			e.appendEvents(t, e.db, 50, 10)
			if tc.deduplicated {
				// JetStream dropped it as a duplicate of the event's own
				// message id: the stream must be the log, exactly.
				e.awaitCaughtUp(t, 10*time.Second)
				e.requireStreamEqualsLog(t)
				return
			}
			require.True(t, await(20*time.Second, func() bool {
				select {
				case <-in.done:
					return true
				default:
					return false
				}
			}), "the relay went on past a foreign message")
			t.Logf("relay stopped: %v", in.err)
			var fe *relay.ForeignMessageError
			require.ErrorAs(t, in.err, &fe)
			require.ErrorIs(t, in.err, relay.ErrForeignMessage)
			require.Equal(t, uint64(101), fe.StreamSequence, "the foreign message is the one after the 100 relayed events")
			require.Contains(t, in.err.Error(), "sequence 101")
			require.Contains(t, in.err.Error(), "only the relay may publish")
		})
	}
}
