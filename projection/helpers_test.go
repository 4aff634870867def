package projection_test

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/projection"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/postgres"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// typeRetagged is an event type no test projection handles.
const typeRetagged = "v1.package.retagged"

// env is one test's world: the artifactstore log in a PostgreSQL schema of
// its own, an in-process nats-server with the real relay publishing the
// log to the events stream, and the team's database: another schema, which
// the runners reach only through their own pool.
type env struct {
	log   *postgres.DB
	logID string
	parts int
	ns    *testenv.NATSServer
	js    jetstream.JetStream
	// pool is the team's database; schema its schema.
	pool   *pgxpool.Pool
	url    string
	schema string

	mu   sync.Mutex
	next int // the next package number append uses
}

func setup(t testing.TB) *env {
	t.Helper()
	logURL, logSchema := testenv.Schema(t)
	db := testenv.OpenPostgres(t, logURL, logSchema)
	ctx := context.Background()
	logID, err := db.LogID(ctx)
	require.NoError(t, err)
	parts, err := db.Partitions(ctx)
	require.NoError(t, err)
	ns := testenv.NATS(t)
	url, schema := testenv.Schema(t)
	e := &env{log: db, logID: logID, parts: parts, ns: ns, js: ns.JetStream(t), url: url, schema: schema}
	e.pool = openPool(t, url, schema, true)
	return e
}

// openPool opens a pool whose search_path is schema (created when create).
func openPool(t testing.TB, url, schema string, create bool) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	if create {
		conn, err := pgx.Connect(ctx, url)
		require.NoError(t, err)
		_, err = conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{schema}.Sanitize())
		require.NoError(t, err)
		require.NoError(t, conn.Close(ctx))
	}
	pc, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	pc.ConnConfig.RuntimeParams["search_path"] = schema
	pc.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// startRelay runs the real relay on the log until the test ends (or the
// returned stop); cfg may adjust its configuration.
func (e *env) startRelay(t testing.TB, mutate func(*relay.Config)) (stop func()) {
	t.Helper()
	cfg := relay.Config{Logger: testenv.Logger(t).Named("relay"), Registerer: prometheus.NewRegistry(), PollInterval: 100 * time.Millisecond,
		RetryMin: 10 * time.Millisecond, RetryMax: 200 * time.Millisecond, ShutdownTimeout: time.Second,
		// The gap and hostile-message tests delete messages to make a
		// stream that lost events.
		AllowStreamDeletes: true}
	if mutate != nil {
		mutate(&cfg)
	}
	js, err := jetstream.New(e.ns.Connect(t))
	require.NoError(t, err)
	r, err := relay.New(e.log, js, cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			require.NoError(t, <-done)
		})
	}
	t.Cleanup(stop)
	return stop
}

// appendPackages appends n packages: each created by one of three actors,
// every other one finalized, and every fifth one retagged (an event type
// nobody handles). It returns the events written.
func (e *env) appendPackages(t testing.TB, n int) []store.Event {
	t.Helper()
	e.mu.Lock()
	from := e.next
	e.next += n
	e.mu.Unlock()
	var evs []store.Event
	for i := from; i < from+n; i++ {
		actor := "actor-" + strconv.Itoa(i%3)
		evs = append(evs, storetest.Created(t, storetest.PackageID(i), "name-"+strconv.Itoa(i%7), "1."+strconv.Itoa(i), actor))
	}
	for i := from; i < from+n; i += 2 {
		evs = append(evs, storetest.Finalized(t, storetest.PackageID(i), "actor-"+strconv.Itoa(i%5), store.DigestOf([]byte(strconv.Itoa(i)))))
	}
	for i := from; i < from+n; i += 5 {
		ev, err := store.NewEvent(typeRetagged, store.SubjectKindPackage, storetest.PackageID(i), "actor-x", []byte(`{"tag":"latest"}`))
		require.NoError(t, err)
		evs = append(evs, ev)
	}
	var out []store.Event
	for len(evs) > 0 {
		k := min(100, len(evs))
		out = append(out, storetest.Append(t, e.log, evs[:k]...)...)
		evs = evs[k:]
	}
	return out
}

// awaitPublished waits until the stream's last message is the log's head.
func (e *env) awaitPublished(t testing.TB) int64 {
	t.Helper()
	head, err := e.log.Head(context.Background())
	require.NoError(t, err)
	testenv.Eventually(t, 30*time.Second, func() bool { return e.streamLast(t) >= head }, "the relay publishes up to %d", head)
	return head
}

