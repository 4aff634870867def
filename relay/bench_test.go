package relay_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
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
	db, msgs := benchLog(b, n)
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

// BenchmarkPublishModes measures, on a nats-server with sync_interval:
// always (SyncAlways, the shipped configuration) and on one without, in
// the same run and interleaved: raw PublishAsync (window 1024, msg ids),
// raw atomic batches (1000 messages, up to 4 in flight), and the relay
// catching up a backlog with PublishBatch 0 (MaxInFlight 1024) and 1000
// (default MaxInFlight: 4 batches in flight). Each relay mode is reported
// with its ratio to the raw baseline of the same publishing method. Run it
// with -benchtime=5x: it reports the medians over the rounds.
func BenchmarkPublishModes(b *testing.B) {
	type setting struct {
		name string
		n    int // events per run: ~1k/s per event under SyncAlways
		ns   *testenv.NATSServer
		db   store.DB
		msgs []*nats.Msg
	}
	settings := []*setting{{name: "sync", n: 10_000}, {name: "nosync", n: 20_000}}
	for _, s := range settings {
		sync := s.name == "sync"
		s.ns = testenv.NATSWith(b, func(o *server.Options) { o.SyncAlways = sync })
		s.db, s.msgs = benchLog(b, s.n)
	}
	modes := []string{"raw_async", "relay_async", "raw_batch", "relay_batch"}
	rates := map[string][]float64{}
	ratios := map[string][]float64{}
	round := 0
	b.ReportAllocs()
	for b.Loop() {
		for _, s := range settings {
			got := map[string]float64{}
			for k := range modes {
				mode := modes[(k+round)%len(modes)] // rotate the order from round to round
				got[mode] = runPublishMode(b, s.ns, s.db, s.msgs, mode)
				rates[s.name+"_"+mode] = append(rates[s.name+"_"+mode], got[mode])
			}
			ratios[s.name+"_relay_async/raw_async"] = append(ratios[s.name+"_relay_async/raw_async"], got["relay_async"]/got["raw_async"])
			ratios[s.name+"_relay_batch/raw_batch"] = append(ratios[s.name+"_relay_batch/raw_batch"], got["relay_batch"]/got["raw_batch"])
			ratios[s.name+"_relay_batch/relay_async"] = append(ratios[s.name+"_relay_batch/relay_async"], got["relay_batch"]/got["relay_async"])
		}
		round++
	}
	// One line per setting: go test keeps ten lines of a benchmark's log.
	for _, s := range settings {
		line := fmt.Sprintf("%-6s n=%d msgs/s:", s.name, s.n)
		for _, mode := range modes {
			k := s.name + "_" + mode
			b.ReportMetric(median(rates[k]), k+"_msgs/s")
			line += fmt.Sprintf(" %s %.0f [%s]", mode, median(rates[k]), fmtRates(rates[k]))
		}
		line += "; ratios:"
		for _, k := range []string{"relay_async/raw_async", "relay_batch/raw_batch", "relay_batch/relay_async"} {
			b.ReportMetric(median(ratios[s.name+"_"+k]), s.name+"_"+k)
			line += fmt.Sprintf(" %s %.2f×", k, median(ratios[s.name+"_"+k]))
		}
		b.Log(line + fmt.Sprintf(" (medians of %d interleaved rounds)", round))
	}
}

func fmtRates(xs []float64) string {
	var parts []string
	for _, x := range xs {
		parts = append(parts, strconv.FormatFloat(x, 'f', 0, 64))
	}
	return strings.Join(parts, " ")
}

// benchLog returns a new log of n 300-byte events and their messages.
func benchLog(b *testing.B, n int) (store.DB, []*nats.Msg) {
	ctx := context.Background()
	db := testenv.Postgres(b)
	for i := 0; i < n; i += 1000 {
		evs := make([]store.Event, min(1000, n-i))
		for j := range evs {
			evs[j] = benchEvent(b, i+j)
		}
		storetest.Append(b, db, evs...)
	}
	logID, err := db.LogID(ctx)
	require.NoError(b, err)
	var msgs []*nats.Msg
	heads := make([]int64, wire.DefaultPartitions)
	for after := int64(0); ; {
		evs, err := db.Fetch(ctx, after, 5000)
		require.NoError(b, err)
		if len(evs) == 0 {
			break
		}
		for _, e := range evs {
			p := wire.Partition(e.SubjectID, len(heads))
			msgs = append(msgs, relay.Encode(logID, e, len(heads), heads[p]))
			heads[p] = e.Sequence
		}
		after = evs[len(evs)-1].Sequence
	}
	require.Len(b, msgs, n)
	return db, msgs
}

