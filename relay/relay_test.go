package relay_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sourcegraph/conc"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/postgres"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// env is one test's world: a migrated log, its own nats-server and a
// stream name of its own.
type env struct {
	db     store.DB
	ns     *testenv.NATSServer
	js     jetstream.JetStream
	stream string
	// batch is the relays' Config.PublishBatch (0: event by event).
	batch int
	// allowDeletes is the relays' Config.AllowStreamDeletes, for tests
	// that delete or purge messages on purpose.
	allowDeletes bool
	ids          sync.Mutex
	nextID       int
}

// testBatch is the atomic batch size of the batching variants: with the
// tests' MaxInFlight (64) up to four batches are in flight, and reads of
// 100 events end batches early (100 = 6×16 + 4).
const testBatch = 16

// eachMode runs test twice: publishing event by event and in atomic
// batches of testBatch.
func eachMode(t *testing.T, test func(t *testing.T, batch int)) {
	for _, mode := range []struct {
		name  string
		batch int
	}{{"async", 0}, {"batch", testBatch}} {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			test(t, mode.batch)
		})
	}
}

func setup(t *testing.T) *env {
	t.Helper()
	return setupDB(t, testenv.Postgres(t))
}

func setupDB(t *testing.T, db store.DB) *env {
	t.Helper()
	ns := testenv.NATS(t)
	return &env{db: db, ns: ns, js: ns.JetStream(t), stream: testenv.Name("EVENTS")}
}

// config is a relay config with short timings for tests.
func (e *env) config(t *testing.T) relay.Config {
	return relay.Config{
		Stream:             e.stream,
		Logger:             testenv.Logger(t),
		Registerer:         prometheus.NewRegistry(),
		MaxInFlight:        64,
		BatchSize:          100,
		PollInterval:       200 * time.Millisecond,
		AckTimeout:         2 * time.Second,
		LockRetryInterval:  20 * time.Millisecond,
		RetryMin:           10 * time.Millisecond,
		RetryMax:           200 * time.Millisecond,
		ShutdownTimeout:    200 * time.Millisecond,
		PublishBatch:       e.batch,
		AllowStreamDeletes: e.allowDeletes,
	}
}

