package projector

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// env is one test's world: a PostgreSQL schema with the log, an in-process
// nats-server, and a stand-in relay that publishes the log to the public
// stream exactly as the relay does (subjects, headers, exactly once, in
// order).
type env struct {
	db  store.DB
	srv *testenv.NATSServer
	// open returns another handle on the same database (its own pool, so
	// a worker can be killed alone).
	open  func(t testing.TB) store.DB
	js    jetstream.JetStream
	logID string

	mu        sync.Mutex
	published int64
}

func setup(t testing.TB) *env {
	t.Helper()
	url, schema := testenv.Schema(t)
	return setupWith(t, testenv.OpenPostgres(t, url, schema), func(t testing.TB) store.DB { return testenv.OpenPostgres(t, url, schema) })
}

func setupSQLite(t testing.TB) *env {
	t.Helper()
	db := testenv.SQLite(t)
	return setupWith(t, db, func(testing.TB) store.DB { return db })
}

func setupWith(t testing.TB, db store.DB, open func(t testing.TB) store.DB) *env {
	t.Helper()
	srv := testenv.NATS(t)
	js := srv.JetStream(t)
	ctx := context.Background()
	logID, err := db.LogID(ctx)
	require.NoError(t, err)
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{
		Name:       DefaultStream,
		Subjects:   []string{"artifactstore.events.>"},
		Storage:    jetstream.FileStorage,
		Duplicates: 2 * time.Minute,
	})
	require.NoError(t, err)
	return &env{db: db, open: open, srv: srv, js: js, logID: logID}
}

// relay publishes every event after the last published one.
func (e *env) relay(t testing.TB) int64 {
	t.Helper()
	return e.relayExcept(t, 0)
}

// relayExcept is relay that leaves event skip out of the stream (a
// stream that lost a message).
func (e *env) relayExcept(t testing.TB, skip int64) int64 {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	ctx := context.Background()
	for {
		batch, err := e.db.Fetch(ctx, e.published, 1000)
		require.NoError(t, err)
		if len(batch) == 0 {
			return e.published
		}
		futures := make([]jetstream.PubAckFuture, 0, len(batch))
		for _, ev := range batch {
			if ev.Sequence == skip {
				continue
			}
			f, err := e.js.PublishMsgAsync(eventMsg(ev, e.logID), jetstream.WithMsgID(store.MsgID(e.logID, ev.Sequence)))
			require.NoError(t, err)
			futures = append(futures, f)
		}
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				require.NoError(t, err)
			case <-time.After(10 * time.Second):
				t.Fatal("publish not acknowledged")
			}
		}
		e.published = batch[len(batch)-1].Sequence
	}
}

func eventMsg(ev store.Event, logID string) *nats.Msg { return wire.Encode(logID, ev, 0) }

// appendPackages appends, for packages [from, to), a created event each,
// then a finalized event for every other one, in transactions of 250.
func appendPackages(t testing.TB, db store.DB, from, to int) {
	t.Helper()
	var evs []store.Event
	for i := from; i < to; i++ {
		evs = append(evs, storetest.Created(t, storetest.PackageID(i), "name-"+strconv.Itoa(i%17), "1."+strconv.Itoa(i), "ci"))
	}
	for i := from; i < to; i += 2 {
		evs = append(evs, storetest.Finalized(t, storetest.PackageID(i), "ci", store.DigestOf([]byte(strconv.Itoa(i)))))
	}
	for len(evs) > 0 {
		n := min(250, len(evs))
		storetest.Append(t, db, evs[:n]...)
		evs = evs[n:]
	}
}

// expected returns, per partition, the sequence of the partition's last
// event in the log.
func expected(t testing.TB, db store.DB, n int) []int64 {
	t.Helper()
	out := make([]int64, n)
	for ev, err := range store.All(context.Background(), db, 0, 0) {
		require.NoError(t, err)
		out[Partition(ev.SubjectID, n)] = ev.Sequence
	}
	return out
}

// caughtUp reports whether every partition's checkpoint reached want.
func caughtUp(t testing.TB, db store.DB, projection string, want []int64) bool {
	t.Helper()
	cps, err := db.Checkpoints(context.Background())
	require.NoError(t, err)
	got := make([]int64, len(want))
	for _, c := range cps {
		if c.Projection == projection && c.Partition < len(got) {
			got[c.Partition] = c.Sequence
		}
	}
	for i := range want {
		if got[i] < want[i] {
			return false
		}
	}
	return true
}

