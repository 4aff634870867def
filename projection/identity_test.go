package projection_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/projection"
)

// TestIdentityRecordedAndChecked: a first start without configuration
// waits for the stream, then learns the log id and the partition count
// from the stream's events and records them. Later starts refuse another
// configured log or partition count, a log source of another log, and a
// stream rebuilt from another log.
func TestIdentityRecordedAndChecked(t *testing.T) {
	t.Parallel()
	e := setup(t)
	p := counting("counting", nil)
	cfg := fastConfig(t, "w1")
	in := e.start(t, p, cfg) // before the stream exists
	e.startRelay(t, nil)
	e.appendPackages(t, 60)
	e.awaitPublished(t)
	e.awaitCaughtUp(t, p.Name, 30*time.Second)
	require.NoError(t, in.stop())
	st, err := projection.Inspect(context.Background(), e.pool, nil, "", p.Name)
	require.NoError(t, err)
	require.Equal(t, e.logID, st.LogID, "learnt from the stream")
	require.Equal(t, e.parts, st.LogPartitions, "learnt from the stream")

	run := func(mutate func(*projection.Config)) error {
		cfg := fastConfig(t, "w2")
		mutate(&cfg)
		return e.start(t, p, cfg).wait(t, 30*time.Second)
	}
	err = run(func(c *projection.Config) { c.Partitions = 8 })
	require.ErrorIs(t, err, projection.ErrPartitionsChanged)
	require.ErrorContains(t, err, "configured 8 partitions, projection counting was built with 16")
	err = run(func(c *projection.Config) { c.LogID = "someotherlog" })
	require.ErrorIs(t, err, projection.ErrForeignLog)

	other := testenv.Postgres(t) // another log
	err = run(func(c *projection.Config) { c.Log = other })
	require.ErrorIs(t, err, projection.ErrForeignLog)
	require.ErrorContains(t, err, "the log source is log")

	// The stream is rebuilt from another log (its events all carry that
	// log's id): the projection refuses to follow it.
	ctx := context.Background()
	require.NoError(t, e.js.DeleteStream(ctx, "ARTIFACTSTORE_EVENTS"))
	otherEnv := &env{log: other, ns: e.ns, js: e.js, parts: e.parts}
	otherEnv.logID, err = other.LogID(ctx)
	require.NoError(t, err)
	otherEnv.startRelay(t, nil)
	otherEnv.appendPackages(t, 10)
	otherEnv.awaitPublished(t)
	err = run(func(*projection.Config) {})
	require.ErrorIs(t, err, projection.ErrForeignLog)
	require.ErrorContains(t, err, "sampled events of the stream are from other logs")
}

// TestPartitionsUnknown: a stream of a few events does not tell the
// partition count (several counts fit them): a first start without
// Config.Partitions refuses to guess; with it, it runs.
func TestPartitionsUnknown(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startRelay(t, nil)
	e.appendPackages(t, 1) // a created and a finalized event of one package, and a retagged one
	e.awaitPublished(t)
	p := counting("counting", nil)
	err := e.start(t, p, fastConfig(t, "w1")).wait(t, 30*time.Second)
	require.ErrorIs(t, err, projection.ErrPartitionsUnknown)
	require.ErrorContains(t, err, "set Config.Partitions")
	var recorded int
	require.NoError(t, e.pool.QueryRow(context.Background(), "SELECT count(*) FROM projection_meta").Scan(&recorded))
	require.Zero(t, recorded, "nothing recorded")

	cfg := fastConfig(t, "w2")
	cfg.Partitions = e.parts
	in := e.start(t, p, cfg)
	e.awaitCaughtUp(t, p.Name, 30*time.Second)
	require.NoError(t, in.stop())
	e.requireReplayEqual(t, p)
}