// instance is one relay process: its own NATS connection and Run goroutine.
type instance struct {
	r      *relay.Relay
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// newRelay makes a relay on its own NATS connection; mutate may change the
// config or install hooks before it runs.
func (e *env) newRelay(t *testing.T, db store.DB, mutate func(*relay.Config)) *instance {
	t.Helper()
	cfg := e.config(t)
	if mutate != nil {
		mutate(&cfg)
	}
	nc := e.ns.Connect(t)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	r, err := relay.New(db, js, cfg)
	require.NoError(t, err)
	return &instance{r: r, nc: nc, done: make(chan struct{})}
}

// start runs the relay until stop (or the test's end).
func (in *instance) start(t *testing.T) *instance {
	ctx, cancel := context.WithCancel(context.Background())
	in.cancel = cancel
	go func() {
		defer close(in.done)
		in.err = in.r.Run(ctx)
	}()
	t.Cleanup(func() { in.stop() })
	return in
}

// stop cancels Run and waits for it, returning its error.
func (in *instance) stop() error {
	in.cancel()
	<-in.done
	return in.err
}

// kill stops the relay abruptly: its connection is closed under it and its
// context cancelled. Safe to call from a hook (it does not wait).
func (in *instance) kill() {
	in.nc.Close()
	in.cancel()
}

// event returns the i-th test event: creates, finalizes and an unknown type.
func event(t testing.TB, i int) store.Event {
	id := storetest.PackageID(i / 3)
	switch i % 3 {
	case 0:
		return storetest.Created(t, id, "app", strconv.Itoa(i), "ci-bot")
	case 1:
		return storetest.Finalized(t, id, "alice@example.com", store.DigestOf([]byte(id)))
	}
	e, err := store.NewEvent("v9.widget.exploded", "widget", id, "gremlin",
		[]byte(fmt.Sprintf(`{"widget":%q,"pieces":%d}`, id, i)))
	require.NoError(t, err)
	return e
}

// appendEvents appends n events in transactions of up to per events.
func (e *env) appendEvents(t testing.TB, db store.DB, n, per int) {
	t.Helper()
	for n > 0 {
		k := min(n, per)
		evs := make([]store.Event, k)
		e.ids.Lock()
		for i := range evs {
			evs[i] = event(t, e.nextID)
			e.nextID++
		}
		e.ids.Unlock()
		storetest.Append(t, db, evs...)
		n -= k
	}
}

// streamInfo returns the stream's fresh state.
func (e *env) streamInfo(t testing.TB) *jetstream.StreamInfo {
	t.Helper()
	s, err := e.js.Stream(context.Background(), e.stream)
	require.NoError(t, err)
	return s.CachedInfo()
}

// awaitCaughtUp waits until the stream holds as many messages as the log
// has events.
func (e *env) awaitCaughtUp(t *testing.T, timeout time.Duration) {
	t.Helper()
	head, err := e.db.Head(context.Background())
	require.NoError(t, err)
	testenv.Eventually(t, timeout, func() bool {
		s, err := e.js.Stream(context.Background(), e.stream)
		return err == nil && s.CachedInfo().State.LastSeq >= uint64(head)
	}, "stream %s to reach log head %d", e.stream, head)
}

// requireStreamEqualsLog compares the stream with the log message by
// message: same count, same order, every header, body and digest.
func (e *env) requireStreamEqualsLog(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	e.awaitCaughtUp(t, 60*time.Second)
	logID, err := e.db.LogID(ctx)
	require.NoError(t, err)
	var events []store.Event
	for {
		batch, err := e.db.Fetch(ctx, int64(len(events)), 1000)
		require.NoError(t, err)
		if len(batch) == 0 {
			break
		}
		events = append(events, batch...)
	}
	info := e.streamInfo(t)
	require.Equal(t, uint64(len(events)), info.State.Msgs, "stream message count = log events")
	require.Equal(t, uint64(len(events)), info.State.LastSeq, "no message was ever removed or rejected into the stream")

	s, err := e.js.Stream(ctx, e.stream)
	require.NoError(t, err)
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	i := 0
	prev := map[int]int64{} // each partition's previous event
	batches := 0            // atomic batches of more than one message
	for i < len(events) {
		batch, err := cons.Fetch(min(500, len(events)-i), jetstream.FetchMaxWait(5*time.Second))
		require.NoError(t, err)
		for m := range batch.Messages() {
			require.Less(t, i, len(events), "more messages than events")
			want := events[i]
			meta, err := m.Metadata()
			require.NoError(t, err)
			require.Equal(t, uint64(i+1), meta.Sequence.Stream)
			part := wire.Partition(want.SubjectID, wire.DefaultPartitions)
			require.Equal(t, wire.Subject(want, part), m.Subject(), "event %d subject", want.Sequence)
			require.Equal(t, want.Payload, m.Data(), "event %d body", want.Sequence)
			h := m.Headers()
			for name, value := range map[string]string{
				"Nats-Msg-Id":                      store.MsgID(logID, want.Sequence),
				"Artifactstore-Sequence":           strconv.FormatInt(want.Sequence, 10),
				"Artifactstore-Event-Type":         want.Type,
				"Artifactstore-Subject-Kind":       want.SubjectKind,
				"Artifactstore-Subject-Id":         want.SubjectID,
				"Artifactstore-Actor":              want.Actor,
				"Artifactstore-Payload-Digest":     store.DigestOf(m.Data()).String(),
				"Artifactstore-Created-At":         want.CreatedAt.UTC().Format("2006-01-02T15:04:05.000000000Z07:00"),
				"Artifactstore-Log-Id":             logID,
				"Artifactstore-Partition":          strconv.Itoa(part),
				"Artifactstore-Partition-Previous": strconv.FormatInt(prev[part], 10),
				"Artifactstore-Chain-Digest":       want.ChainDigest.String(),
			} {
				require.Equal(t, []string{value}, h.Values(name), "event %d header %s", want.Sequence, name)
			}
			require.Equal(t, want.PayloadDigest.String(), h.Get("Artifactstore-Payload-Digest"))
			e.requireTransportHeaders(t, h, i, want.Sequence, &batches)
			got, err := wire.Decode(m.Subject(), h, m.Data())
			require.NoError(t, err)
			require.Equal(t, wire.Message{Event: want, LogID: logID, Partition: part, Previous: prev[part]}, got)
			prev[part] = want.Sequence
			i++
		}
		require.NoError(t, batch.Error())
	}
	if e.batch > 0 && len(events) > 1 {
		require.NotZero(t, batches, "the relay published atomic batches")
	}
	st, err := relay.ReadStatus(ctx, e.db, e.js, e.stream)
	require.NoError(t, err)
	require.Equal(t, int64(len(events)), st.Head)
	require.Equal(t, int64(len(events)), st.Sequence)
	require.Zero(t, st.Lag)
}

// requireTransportHeaders checks the NATS headers of the message at stream
// index i (event seq) besides the contract's: the fence, and with batching
// the batch headers. Every message of an atomic batch carries its id and
// position; only the first can carry the fence (the server checks the
// others against the stream as it was before the batch), and each batch
// must be fenced. batches counts batches of more than one message.
func (e *env) requireTransportHeaders(t *testing.T, h nats.Header, i int, seq int64, batches *int) {
	t.Helper()
	fence := h.Values("Nats-Expected-Last-Sequence")
	if e.batch == 0 {
		require.Equal(t, []string{strconv.Itoa(i)}, fence, "event %d was fenced", seq)
		for name := range h {
			require.NotContains(t, name, "Nats-Batch", "event %d", seq)
		}
		return
	}
	require.Len(t, h.Values("Nats-Batch-Id"), 1, "event %d: batch id", seq)
	pos, err := strconv.Atoi(h.Get("Nats-Batch-Sequence"))
	require.NoError(t, err, "event %d: batch sequence", seq)
	if pos == 1 {
		require.Equal(t, []string{strconv.Itoa(i)}, fence, "event %d opens a batch and was fenced", seq)
	} else {
		require.Empty(t, fence, "event %d, message %d of its batch", seq, pos)
		if pos == 2 {
			*batches++
		}
	}
	require.LessOrEqual(t, pos, e.batch, "event %d", seq)
	if c := h.Values("Nats-Batch-Commit"); c != nil {
		require.Equal(t, []string{"1"}, c, "event %d", seq)
	}
	for name := range h {
		if !strings.HasPrefix(name, "Artifactstore-") {
			require.Contains(t, []string{"Nats-Msg-Id", "Nats-Expected-Last-Sequence", "Nats-Batch-Id", "Nats-Batch-Sequence", "Nats-Batch-Commit"},
				name, "event %d: unexpected header", seq)
		}
	}
}

// await polls cond until it holds or timeout passes; usable off the test
// goroutine (hooks).
func await(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

func TestStreamEqualsLog(t *testing.T) {
	t.Parallel()
	for _, dialect := range []string{"postgres", "sqlite"} {
		t.Run(dialect, func(t *testing.T) {
			eachMode(t, func(t *testing.T, batch int) {
				var db store.DB
				if dialect == "postgres" {
					db = testenv.Postgres(t)
				} else {
					db = testenv.SQLite(t)
				}
				e := setupDB(t, db)
				e.batch = batch
				e.appendEvents(t, db, 450, 50) // a backlog, unknown types included
				in := e.newRelay(t, db, nil).start(t)
				e.awaitCaughtUp(t, 30*time.Second)
				e.appendEvents(t, db, 150, 1) // live, one commit at a time
				e.appendEvents(t, db, 100, 25)
				e.requireStreamEqualsLog(t)
				require.Equal(t, int64(700), in.r.Position())
				require.Zero(t, relay.Lag(in.r))
				require.Equal(t, float64(700), relay.Published(in.r))
				require.NoError(t, in.stop())
				// Restarting publishes nothing again.
				in2 := e.newRelay(t, db, nil).start(t)
				e.appendEvents(t, db, 3, 3)
				e.requireStreamEqualsLog(t)
				require.NoError(t, in2.stop())
				require.Equal(t, float64(3), relay.Published(in2.r))
			})
		})
	}
}

// TestWriterRace runs many concurrent writers with random delays before
// and after taking their sequences, and rollbacks, while the relay runs.
func TestWriterRace(t *testing.T) {
	t.Parallel()
	e := setup(t)
	in := e.newRelay(t, e.db, nil).start(t)
	errRollback := errors.New("rollback")
	var wg conc.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			for range 30 {
				n := 1 + rng.IntN(3)
				evs := make([]store.Event, n)
				e.ids.Lock()
				for i := range evs {
					evs[i] = event(t, e.nextID)
					e.nextID++
				}
				e.ids.Unlock()
				rollback := rng.IntN(5) == 0
				err := e.db.InTx(context.Background(), func(tx store.Tx) error {
					time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond) // work before appending
					if _, err := tx.Append(context.Background(), evs...); err != nil {
						return err
					}
					time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond) // slow commit, holding its sequences
					if rollback {
						return errRollback
					}
					return nil
				})
				if rollback {
					require.ErrorIs(t, err, errRollback)
				} else {
					require.NoError(t, err)
				}
			}
		})
	}
	wg.Wait()
	e.requireStreamEqualsLog(t)
	require.NoError(t, in.stop())
}

