package projector

import (
	"context"
	"errors"
	"runtime"
	"slices"
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
	"github.com/artifactstore/artifactstore/store/postgres"
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
	// pg is the PostgreSQL database's configuration (setup only).
	pg postgres.Config

	mu        sync.Mutex
	published int64
	// prev is each partition's last event published (or skipped).
	prev map[int]int64
	// parts is the log's partition count.
	parts int
}

func setup(t testing.TB) *env {
	t.Helper()
	url, schema := testenv.Schema(t)
	e := setupWith(t, testenv.OpenPostgres(t, url, schema), func(t testing.TB) store.DB { return testenv.OpenPostgres(t, url, schema) })
	e.pg = postgres.Config{URL: url, Schema: schema}
	return e
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
	parts, err := db.Partitions(ctx)
	require.NoError(t, err)
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{
		Name:       DefaultStream,
		Subjects:   []string{wire.Subjects},
		Storage:    jetstream.FileStorage,
		Duplicates: 2 * time.Minute,
	})
	require.NoError(t, err)
	return &env{db: db, open: open, srv: srv, js: js, logID: logID, parts: parts, prev: map[int]int64{}}
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
			p := Partition(ev.SubjectID, e.parts)
			m := wire.Encode(wire.Message{Event: ev, LogID: e.logID, Partition: p, Previous: e.prev[p]}, 0)
			e.prev[p] = ev.Sequence
			if ev.Sequence == skip {
				continue
			}
			f, err := e.js.PublishMsgAsync(m)
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
func requireReplayEqual(t testing.TB, db store.DB) {
	t.Helper()
	ctx := context.Background()
	parked, err := db.Parked(ctx)
	require.NoError(t, err)
	require.Empty(t, parked, "parked partitions (a double application fails its handler)")
	projected, err := db.DumpViews(ctx)
	require.NoError(t, err)
	partitions, err := db.Partitions(ctx)
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

// worker is a worker running in its own goroutine with its own NATS
// connection and database pool, so that it can be killed alone.
type worker struct {
	w      *Worker
	reg    *prometheus.Registry
	nc     *nats.Conn
	db     store.DB
	cancel context.CancelFunc
	done   chan error
	killed atomic.Bool
}

func (e *env) start(t testing.TB, cfg Config) *worker {
	t.Helper()
	return e.startWith(t, cfg, e.srv.Connect(t), e.open(t))
}

// startWith is start on a NATS connection and database of the caller's.
func (e *env) startWith(t testing.TB, cfg Config, nc *nats.Conn, db store.DB) *worker {
	t.Helper()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	if cfg.Logger == nil {
		cfg.Logger = testenv.Logger(t)
	}
	r := &worker{reg: reg, nc: nc, db: db, done: make(chan error, 1)}
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
func (r *worker) stop() error {
	if r.killed.Load() {
		return nil
	}
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
// allows: no commit after its next one, its NATS connection and database
// pool closed under it, so it cannot give its leases back; they expire.
func (r *worker) kill() {
	r.killed.Store(true)
	r.nc.Close()
	r.db.Close()
	r.cancel()
	select {
	case <-r.done:
		close(r.done)
	case <-time.After(30 * time.Second):
		panic("killed worker did not stop")
	}
}

// metric sums the samples of the named metric whose labels include want.
// A name the worker does not define fails the test (a misspelt name must
// not read as zero).
func (r *worker) metric(t testing.TB, name string, want map[string]string) float64 {
	t.Helper()
	testenv.RequireMetricDefined(t, name, r.w.m.collectors()...)
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

// fastConfig is a configuration with short timeouts for tests. Its lease
// TTL is the default; tests that time failover shorten it.
func fastConfig(id string) Config {
	return Config{
		WorkerID:        id,
		BatchSize:       100,
		LeaseTTL:        DefaultLeaseTTL,
		IdleWait:        200 * time.Millisecond,
		MaxAttempts:     2,
		ParkRetry:       time.Hour,
		ShutdownTimeout: 5 * time.Second,
	}
}

// owned returns the partitions whose unexpired lease worker holds.
func owned(t testing.TB, db store.DB, worker string) []int {
	t.Helper()
	hs, err := db.LeaseHolders(context.Background(), DefaultProjection)
	require.NoError(t, err)
	var out []int
	for p, w := range hs {
		if w == worker {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

func runtimeGoexit() { runtime.Goexit() }
