package relay_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// benchEvent returns an event whose payload is exactly 300 bytes.
func benchEvent(b testing.TB, i int) store.Event {
	id := storetest.PackageID(i)
	head := fmt.Sprintf(`{"package_id":%q,"pad":"`, id)
	payload := head + strings.Repeat("x", 300-len(head)-2) + `"}`
	e, err := store.NewEvent(store.TypePackageCreated, store.SubjectKindPackage, id, "bench", []byte(payload))
	require.NoError(b, err)
	return e
}

// BenchmarkCatchUp relays a 100k-event backlog into a fresh stream and, in
// the same run, publishes the same messages with raw PublishAsync (same
// window, no log reads, no fencing) into a fresh stream: the baseline.
// Run it with -benchtime=5x: it reports the medians over the rounds.
func BenchmarkCatchUp(b *testing.B) {
	const n, window = 100_000, 512
	ctx := context.Background()
	db := testenv.Postgres(b)
	for i := 0; i < n; i += 1000 {
		evs := make([]store.Event, 1000)
		for j := range evs {
			evs[j] = benchEvent(b, i+j)
		}
		storetest.Append(b, db, evs...)
	}
	logID, err := db.LogID(ctx)
	require.NoError(b, err)
	var msgs []*nats.Msg
	for after := int64(0); ; {
		evs, err := db.Fetch(ctx, after, 5000)
		require.NoError(b, err)
		if len(evs) == 0 {
			break
		}
		for _, e := range evs {
			msgs = append(msgs, relay.Encode(logID, e, wire.DefaultPartitions, 0))
		}
		after = evs[len(evs)-1].Sequence
	}
	require.Len(b, msgs, n)
	ns := testenv.NATS(b)
	admin := ns.JetStream(b)
	cfg := relay.Config{MaxInFlight: window, BatchSize: 1000}

	var relayRates, rawRates, ratios []float64
	b.ReportAllocs()
	for b.Loop() {
		// The relay.
		cfg.Stream = testenv.Name("CATCHUP")
		js, err := jetstream.New(ns.Connect(b))
		require.NoError(b, err)
		r, err := relay.New(db, js, cfg)
		require.NoError(b, err)
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- r.Run(rctx) }()
		for r.Position() < n {
			time.Sleep(time.Millisecond)
		}
		relayRate := n / time.Since(start).Seconds()
		cancel()
		require.NoError(b, <-done)
		require.NoError(b, admin.DeleteStream(ctx, cfg.Stream))

		// Raw PublishAsync of the same messages.
		cfg.Stream = testenv.Name("RAW")
		_, err = relay.EnsureStream(ctx, admin, cfg)
		require.NoError(b, err)
		raw, err := jetstream.New(ns.Connect(b), jetstream.WithPublishAsyncMaxPending(window))
		require.NoError(b, err)
		start = time.Now()
		for _, m := range msgs {
			_, err := raw.PublishMsgAsync(&nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data})
			for errors.Is(err, jetstream.ErrTooManyStalledMsgs) { // the window stayed full for 200ms: wait on
				_, err = raw.PublishMsgAsync(&nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data})
			}
			require.NoError(b, err)
		}
		<-raw.PublishAsyncComplete()
		rawRate := n / time.Since(start).Seconds()
		relayRates, rawRates = append(relayRates, relayRate), append(rawRates, rawRate)
		ratios = append(ratios, relayRate/rawRate)
		s, err := admin.Stream(ctx, cfg.Stream)
		require.NoError(b, err)
		require.Equal(b, uint64(n), s.CachedInfo().State.Msgs)
		require.NoError(b, admin.DeleteStream(ctx, cfg.Stream))
	}
	// Medians: the machine is shared, and each round pairs a relay run
	// with a raw run made right after it.
	b.ReportMetric(median(relayRates), "relay_events/s")
	b.ReportMetric(median(rawRates), "raw_msgs/s")
	b.ReportMetric(median(ratios), "ratio")
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkCommitToVisible commits one event per millisecond through a
// second database handle (so the relay is woken by LISTEN/NOTIFY, as in a
// scaled deployment) and measures, per event, the time from the commit's
// return to its delivery to a consumer of the stream.
func BenchmarkCommitToVisible(b *testing.B) {
	const perRound = 3000
	ctx := context.Background()
	url, schema := testenv.Schema(b)
	db := testenv.OpenPostgres(b, url, schema)
	writer := testenv.OpenPostgres(b, url, schema)
	ns := testenv.NATS(b)
	js := ns.JetStream(b)
	cfg := relay.Config{Stream: testenv.Name("LATENCY")}
	r, err := relay.New(db, ns.JetStream(b), cfg)
	require.NoError(b, err)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	b.Cleanup(func() { cancel(); <-done })
	_, err = relay.EnsureStream(ctx, js, cfg)
	require.NoError(b, err)

	var mu sync.Mutex
	received := map[int64]time.Time{}
	s, err := js.Stream(ctx, cfg.Stream)
	require.NoError(b, err)
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	require.NoError(b, err)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		now := time.Now()
		seq, _ := strconv.ParseInt(m.Headers().Get(wire.HeaderSequence), 10, 64)
		mu.Lock()
		received[seq] = now
		mu.Unlock()
	})
	require.NoError(b, err)
	b.Cleanup(cc.Stop)

	var latencies []time.Duration
	var elapsed time.Duration
	next := 0
	for b.Loop() {
		committed := make(map[int64]time.Time, perRound)
		start := time.Now()
		for i := range perRound {
			time.Sleep(time.Until(start.Add(time.Duration(i) * time.Millisecond))) // pacing: one commit per ms
			var out []store.Event
			err := writer.InTx(ctx, func(tx store.Tx) error {
				var err error
				out, err = tx.Append(ctx, benchEvent(b, next))
				return err
			})
			require.NoError(b, err)
			committed[out[0].Sequence] = time.Now()
			next++
		}
		elapsed += time.Since(start)
		testenv.Eventually(b, 30*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(received) >= next
		}, "every event delivered")
		mu.Lock()
		for seq, at := range committed {
			latencies = append(latencies, max(0, received[seq].Sub(at)))
		}
		mu.Unlock()
	}
	slices.Sort(latencies)
	pct := func(p float64) float64 {
		return float64(latencies[int(p*float64(len(latencies)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(float64(len(latencies))/elapsed.Seconds(), "events/s")
	b.ReportMetric(pct(0.50), "p50_ms")
	b.ReportMetric(pct(0.99), "p99_ms")
	b.ReportMetric(pct(1), "max_ms")
}