// TestCrashRestart kills the relay at random points of its pipeline (before
// a publish, between publish and ack, mid-window, after an ack, right after
// synchronising) many times while writers append, restarting it each time.
func TestCrashRestart(t *testing.T) {
	t.Parallel()
	eachMode(t, func(t *testing.T, batch int) {
		e := setup(t)
		e.batch = batch
		e.appendEvents(t, e.db, 1500, 100)
		ctx, stopWriter := context.WithCancel(context.Background())
		var wg conc.WaitGroup
		wg.Go(func() {
			for ctx.Err() == nil {
				e.appendEvents(t, e.db, 1+rand.IntN(5), 5)
			}
		})
		stages := []string{"synced", "fetched", "publish", "published", "acked"}
		rng := rand.New(rand.NewPCG(7, 7))
		for round := range 40 {
			stage := stages[round%len(stages)]
			after := rng.IntN(150) // times the stage is seen before the kill
			switch stage {
			case "synced":
				after = 0
			case "fetched":
				after = rng.IntN(8)
			}
			var in *instance
			var once sync.Once
			killed := make(chan struct{})
			count := 0
			in = e.newRelay(t, e.db, func(c *relay.Config) { c.MaxInFlight = 32 + rng.IntN(64) })
			relay.SetHook(in.r, func(s string, _ int64) {
				if s != stage {
					return
				}
				if count++; count > after {
					once.Do(func() {
						if round%4 == 3 {
							in.cancel() // a graceful stop mid-window, for contrast
						} else {
							in.kill()
						}
						close(killed)
					})
				}
			})
			in.start(t)
			select {
			case <-killed:
			case <-time.After(20 * time.Second):
				t.Fatalf("round %d: relay never reached stage %s #%d", round, stage, after)
			}
			require.NoError(t, in.stop())
		}
		stopWriter()
		wg.Wait()
		in := e.newRelay(t, e.db, nil).start(t)
		e.requireStreamEqualsLog(t)
		require.NoError(t, in.stop())
	})
}