// TestMigrations: instances starting together apply each statement once;
// a statement added later is applied at the next start; an applied
// statement that changed, or fewer statements than applied, are refused.
func TestMigrations(t *testing.T) {
	t.Parallel()
	e := setup(t)
	p := counting("counting", nil)
	ctx := context.Background()
	var mu sync.Mutex
	var applied []int
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			got, err := projection.Migrate(ctx, e.pool, p)
			require.NoError(t, err)
			mu.Lock()
			applied = append(applied, got...)
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.Sort(applied)
	require.Equal(t, []int{1, 2}, applied, "each statement applied once")

	p.Migrations = append(p.Migrations, `ALTER TABLE counts ADD COLUMN note text`)
	got, err := projection.Migrate(ctx, e.pool, p)
	require.NoError(t, err)
	require.Equal(t, []int{3}, got)
	got, err = projection.Migrate(ctx, e.pool, p)
	require.NoError(t, err)
	require.Empty(t, got)

	changed := p
	changed.Migrations = slices.Clone(p.Migrations)
	changed.Migrations[0] += " -- edited"
	_, err = projection.Migrate(ctx, e.pool, changed)
	require.ErrorIs(t, err, projection.ErrMigrationChanged)
	require.ErrorContains(t, err, "statement 1 of counting was changed")
	fewer := p
	fewer.Migrations = p.Migrations[:2]
	_, err = projection.Migrate(ctx, e.pool, fewer)
	require.ErrorIs(t, err, projection.ErrMigrationChanged)

	// A failing statement applies nothing of its migration run.
	bad := p
	bad.Migrations = append(slices.Clone(p.Migrations), `CREATE TABLE fine (x int)`, `CREATE TABLE broken (`)
	_, err = projection.Migrate(ctx, e.pool, bad)
	require.ErrorContains(t, err, "statement 5")
	var exists bool
	require.NoError(t, e.pool.QueryRow(ctx, `SELECT to_regclass('fine') IS NOT NULL`).Scan(&exists))
	require.False(t, exists, "statement 4 rolled back with 5")
}

// TestInvalidConfig: New names the bad field of a projection or config.
func TestInvalidConfig(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ok := counting("counting", nil)
	for _, tc := range []struct {
		name   string
		mutate func(*projection.Projection, *projection.Config)
		says   string
	}{
		{"name", func(p *projection.Projection, _ *projection.Config) { p.Name = "Counting!" }, "Projection.Name"},
		{"no handlers", func(p *projection.Projection, _ *projection.Config) { p.Handlers = nil }, "Projection.Handlers is empty"},
		{"bad type", func(p *projection.Projection, _ *projection.Config) {
			p.Handlers = map[string]projection.Handler{"created": p.Handlers["v1.package.created"]}
		}, `key "created" is not an event type`},
		{"nil handler", func(p *projection.Projection, _ *projection.Config) {
			p.Handlers = map[string]projection.Handler{"v1.package.created": nil}
		}, "nil handler"},
		{"empty migration", func(p *projection.Projection, _ *projection.Config) { p.Migrations = []string{""} }, "statement 1 is empty"},
		{"table", func(p *projection.Projection, _ *projection.Config) { p.Tables = []string{"public.x"} }, "Projection.Tables"},
		{"table twice", func(p *projection.Projection, _ *projection.Config) { p.Tables = []string{"x", "x"} }, "twice"},
		{"partitions", func(_ *projection.Projection, c *projection.Config) { c.Partitions = 5000 }, "Config.Partitions"},
		{"log id", func(_ *projection.Projection, c *projection.Config) { c.LogID = "a.b" }, "Config.LogID"},
		{"worker", func(_ *projection.Projection, c *projection.Config) { c.WorkerID = "a b" }, "Config.WorkerID"},
		{"lease", func(_ *projection.Projection, c *projection.Config) { c.LeaseTTL = time.Millisecond }, "Config.LeaseTTL"},
		{"batch", func(_ *projection.Projection, c *projection.Config) { c.BatchSize = -1 }, "Config.BatchSize"},
		{"stream", func(_ *projection.Projection, c *projection.Config) { c.Stream = "a.b" }, "Config.Stream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := ok
			p.Handlers = map[string]projection.Handler{}
			for k, v := range ok.Handlers {
				p.Handlers[k] = v
			}
			cfg := fastConfig(t, "w1")
			tc.mutate(&p, &cfg)
			_, err := projection.New(e.pool, e.js, p, cfg)
			require.ErrorIs(t, err, projection.ErrConfig)
			require.ErrorContains(t, err, tc.says)
		})
	}
	_, err := projection.New(nil, e.js, ok, fastConfig(t, "w1"))
	require.ErrorIs(t, err, projection.ErrConfig)
	_, err = projection.Replay(context.Background(), e.pool, ok, nil, projection.ReplayOptions{Partitions: 16})
	require.ErrorIs(t, err, projection.ErrConfig, "Partitions without LogID")
}