// streamLast returns the log sequence of the stream's last message.
func (e *env) streamLast(t testing.TB) int64 {
	t.Helper()
	s, err := e.js.Stream(context.Background(), wire.StreamName)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0
	}
	require.NoError(t, err)
	st := s.CachedInfo().State
	if st.Msgs == 0 {
		return 0
	}
	m, err := s.GetMsg(context.Background(), st.LastSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0 // trimmed meanwhile by the stream's limits: ask again
	}
	require.NoError(t, err)
	seq, err := strconv.ParseInt(m.Header.Get(wire.HeaderSequence), 10, 64)
	require.NoError(t, err)
	return seq
}

// lastPerPartition returns each partition's last event in the log.
func (e *env) lastPerPartition(t testing.TB) []int64 {
	t.Helper()
	out := make([]int64, e.parts)
	for ev, err := range store.All(context.Background(), e.log, 0, 0) {
		require.NoError(t, err)
		out[wire.Partition(ev.SubjectID, e.parts)] = ev.Sequence
	}
	return out
}

// checkpoints returns the projection's checkpoints by partition.
func checkpoints(t testing.TB, pool *pgxpool.Pool, name string) map[int]int64 {
	t.Helper()
	out := map[int]int64{}
	var p int
	var s int64
	rows, err := pool.Query(context.Background(), `SELECT partition, sequence FROM projection_checkpoints WHERE projection = $1`, name)
	if err == nil {
		_, err = pgx.ForEachRow(rows, []any{&p, &s}, func() error { out[p] = s; return nil })
	}
	if pe := (*pgconn.PgError)(nil); errors.As(err, &pe) && pe.Code == "42P01" {
		return out // not migrated yet
	}
	require.NoError(t, err)
	return out
}

// awaitCaughtUp waits until every partition's checkpoint reaches its last
// event in the log.
func (e *env) awaitCaughtUp(t testing.TB, name string, timeout time.Duration) {
	t.Helper()
	want := e.lastPerPartition(t)
	testenv.Eventually(t, timeout, func() bool { return caughtUpTo(checkpoints(t, e.pool, name), want) },
		"every partition of %s reaches the log's last event of the partition %v", name, want)
}

// caughtUpTo reports whether every checkpoint reached want.
func caughtUpTo(cps map[int]int64, want []int64) bool {
	for p, w := range want {
		if cps[p] < w {
			return false
		}
	}
	return true
}

// counting is the tests' projection: per (actor, event type) counters and
// per subject rows, both incremented (not idempotent), so that applying an
// event twice shows; applying a subject's events out of order or twice
// fails the handler. fail, when set, may fail an event.
func counting(name string, fail func(projection.Event) error) projection.Projection {
	return build(name, fail, true)
}

func build(name string, fail func(projection.Event) error, aggregate bool) projection.Projection {
	h := func(ctx context.Context, tx pgx.Tx, e projection.Event) error {
		if fail != nil {
			if err := fail(e); err != nil {
				return err
			}
		}
		if !aggregate {
			// no counts
		} else if _, err := tx.Exec(ctx, `INSERT INTO counts (actor, event_type, n, last_sequence) VALUES ($1, $2, 1, $3)
			ON CONFLICT (actor, event_type) DO UPDATE SET n = counts.n + 1, last_sequence = greatest(counts.last_sequence, excluded.last_sequence)`,
			e.Actor, e.Type, e.Sequence); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `INSERT INTO subjects AS s (subject_id, events, last_sequence, first_at) VALUES ($1, 1, $2, $3)
			ON CONFLICT (subject_id) DO UPDATE SET events = s.events + 1, last_sequence = excluded.last_sequence
			WHERE s.last_sequence < excluded.last_sequence`, e.SubjectID, e.Sequence, e.CreatedAt)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("subject %s: event %d applied twice or out of order", e.SubjectID, e.Sequence)
		}
		return nil
	}
	p := projection.Projection{
		Name: name,
		Migrations: []string{
			`CREATE TABLE subjects (subject_id text PRIMARY KEY, events bigint NOT NULL, last_sequence bigint NOT NULL, first_at timestamptz NOT NULL)`,
		},
		Tables:   []string{"subjects"},
		Handlers: map[string]projection.Handler{store.TypePackageCreated: h, store.TypePackageFinalized: h},
	}
	if aggregate {
		p.Migrations = append(p.Migrations,
			`CREATE TABLE counts (actor text, event_type text, n bigint NOT NULL, last_sequence bigint NOT NULL, PRIMARY KEY (actor, event_type))`)
		p.Tables = append(p.Tables, "counts")
		// counts is an aggregate over subjects.
		p.Serialize = true
	}
	return p
}

// perSubject is counting without the aggregate: every row belongs to one
// subject, so partitions never wait on each other's rows.
func perSubject(name string) projection.Projection { return build(name, nil, false) }

// fastConfig is a runner configuration with short timings for tests.
func fastConfig(t testing.TB, worker string) projection.Config {
	return projection.Config{
		WorkerID:        worker,
		LeaseTTL:        600 * time.Millisecond,
		IdleWait:        50 * time.Millisecond,
		ParkRetry:       300 * time.Millisecond,
		MaxAttempts:     3,
		BatchSize:       50,
		ShutdownTimeout: 5 * time.Second,
		Logger:          testenv.Logger(t).Named(worker),
		Registerer:      prometheus.NewRegistry(),
	}
}