// TestTwoRelaysFenced runs two relays with the leader lock disabled, so
// only the fencing headers keep them apart. One of them synchronises, is
// held until the other has published, and must be fenced.
func TestTwoRelaysFenced(t *testing.T) {
	t.Parallel()
	eachMode(t, func(t *testing.T, batch int) {
		e := setup(t)
		e.batch = batch
		e.appendEvents(t, e.db, 1200, 100)
		b := e.newRelay(t, e.db, nil)
		relay.DisableLock(b.r)
		a := e.newRelay(t, e.db, nil)
		relay.DisableLock(a.r)
		var once sync.Once
		relay.SetHook(a.r, func(stage string, seq int64) {
			if stage == "synced" {
				// Hold A between reading the stream and publishing until B has
				// published past where A stands: A's view is now stale.
				once.Do(func() { await(20*time.Second, func() bool { return b.r.Position() > seq }) })
			}
		})
		a.start(t)
		b.start(t)
		e.appendEvents(t, e.db, 300, 10)
		e.requireStreamEqualsLog(t)
		require.NoError(t, a.stop())
		require.NoError(t, b.stop())
		require.GreaterOrEqual(t, relay.Errors(a.r, "fenced"), float64(1), "the stale relay was fenced")
	})
}

// TestStaleRelayBeyondDuplicateWindow holds a relay between synchronising
// and publishing for longer than the stream's 1s duplicate window while
// another relay publishes everything: de-duplication can no longer help,
// the fence must.
func TestStaleRelayBeyondDuplicateWindow(t *testing.T) {
	t.Parallel()
	eachMode(t, func(t *testing.T, batch int) {
		e := setup(t)
		e.batch = batch
		window := func(c *relay.Config) { c.DuplicateWindow = time.Second }
		e.appendEvents(t, e.db, 300, 100)
		a := e.newRelay(t, e.db, window)
		relay.DisableLock(a.r)
		b := e.newRelay(t, e.db, window)
		relay.DisableLock(b.r)
		var once sync.Once
		var doneAt time.Time
		bDone := make(chan struct{})
		aSynced := make(chan struct{})
		relay.SetHook(a.r, func(stage string, _ int64) {
			if stage == "synced" {
				once.Do(func() {
					close(aSynced)
					<-bDone
					// The outage: until B's messages are older than the window.
					await(10*time.Second, func() bool { return time.Since(doneAt) > 1500*time.Millisecond })
				})
			}
		})
		a.start(t)
		<-aSynced
		b.start(t)
		e.awaitCaughtUp(t, 30*time.Second)
		require.NoError(t, b.stop())
		doneAt = time.Now()
		close(bDone)
		e.appendEvents(t, e.db, 20, 5)
		e.requireStreamEqualsLog(t)
		require.NoError(t, a.stop())
		require.GreaterOrEqual(t, relay.Errors(a.r, "fenced"), float64(1))
	})
}