// runPublishMode publishes the log (the relay) or msgs (raw) in one mode
// into a new stream on ns, checks the stream holds all of them, deletes it
// and returns the rate.
func runPublishMode(b *testing.B, ns *testenv.NATSServer, db store.DB, msgs []*nats.Msg, mode string) float64 {
	ctx := context.Background()
	admin := ns.JetStream(b)
	cfg := relay.Config{Stream: testenv.Name("MODES"), BatchSize: 1000}
	var rate float64
	switch mode {
	case "relay_async", "relay_batch":
		if mode == "relay_async" {
			cfg.MaxInFlight = 1024
		} else {
			cfg.PublishBatch = 1000
		}
		rate = runRelay(b, ns, db, cfg, len(msgs))
	case "raw_async":
		_, err := relay.EnsureStream(ctx, admin, cfg)
		require.NoError(b, err)
		rate = rawAsync(b, ns, msgs)
	case "raw_batch":
		cfg.PublishBatch = 1000
		_, err := relay.EnsureStream(ctx, admin, cfg)
		require.NoError(b, err)
		rate = rawBatches(b, ns, msgs, 1000, 4)
	}
	s, err := admin.Stream(ctx, cfg.Stream)
	require.NoError(b, err)
	require.Equal(b, uint64(len(msgs)), s.CachedInfo().State.Msgs, mode)
	require.NoError(b, admin.DeleteStream(ctx, cfg.Stream))
	return rate
}

func runRelay(b *testing.B, ns *testenv.NATSServer, db store.DB, cfg relay.Config, n int) float64 {
	js, err := jetstream.New(ns.Connect(b))
	require.NoError(b, err)
	r, err := relay.New(db, js, cfg)
	require.NoError(b, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- r.Run(ctx) }()
	for r.Position() < int64(n) {
		time.Sleep(time.Millisecond)
	}
	rate := float64(n) / time.Since(start).Seconds()
	cancel()
	require.NoError(b, <-done)
	return rate
}

// rawAsync publishes msgs with PublishAsync, 1024 in flight, msg ids (the
// messages' own), no fencing.
func rawAsync(b *testing.B, ns *testenv.NATSServer, msgs []*nats.Msg) float64 {
	js, err := jetstream.New(ns.Connect(b), jetstream.WithPublishAsyncMaxPending(1024))
	require.NoError(b, err)
	start := time.Now()
	for _, m := range msgs {
		_, err := js.PublishMsgAsync(&nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data})
		for errors.Is(err, jetstream.ErrTooManyStalledMsgs) { // the window stayed full for 200ms: wait on
			_, err = js.PublishMsgAsync(&nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data})
		}
		require.NoError(b, err)
	}
	<-js.PublishAsyncComplete()
	return float64(len(msgs)) / time.Since(start).Seconds()
}

// rawBatches publishes msgs as atomic batches of size, up to inFlight
// awaiting their commit's answer, msg ids, no fencing.
func rawBatches(b *testing.B, ns *testenv.NATSServer, msgs []*nats.Msg, size, inFlight int) float64 {
	nc := ns.Connect(b)
	answers := make(chan *nats.Msg, inFlight)
	inbox := nc.NewInbox()
	sub, err := nc.ChanSubscribe(inbox+".*", answers)
	require.NoError(b, err)
	defer func() { _ = sub.Unsubscribe() }()
	answer := func() {
		m := <-answers
		var ack struct {
			Count int             `json:"count"`
			Error json.RawMessage `json:"error"`
		}
		require.NoError(b, json.Unmarshal(m.Data, &ack))
		require.Nil(b, ack.Error, "%s", m.Data)
	}
	prefix := testenv.Name("b")
	open := 0
	start := time.Now()
	for i := 0; i < len(msgs); i += size {
		if open == inFlight {
			answer()
			open--
		}
		batch := msgs[i:min(i+size, len(msgs))]
		for k, m := range batch {
			h := maps.Clone(m.Header)
			h["Nats-Batch-Id"] = []string{prefix + "-" + strconv.Itoa(i)}
			h["Nats-Batch-Sequence"] = []string{strconv.Itoa(k + 1)}
			out := &nats.Msg{Subject: m.Subject, Header: h, Data: m.Data}
			if k == len(batch)-1 {
				h["Nats-Batch-Commit"] = []string{"1"}
				out.Reply = inbox + "." + strconv.Itoa(i)
			}
			require.NoError(b, nc.PublishMsg(out))
		}
		open++
	}
	for ; open > 0; open-- {
		answer()
	}
	return float64(len(msgs)) / time.Since(start).Seconds()
}