// requireReplayEqual checks the projected views against a replay --reset
// of the same log, byte for byte, and that nothing is parked.
func requireReplayEqual(t testing.TB, db store.DB, partitions int) {
	t.Helper()
	ctx := context.Background()
	parked, err := db.Parked(ctx)
	require.NoError(t, err)
	require.Empty(t, parked, "parked partitions (a double application fails its handler)")
	projected, err := db.DumpViews(ctx)
	require.NoError(t, err)
	_, err = store.Replay(ctx, db, store.RegistryViews{}, store.ReplayOptions{Reset: true, Partitions: partitions})
	require.NoError(t, err)
	replayed, err := db.DumpViews(ctx)
	require.NoError(t, err)
	require.NotEmpty(t, replayed)
	require.Equal(t, replayed, projected, "projected views differ from replay --reset")
	// Every row carries the sequence of its package's last event.
	last := map[string]int64{}
	for ev, err := range store.All(ctx, db, 0, 0) {
		require.NoError(t, err)
		if store.RegistryHandlers().Handles(ev.Type) {
			last[ev.SubjectID] = ev.Sequence
		}
	}
	pkgs, err := db.ListPackages(ctx, store.PackageFilter{Limit: 1000})
	require.NoError(t, err)
	for _, p := range pkgs {
		require.Equal(t, last[p.ID], p.LastSequence, p.ID)
	}
}

// running is a worker running in its own goroutine with its own NATS
// connection and database pool, so that it can be killed alone.
type running struct {
	w      *Worker
	reg    *prometheus.Registry
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan error
	killed atomic.Bool
}

func (e *env) start(t testing.TB, cfg Config) *running {
	t.Helper()
	return e.startConn(t, cfg, e.srv.Connect(t))
}

// startConn is start on a NATS connection of the caller's.
func (e *env) startConn(t testing.TB, cfg Config, nc *nats.Conn) *running {
	t.Helper()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	db := e.open(t)
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	if cfg.Logger == nil {
		cfg.Logger = testenv.Logger(t)
	}
	r := &running{reg: reg, nc: nc, done: make(chan error, 1)}
	prev := cfg.hooks.afterCommit
	cfg.hooks.afterCommit = func(p int, last int64) error {
		if r.killed.Load() {
			return errors.New("killed")
		}
		if prev != nil {
			return prev(p, last)
		}
		return nil
	}
	r.w, err = New(db, js, cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- r.w.Run(ctx) }()
	t.Cleanup(func() { r.stop() })
	return r
}

// stop cancels the worker and returns what Run returned.
func (r *running) stop() error {
	r.cancel()
	select {
	case err, ok := <-r.done:
		if ok {
			close(r.done)
		}
		return err
	case <-time.After(30 * time.Second):
		return errors.New("worker did not stop")
	}
}

// kill stops the worker abruptly, as close to SIGKILL as one process
// allows: no ack after its next commit, connection closed under it.
func (r *running) kill() error {
	r.killed.Store(true)
	r.nc.Close()
	select {
	case err := <-r.done:
		close(r.done)
		r.cancel()
		return err
	case <-time.After(10 * time.Second):
		return r.stop()
	}
}

// metric sums the samples of the named metric whose labels include want.
func (r *running) metric(t testing.TB, name string, want map[string]string) float64 {
	t.Helper()
	fams, err := r.reg.Gather()
	require.NoError(t, err)
	var sum float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			for k, v := range want {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == k && l.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			switch {
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// fastConfig is a configuration with short timeouts for tests.
func fastConfig(id string, partitions int) Config {
	return Config{
		WorkerID:        id,
		Partitions:      partitions,
		BatchSize:       100,
		AckWait:         2 * time.Second,
		PinnedTTL:       time.Second,
		MemberTTL:       time.Second,
		FetchWait:       200 * time.Millisecond,
		MaxAttempts:     2,
		GapRetries:      3,
		ParkRetry:       time.Hour,
		ShutdownTimeout: 5 * time.Second,
	}
}