// TestOutageLongerThanDuplicateWindow kills the relay between publish and
// ack, keeps it down longer than the 1s duplicate window, and restarts it.
func TestOutageLongerThanDuplicateWindow(t *testing.T) {
	t.Parallel()
	eachMode(t, func(t *testing.T, batch int) {
		e := setup(t)
		e.batch = batch
		window := func(c *relay.Config) { c.DuplicateWindow = time.Second }
		e.appendEvents(t, e.db, 400, 100)
		in := e.newRelay(t, e.db, window)
		var once sync.Once
		var killedAt time.Time
		killed := make(chan struct{})
		relay.SetHook(in.r, func(stage string, seq int64) {
			if stage == "published" && seq >= 200 {
				once.Do(func() { killedAt = time.Now(); in.kill(); close(killed) })
			}
		})
		in.start(t)
		<-killed
		require.NoError(t, in.stop())
		published := e.streamInfo(t).State.Msgs
		require.Greater(t, published, uint64(150), "the relay published before it was killed")
		testenv.Eventually(t, 5*time.Second, func() bool { return time.Since(killedAt) > 1500*time.Millisecond },
			"an outage longer than the duplicate window")
		again := e.newRelay(t, e.db, window).start(t)
		e.requireStreamEqualsLog(t)
		require.NoError(t, again.stop())
	})
}

// TestOneActiveRelay runs two relays with the leader lock: one publishes,
// the other stands by and takes over when the first stops.
func TestOneActiveRelay(t *testing.T) {
	t.Parallel()
	eachMode(t, func(t *testing.T, batch int) {
		e := setup(t)
		e.batch = batch
		e.appendEvents(t, e.db, 200, 50)
		a := e.newRelay(t, e.db, nil).start(t)
		b := e.newRelay(t, e.db, nil).start(t)
		e.awaitCaughtUp(t, 30*time.Second)
		require.True(t, a.r.Active() != b.r.Active(), "exactly one relay is active")
		first, second := a, b
		if b.r.Active() {
			first, second = b, a
		}
		require.Zero(t, relay.Published(second.r))
		testenv.Eventually(t, 10*time.Second, second.r.Standby, "the other stands by")
		require.False(t, first.r.Standby(), "the active relay is not a standby")
		require.WithinDuration(t, time.Now(), first.r.LastProgress(), 5*time.Second, "the active relay's loop goes round")
		require.WithinDuration(t, time.Now(), second.r.LastProgress(), 5*time.Second, "the standby's loop goes round")
		require.NoError(t, first.stop())
		e.appendEvents(t, e.db, 100, 10)
		testenv.Eventually(t, 10*time.Second, second.r.Active, "the standby to take over")
		require.False(t, first.r.Standby(), "a stopped relay is no standby")
		e.requireStreamEqualsLog(t)
		require.NoError(t, second.stop())
	})
}

