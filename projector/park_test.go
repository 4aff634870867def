package projector

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// countingJS is a real JetStream context that counts the ordered
// consumers created per filter subject.
type countingJS struct {
	jetstream.JetStream
	filter  string
	creates atomic.Int64
}

func (c *countingJS) OrderedConsumer(ctx context.Context, stream string, cfg jetstream.OrderedConsumerConfig) (jetstream.Consumer, error) {
	for _, f := range cfg.FilterSubjects {
		if f == c.filter {
			c.creates.Add(1)
		}
	}
	return c.JetStream.OrderedConsumer(ctx, stream, cfg)
}

// TestParkedMessageRetriesAtItsPace: a partition parked on a message that
// does not decode tries it again every ParkRetry, parking again each time,
// instead of re-subscribing in a loop.
func TestParkedMessageRetriesAtItsPace(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	appendPackages(t, e.db, 0, 20)
	e.relay(t)
	id := storetest.PackageID(3)
	p := Partition(id, e.parts)
	ev := storetest.Created(t, id, "n", "9", "ci")
	_, err := e.js.PublishMsg(ctx, &nats.Msg{Subject: wire.Subject(ev, p), Data: []byte("not an event"), Header: nats.Header{}})
	require.NoError(t, err)

	js := &countingJS{JetStream: e.js, filter: wire.PartitionFilter(p)}
	cfg := fastConfig("w")
	cfg.ParkRetry = 300 * time.Millisecond
	cfg.Logger = testenv.Logger(t)
	w, err := New(e.db, js, cfg)
	require.NoError(t, err)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	defer func() { cancel(); require.NoError(t, <-done) }()

	parked := func() store.Parked {
		recs, err := e.db.Parked(ctx)
		require.NoError(t, err)
		for _, rec := range recs {
			if rec.Partition == p {
				require.Equal(t, store.ParkedPoison, rec.Reason)
				return rec
			}
		}
		return store.Parked{}
	}
	testenv.Eventually(t, 30*time.Second, func() bool { return parked().Attempts >= 1 }, "the partition to park")
	first, before := time.Now(), js.creates.Load()
	testenv.Eventually(t, 10*time.Second, func() bool { return parked().Attempts >= 4 }, "three retries, each parking again")
	retries := js.creates.Load() - before
	t.Logf("%d subscriptions of partition %d in %s with ParkRetry %s", retries, p, time.Since(first).Round(time.Millisecond), cfg.ParkRetry)
	require.LessOrEqual(t, retries, int64(time.Since(first)/cfg.ParkRetry)+2, "subscribed more often than ParkRetry allows")
}