// instance is one running Runner on its own NATS connection.
type instance struct {
	r      *projection.Runner
	reg    *prometheus.Registry
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// start runs p with cfg on the team's pool until stop (or the test's end).
func (e *env) start(t testing.TB, p projection.Projection, cfg projection.Config) *instance {
	t.Helper()
	return e.startOn(t, e.pool, p, cfg)
}

func (e *env) startOn(t testing.TB, pool *pgxpool.Pool, p projection.Projection, cfg projection.Config) *instance {
	t.Helper()
	nc := e.ns.Connect(t)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	reg, _ := cfg.Registerer.(*prometheus.Registry)
	r, err := projection.New(pool, js, p, cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	in := &instance{r: r, reg: reg, nc: nc, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(in.done)
		in.err = r.Run(ctx)
	}()
	t.Cleanup(func() { _ = in.stop() })
	return in
}

// stop cancels the instance and returns Run's error.
func (in *instance) stop() error {
	in.cancel()
	<-in.done
	in.nc.Close()
	return in.err
}

// wait waits for Run to return by itself and returns its error.
func (in *instance) wait(t testing.TB, timeout time.Duration) error {
	t.Helper()
	select {
	case <-in.done:
		in.nc.Close()
		return in.err
	case <-time.After(timeout):
		t.Fatalf("Run did not return within %s", timeout)
		return nil
	}
}

// metric sums a metric's series whose labels include labels.
func (in *instance) metric(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := in.reg.Gather()
	require.NoError(t, err)
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue series
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// requireReplayEqual checks the team's tables against a Replay of the stream's
// events into a fresh schema, byte for byte, that nothing is parked, and
// that the counters hold exactly the log's handled events.
func (e *env) requireReplayEqual(t testing.TB, p projection.Projection) {
	t.Helper()
	e.requireEqualTo(t, p, projection.StreamEvents(context.Background(), e.js, projection.StreamOptions{LogID: e.logID, Partitions: e.parts}))
}

// requireEqualTo is requireReplayEqual with the replay's events given.
func (e *env) requireEqualTo(t testing.TB, p projection.Projection, events iter.Seq2[projection.Event, error]) {
	t.Helper()
	ctx := context.Background()
	var parked int
	require.NoError(t, e.pool.QueryRow(ctx, `SELECT count(*) FROM projection_parked WHERE projection = $1`, p.Name).Scan(&parked))
	require.Zero(t, parked, "parked partitions (an event applied twice fails its handler)")
	projected, err := projection.Dump(ctx, e.pool, "", p)
	require.NoError(t, err)
	schema := testenv.Name("replay")
	t.Cleanup(func() { _, _ = e.pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+schema+" CASCADE") })
	_, err = projection.Replay(ctx, e.pool, p, events, projection.ReplayOptions{Schema: schema})
	require.NoError(t, err)
	replayed, err := projection.Dump(ctx, e.pool, schema, p)
	require.NoError(t, err)
	require.NotEmpty(t, replayed)
	require.Equal(t, replayed, projected, "the runners' tables differ from a replay of the stream")
	if !slices.Contains(p.Tables, "counts") {
		return
	}
	// An oracle of its own: the counts the log's events make.
	want := map[string]int64{}
	for ev, err := range store.All(ctx, e.log, 0, 0) {
		require.NoError(t, err)
		if p.Handlers[ev.Type] != nil {
			want[ev.Actor+" "+ev.Type]++
		}
	}
	got := map[string]int64{}
	rows, err := e.pool.Query(ctx, `SELECT actor || ' ' || event_type, n FROM counts`)
	require.NoError(t, err)
	var k string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&k, &n}, func() error { got[k] = n; return nil })
	require.NoError(t, err)
	require.Equal(t, want, got, "counts per actor and type equal the log's")
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// publishAfter publishes the log's events above after to the stream as the
// relay does (subjects, headers, predecessors), for tests whose stream
// holds messages the relay would not accept after.
func (e *env) publishAfter(t testing.TB, after int64) {
	t.Helper()
	ctx := context.Background()
	prev := make([]int64, e.parts)
	for ev, err := range store.All(ctx, e.log, 0, 0) {
		require.NoError(t, err)
		part := wire.Partition(ev.SubjectID, e.parts)
		if ev.Sequence > after {
			_, err := e.js.PublishMsg(ctx, wire.Encode(wire.Message{Event: ev, LogID: e.logID, Partition: part, Previous: prev[part]}, 0))
			require.NoError(t, err)
		}
		prev[part] = ev.Sequence
	}
}