// TestNATSRestart restarts the NATS server while events are being relayed.
func TestNATSRestart(t *testing.T) {
	t.Parallel()
	eachMode(t, func(t *testing.T, batch int) {
		e := setup(t)
		e.batch = batch
		e.appendEvents(t, e.db, 500, 100)
		in := e.newRelay(t, e.db, nil).start(t)
		ctx, stopWriter := context.WithCancel(context.Background())
		var wg conc.WaitGroup
		wg.Go(func() {
			for ctx.Err() == nil {
				e.appendEvents(t, e.db, 2, 2)
			}
		})
		testenv.Eventually(t, 10*time.Second, func() bool { return in.r.Position() > 100 }, "relay to publish")
		e.ns.Restart()
		head, err := e.db.Head(context.Background())
		require.NoError(t, err)
		testenv.Eventually(t, 20*time.Second, func() bool { return in.r.Position() > head }, "relay to continue after the restart")
		stopWriter()
		wg.Wait()
		e.requireStreamEqualsLog(t)
		require.NoError(t, in.stop())
	})
}

// TestPostgresDown stops PostgreSQL under a running relay and starts it
// again: the relay backs off, retakes the lock and catches up.
func TestPostgresDown(t *testing.T) {
	t.Parallel()
	c, err := testenv.NewCluster()
	require.NoError(t, err)
	t.Cleanup(c.Remove)
	require.NoError(t, c.Start())
	db := testenv.OpenPostgres(t, c.URL(), "")
	e := setupDB(t, db)
	e.appendEvents(t, db, 100, 50)
	in := e.newRelay(t, db, nil).start(t)
	e.awaitCaughtUp(t, 20*time.Second)
	require.NoError(t, c.Stop())
	testenv.Eventually(t, 20*time.Second, func() bool { return !in.r.Active() }, "relay to step down when its lock session dies")
	require.NoError(t, c.Start())
	e.appendEvents(t, db, 100, 10)
	e.requireStreamEqualsLog(t)
	require.NoError(t, in.stop())
	require.Greater(t, relay.Errors(in.r, "database"), float64(0))
}

func TestForeignStream(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.appendEvents(t, e.db, 10, 10)
	in := e.newRelay(t, e.db, nil).start(t)
	e.awaitCaughtUp(t, 10*time.Second)
	require.NoError(t, in.stop())

	other := testenv.Postgres(t) // another log, same stream
	storetest.Append(t, other, event(t, 0))
	o := e.newRelay(t, other, nil).start(t)
	<-o.done
	var mismatch *relay.LogMismatchError
	require.ErrorAs(t, o.err, &mismatch)
	require.ErrorIs(t, o.err, relay.ErrForeignStream)
	logID, _ := e.db.LogID(context.Background())
	otherID, _ := other.LogID(context.Background())
	require.Equal(t, logID, mismatch.StreamLogID)
	require.Equal(t, otherID, mismatch.LogID)
	require.Contains(t, o.err.Error(), logID)
	_, err := relay.ReadStatus(context.Background(), other, e.js, e.stream)
	require.ErrorIs(t, err, relay.ErrForeignStream)
	require.Equal(t, uint64(10), e.streamInfo(t).State.Msgs, "nothing was published")
}

func TestEnsureStream(t *testing.T) {
	t.Parallel()
	ns := testenv.NATS(t)
	js := ns.JetStream(t)
	ctx := context.Background()
	cfg := relay.Config{Stream: testenv.Name("EVENTS"), DuplicateWindow: 3 * time.Second}

	s, err := relay.EnsureStream(ctx, js, cfg)
	require.NoError(t, err)
	got := s.CachedInfo().Config
	require.Equal(t, []string{"artifactstore.events.>"}, got.Subjects)
	require.Equal(t, jetstream.FileStorage, got.Storage)
	require.Equal(t, 3*time.Second, got.Duplicates)
	require.Equal(t, 1, got.Replicas)
	require.False(t, got.AllowAtomicPublish, "atomic publishing only when the relay batches")
	_, err = relay.EnsureStream(ctx, js, cfg) // idempotent
	require.NoError(t, err)
	batching := cfg
	batching.PublishBatch = 100
	_, err = relay.EnsureStream(ctx, js, batching) // accepted, publishes event by event
	require.NoError(t, err)
	s, err = relay.EnsureStream(ctx, testenv.NATS(t).JetStream(t), batching) // a new stream on another server
	require.NoError(t, err)
	require.True(t, s.CachedInfo().Config.AllowAtomicPublish, "a batching relay creates the stream for atomic publishing")

	pos, err := relay.ReadPosition(ctx, js, cfg.Stream)
	require.NoError(t, err)
	require.Equal(t, relay.Position{Stream: cfg.Stream}, pos)

	// The same stream under another duplicate window conflicts.
	other := cfg
	other.DuplicateWindow = time.Minute
	_, err = relay.EnsureStream(ctx, js, other)
	var conflict *relay.ConflictError
	require.ErrorAs(t, err, &conflict)
	require.Equal(t, "duplicate window", conflict.Field)
	require.Contains(t, err.Error(), cfg.Stream)

	// Another stream cannot take the subjects.
	taken := cfg
	taken.Stream = testenv.Name("OTHER")
	_, err = relay.EnsureStream(ctx, js, taken)
	require.ErrorAs(t, err, &conflict)
	require.Equal(t, "subjects", conflict.Field)

	// A memory stream of that name conflicts, and Run refuses it.
	mem := relay.StreamConfig(relay.Config{Stream: testenv.Name("MEM")})
	mem.Storage = jetstream.MemoryStorage
	mem.Subjects = []string{"artifactstore.elsewhere.>"}
	_, err = js.CreateStream(ctx, mem)
	require.NoError(t, err)
	_, err = relay.EnsureStream(ctx, js, relay.Config{Stream: mem.Name})
	require.ErrorIs(t, err, relay.ErrStreamConflict)
	db := testenv.SQLite(t)
	r, err := relay.New(db, js, relay.Config{Stream: mem.Name})
	require.NoError(t, err)
	require.ErrorIs(t, r.Run(ctx), relay.ErrStreamConflict)
}

func TestTruncatedStream(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.allowDeletes = true // the test purges the stream
	e.appendEvents(t, e.db, 5, 5)
	in := e.newRelay(t, e.db, nil).start(t)
	e.awaitCaughtUp(t, 10*time.Second)
	require.NoError(t, in.stop())
	s, err := e.js.Stream(context.Background(), e.stream)
	require.NoError(t, err)
	require.NoError(t, s.Purge(context.Background()))
	_, err = relay.ReadPosition(context.Background(), e.js, e.stream)
	require.ErrorIs(t, err, relay.ErrStreamTruncated)
	again := e.newRelay(t, e.db, nil).start(t)
	<-again.done
	require.ErrorIs(t, again.err, relay.ErrStreamTruncated)
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	db := testenv.SQLite(t)
	ns := testenv.NATS(t)
	js := ns.JetStream(t)
	for _, tc := range []struct {
		field string
		cfg   relay.Config
	}{
		{"Stream", relay.Config{Stream: "a.b"}},
		{"Replicas", relay.Config{Replicas: 7}},
		{"DuplicateWindow", relay.Config{DuplicateWindow: time.Millisecond}},
		{"MaxInFlight", relay.Config{MaxInFlight: -1}},
		{"BatchSize", relay.Config{BatchSize: -5}},
		{"PollInterval", relay.Config{PollInterval: -time.Second}},
		{"RetryMax", relay.Config{RetryMin: time.Minute, RetryMax: time.Second}},
		{"PublishBatch", relay.Config{PublishBatch: 1}},
		{"PublishBatch", relay.Config{PublishBatch: relay.MaxPublishBatch + 1}},
		{"PublishBatch", relay.Config{PublishBatch: -1}},
		{"PublishBatch", relay.Config{PublishBatch: 200, BatchSize: 100}},
	} {
		_, err := relay.New(db, js, tc.cfg)
		require.ErrorContains(t, err, "Config."+tc.field)
	}
	_, err := relay.New(db, js, relay.Config{})
	require.NoError(t, err)
	_, err = relay.New(db, js, relay.Config{PublishBatch: relay.MaxPublishBatch, Stream: "OTHER"})
	require.NoError(t, err)
}

// TestNATSDownAtStart starts the relay while NATS is down: it waits and
// relays once NATS is back.
func TestNATSDownAtStart(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.appendEvents(t, e.db, 50, 50)
	in := e.newRelay(t, e.db, nil)
	e.ns.Shutdown()
	in.start(t)
	testenv.Eventually(t, 10*time.Second, func() bool { return in.nc.Status() == nats.RECONNECTING }, "the relay's connection to notice")
	e.appendEvents(t, e.db, 50, 10)
	e.ns.Start()
	e.requireStreamEqualsLog(t)
	require.NoError(t, in.stop())
}

// TestStopWhileWaitingAtStart: a relay whose dependencies are down at
// start waits its backoff (here an hour) between checks, and a stop ends
// the wait at once: Run returns nil.
func TestStopWhileWaitingAtStart(t *testing.T) {
	t.Parallel()
	e := setup(t)
	core, logs := observer.New(zap.WarnLevel)
	in := e.newRelay(t, e.db, func(c *relay.Config) { c.RetryMin, c.RetryMax, c.Logger = time.Hour, time.Hour, zap.New(core) })
	e.ns.Shutdown()
	in.start(t)
	testenv.Eventually(t, 30*time.Second, func() bool {
		return logs.FilterMessage("dependencies unavailable at start; retrying").Len() > 0
	}, "the relay to find NATS down and wait")
	waiting := logs.FilterMessage("dependencies unavailable at start; retrying").All()[0]
	require.GreaterOrEqual(t, waiting.ContextMap()["retry_in"], 45*time.Minute, "the wait is RetryMin, give or take a quarter")
	began := time.Now()
	require.NoError(t, in.stop())
	require.Less(t, time.Since(began), 5*time.Second, "the stop ends the wait at once")
}

// TestUnmigratedDatabase: a log id that cannot be read for a reason other
// than an unreachable database is not retried: Run says what is wrong.
func TestUnmigratedDatabase(t *testing.T) {
	t.Parallel()
	url, schema := testenv.Schema(t)
	db, err := postgres.Open(context.Background(), postgres.Config{URL: url, Schema: schema, Logger: testenv.Logger(t)})
	require.NoError(t, err)
	t.Cleanup(db.Close)
	e := setupDB(t, db)
	in := e.newRelay(t, db, nil).start(t)
	select {
	case <-in.done:
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
	}
	require.ErrorContains(t, in.err, "is the database migrated?")
}

func TestMetricsRegistration(t *testing.T) {
	t.Parallel()
	db := testenv.SQLite(t)
	js := testenv.NATS(t).JetStream(t)
	reg := prometheus.NewRegistry()
	_, err := relay.New(db, js, relay.Config{Registerer: reg})
	require.NoError(t, err)
	_, err = relay.New(db, js, relay.Config{Registerer: reg})
	require.ErrorContains(t, err, "registering metrics")
	_, err = relay.New(db, js, relay.Config{Registerer: reg, Stream: "OTHER"})
	require.NoError(t, err, "relays of different streams can share a registry")
	families, err := reg.Gather()
	require.NoError(t, err)
	var names []string
	for _, f := range families {
		names = append(names, f.GetName())
	}
	require.Subset(t, names, []string{"artifactstore_relay_position", "artifactstore_relay_lag",
		"artifactstore_relay_published_total", "artifactstore_relay_errors_total", "artifactstore_relay_log_head"})
}

// TestWakesOnCommit sets a poll interval far beyond the test's patience:
// the relay must be woken by the commit itself, through LISTEN/NOTIFY when
// another connection pool (another process) writes.
func TestWakesOnCommit(t *testing.T) {
	t.Parallel()
	url, schema := testenv.Schema(t)
	db := testenv.OpenPostgres(t, url, schema)
	writer := testenv.OpenPostgres(t, url, schema)
	e := setupDB(t, db)
	in := e.newRelay(t, db, func(c *relay.Config) { c.PollInterval = time.Hour }).start(t)
	testenv.Eventually(t, 10*time.Second, in.r.Active, "relay to start")
	for i := range 20 {
		e.appendEvents(t, writer, 1, 1)
		testenv.Eventually(t, 5*time.Second, func() bool { return in.r.Position() == int64(i+1) }, "event %d relayed without polling", i+1)
	}
	e.requireStreamEqualsLog(t)
	require.NoError(t, in.stop())
}
