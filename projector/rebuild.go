package projector

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sethvargo/go-retry"
	"github.com/sourcegraph/conc"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/internal/backoff"
	"github.com/artifactstore/artifactstore/store"
)

// ErrRebuildUnsupported is returned by Rebuild on a store that cannot keep
// two versions of a projection (SQLite): replay --reset rebuilds in place.
var ErrRebuildUnsupported = errors.New("projector: this store cannot rebuild a projection beside the live one (it needs PostgreSQL; on SQLite use replay --reset)")

// ErrRebuildRunning is returned by Rebuild while another rebuild of the
// projection runs.
var ErrRebuildRunning = errors.New("projector: another rebuild of this projection is running")

// Phases of a rebuild, as RebuildProgress reports them.
const (
	PhaseLoad   = "load"
	PhaseFollow = "follow"
	PhaseSwitch = "switch"
)

// RebuildProgress is where a rebuild is.
type RebuildProgress struct {
	Version int
	// Phase is PhaseLoad, PhaseFollow or PhaseSwitch.
	Phase string
	// Applied is the lowest sequence the new version has applied; Target
	// is the log head it is heading for.
	Applied, Target int64
}

// RebuildConfig configures Rebuild.
type RebuildConfig struct {
	// Projection is the projection to rebuild ("registry").
	Projection string
	// Views applies events (store.RegistryViews{} when nil).
	Views store.ViewWriter
	// Stream is the events stream the new version follows after its load.
	Stream string
	// SwitchLag is how far behind the log head the new version may be when
	// it switches (1000): the switch applies the rest in its transaction,
	// while the live version's projectors wait.
	SwitchLag int64
	// LockTimeout bounds the switch's waits for locks (5s); a switch that
	// times out changes nothing and is tried again.
	LockTimeout time.Duration
	// TableLockTimeout bounds the switch's wait for the live tables
	// (200ms): queries on them queue behind it.
	TableLockTimeout time.Duration
	// Poll is how often the follow phase checks the lag (200ms).
	Poll time.Duration
	// Progress, when set, is called as the rebuild goes.
	Progress func(RebuildProgress)
	// Logger receives the rebuild's logs (no-op when nil).
	Logger *zap.Logger

	// afterLoad, when set, runs after the bulk load is recorded; an error
	// stops the rebuild there as if killed (tests).
	afterLoad func() error
}

// RebuildResult is what a finished rebuild did.
type RebuildResult struct {
	// Version is the new live version; Retired the one it replaced.
	Version, Retired int
	// Resumed is true when an interrupted rebuild was taken up again.
	Resumed bool
	// LoadedTo is the log sequence the bulk load reached; SwitchedAt the
	// one the new version had applied when it went live.
	LoadedTo, SwitchedAt int64
}

func (c *RebuildConfig) setDefaults() {
	if c.Projection == "" {
		c.Projection = DefaultProjection
	}
	if c.Views == nil {
		c.Views = store.RegistryViews{}
	}
	if c.Stream == "" {
		c.Stream = DefaultStream
	}
	if c.SwitchLag <= 0 {
		c.SwitchLag = 1000
	}
	if c.LockTimeout <= 0 {
		c.LockTimeout = 5 * time.Second
	}
	if c.TableLockTimeout <= 0 {
		c.TableLockTimeout = 200 * time.Millisecond
	}
	if c.Poll <= 0 {
		c.Poll = 200 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Progress == nil {
		c.Progress = func(RebuildProgress) {}
	}
}

// Rebuild builds a new version of a projection beside the live one, which
// projector workers keep serving meanwhile, then switches to it: it loads
// the log into the new version's tables in one transaction (unindexed and
// unlogged, indexed after), follows the stream with a projector worker of
// its own until the version is within SwitchLag of the log head, and makes
// it live in one transaction that applies the rest (store.Rebuilder's
// SwitchVersion). Then it drops the old version's tables.
//
// A rebuild that dies leaves the live version untouched. Run again, it
// resumes a version whose load finished and abandons (drops) one whose
// load did not; a version switched but not yet dropped is dropped.
func Rebuild(ctx context.Context, db store.DB, js JetStream, cfg RebuildConfig) (RebuildResult, error) {
	cfg.setDefaults()
	rb, ok := db.(store.Rebuilder)
	if !ok {
		return RebuildResult{}, ErrRebuildUnsupported
	}
	parts, err := db.Partitions(ctx)
	if err != nil {
		return RebuildResult{}, err
	}
	release, lost, err := db.TryLock(ctx, "rebuild-"+cfg.Projection)
	if errors.Is(err, store.ErrLockHeld) {
		return RebuildResult{}, fmt.Errorf("%w (%s)", ErrRebuildRunning, cfg.Projection)
	}
	if err != nil {
		return RebuildResult{}, err
	}
	defer release()
	// A rebuild that may no longer hold the lock stops: another one may
	// take the version over.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-lost:
			cancel()
		case <-ctx.Done():
		}
	}()
	r := &rebuild{db: db, rb: rb, js: js, cfg: cfg, parts: parts, log: cfg.Logger.Named("rebuild").With(zap.String("projection", cfg.Projection))}
	v, err := r.start(ctx)
	if err != nil {
		return r.res, err
	}
	r.res.Version = v.Version
	vdb, err := rb.VersionDB(ctx, v)
	if err != nil {
		return r.res, err
	}
	defer vdb.Close()
	if !v.Loaded {
		if v.LoadedTo, err = r.load(ctx, vdb, v); err != nil {
			return r.res, err
		}
		if cfg.afterLoad != nil {
			if err := cfg.afterLoad(); err != nil {
				return r.res, err
			}
		}
	}
	r.res.LoadedTo = v.LoadedTo
	if err := r.follow(ctx, vdb, v); err != nil {
		return r.res, err
	}
	return r.res, r.switchOver(ctx, v)
}

// rebuild is one Rebuild's state.
type rebuild struct {
	db    store.DB
	rb    store.Rebuilder
	js    JetStream
	cfg   RebuildConfig
	parts int
	log   *zap.Logger
	res   RebuildResult
}

// start drops what an earlier rebuild left behind (retired tables, a
// version whose load did not finish) and returns the version to build: a
// loaded one to resume, or a new one.
func (r *rebuild) start(ctx context.Context) (store.ProjectionVersion, error) {
	vs, err := r.rb.ProjectionVersions(ctx)
	if err != nil {
		return store.ProjectionVersion{}, err
	}
	for _, v := range vs {
		if v.Projection != r.cfg.Projection {
			continue
		}
		switch {
		case v.State == store.VersionRetired:
			r.log.Info("dropping a retired version an earlier rebuild left", zap.Int("version", v.Version))
			if err := r.rb.DropVersion(ctx, v); err != nil {
				return v, err
			}
		case v.State == store.VersionBuilding && v.Loaded:
			r.log.Info("resuming the rebuild of a loaded version", zap.Int("version", v.Version), zap.Int64("loaded_to", v.LoadedTo))
			r.res.Resumed = true
			return v, nil
		case v.State == store.VersionBuilding:
			r.log.Info("abandoning a version whose load did not finish", zap.Int("version", v.Version))
			if err := r.rb.DropVersion(ctx, v); err != nil {
				return v, err
			}
		}
	}
	v, err := r.rb.BeginVersion(ctx, r.cfg.Projection)
	if err == nil {
		r.log.Info("building a new version", zap.Int("version", v.Version), zap.String("schema", v.Schema))
	}
	return v, err
}

// load replays the log into the new version's empty tables in one
// transaction and records it loaded.
func (r *rebuild) load(ctx context.Context, vdb store.DB, v store.ProjectionVersion) (int64, error) {
	started := time.Now()
	applied, err := store.Replay(ctx, vdb, r.cfg.Views, store.ReplayOptions{
		Reset: true, Projection: v.Checkpoints(), Partitions: r.parts,
		Progress: func(applied, target int64) {
			r.cfg.Progress(RebuildProgress{Version: v.Version, Phase: PhaseLoad, Applied: applied, Target: target})
		},
	})
	if err != nil {
		return 0, fmt.Errorf("projector: loading version %d: %w", v.Version, err)
	}
	if err := r.rb.FinishLoad(ctx, v, applied); err != nil {
		return 0, err
	}
	r.log.Info("version loaded", zap.Int("version", v.Version), zap.Int64("sequence", applied), zap.Duration("took", time.Since(started)))
	return applied, nil
}

// follow runs a projector worker on the new version until it is within
// SwitchLag of the log head, or of the live version when that is further
// behind (the relay is down: neither can follow the stream, and the switch
// applies the rest from the log).
func (r *rebuild) follow(ctx context.Context, vdb store.DB, v store.ProjectionVersion) error {
	w, err := New(vdb, r.js, Config{Projection: v.Checkpoints(), Stream: r.cfg.Stream, Views: r.cfg.Views,
		Logger: r.cfg.Logger, WorkerID: fmt.Sprintf("rebuild-%s-v%d", r.cfg.Projection, v.Version)})
	if err != nil {
		return err
	}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	var wg conc.WaitGroup
	wg.Go(func() { done <- w.Run(wctx) })
	defer func() { stop(); wg.Wait() }()
	tick := time.NewTicker(r.cfg.Poll)
	defer tick.Stop()
	for {
		applied, head, live, err := r.position(ctx, v)
		if err != nil {
			return err
		}
		r.cfg.Progress(RebuildProgress{Version: v.Version, Phase: PhaseFollow, Applied: applied, Target: head})
		if min(head, live)-applied <= r.cfg.SwitchLag {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-done:
			return fmt.Errorf("projector: following the stream: the worker stopped: %w", err)
		case <-tick.C:
		}
	}
}

// position returns the lowest checkpoint of version v, the log head and
// the live version's lowest checkpoint.
func (r *rebuild) position(ctx context.Context, v store.ProjectionVersion) (applied, head, live int64, err error) {
	if head, err = r.db.Head(ctx); err != nil {
		return 0, 0, 0, err
	}
	cps, err := r.db.Checkpoints(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	lowest := func(name string) int64 {
		var seqs []int64
		for _, c := range cps {
			if c.Projection == name {
				seqs = append(seqs, c.Sequence)
			}
		}
		if len(seqs) == 0 {
			return 0
		}
		return slices.Min(seqs)
	}
	return lowest(v.Checkpoints()), head, lowest(r.cfg.Projection), nil
}

// switchOver makes v live, trying again (with pauses, up to 10 times) a
// switch that timed out on a lock, and drops the retired version.
func (r *rebuild) switchOver(ctx context.Context, v store.ProjectionVersion) error {
	var at int64
	opts := store.SwitchOptions{Partitions: r.parts, LockTimeout: r.cfg.LockTimeout, TableLockTimeout: r.cfg.TableLockTimeout,
		CatchUp: func(ctx context.Context, tx store.Tx) (int64, error) {
			var err error
			at, err = store.ReplayTx(ctx, r.db, tx, r.cfg.Views, store.ReplayOptions{Projection: v.Checkpoints(),
				Partitions: r.parts, PartitionOf: Partitioner(r.parts)})
			return at, err
		}}
	var retired store.ProjectionVersion
	var last error
	bo := retry.WithMaxRetries(10, backoff.WithNotify(func(d time.Duration) {
		r.log.Warn("switch failed; trying again", zap.Duration("backoff", d), zap.Error(last))
	}, switchRetry.Backoff()))
	err := retry.Do(ctx, bo, func(ctx context.Context) error {
		_, head, _, err := r.position(ctx, v)
		if err != nil {
			return err
		}
		r.cfg.Progress(RebuildProgress{Version: v.Version, Phase: PhaseSwitch, Applied: head, Target: head})
		if retired, last = r.rb.SwitchVersion(ctx, v, opts); errors.Is(last, store.ErrOutcomeUnknown) {
			// The answer was lost: the catalog says whether it committed.
			sw, done, err := r.switched(ctx, v)
			if err != nil {
				return err
			} else if done {
				retired, last = sw, nil
			}
		}
		if store.Temporary(last) {
			return retry.RetryableError(last)
		}
		return last
	})
	if errors.Is(err, store.ErrVersionObsolete) {
		r.log.Warn("abandoning a version that can never switch", zap.Int("version", v.Version), zap.Error(err))
		if derr := r.rb.DropVersion(ctx, v); derr != nil {
			return fmt.Errorf("projector: abandoning version %d: %w (after %w)", v.Version, derr, err)
		}
		return fmt.Errorf("projector: version %d abandoned: %w", v.Version, err)
	}
	if err != nil {
		return fmt.Errorf("projector: switching to version %d: %w", v.Version, err)
	}
	r.res.Retired, r.res.SwitchedAt = retired.Version, at
	r.log.Info("version live", zap.Int("version", v.Version), zap.Int("retired", retired.Version), zap.Int64("sequence", r.res.SwitchedAt))
	return r.drop(ctx, v, retired)
}

// switchRetry is the pause before a switch that timed out on a lock is
// tried again.
var switchRetry = backoff.Policy{Min: 100 * time.Millisecond, Max: 5 * time.Second, JitterPercent: 20}

// drop drops the retired version's tables, trying again after temporary
// errors: the new version is live already, and a rebuild that failed here
// would leave them to the next rebuild.
func (r *rebuild) drop(ctx context.Context, v, retired store.ProjectionVersion) error {
	var last error
	bo := retry.WithMaxRetries(4, backoff.WithNotify(func(d time.Duration) {
		r.log.Warn("dropping the retired version failed; trying again", zap.Int("retired", retired.Version),
			zap.Duration("backoff", d), zap.Error(last))
	}, dropRetry.Backoff()))
	err := retry.Do(ctx, bo, func(ctx context.Context) error {
		if last = r.rb.DropVersion(ctx, retired); store.Temporary(last) {
			return retry.RetryableError(last)
		}
		return last
	})
	if err != nil {
		return fmt.Errorf("projector: version %d is live, but dropping version %d failed (the next rebuild drops it first): %w",
			v.Version, retired.Version, err)
	}
	return nil
}

// dropRetry is the pause before dropping a retired version is tried again.
var dropRetry = backoff.Policy{Min: 100 * time.Millisecond, Max: 2 * time.Second}

// switched reports whether v is live in the catalog, and returns the
// version it retired.
func (r *rebuild) switched(ctx context.Context, v store.ProjectionVersion) (store.ProjectionVersion, bool, error) {
	vs, err := r.rb.ProjectionVersions(ctx)
	if err != nil {
		return store.ProjectionVersion{}, false, err
	}
	var retired store.ProjectionVersion
	live := false
	for _, c := range vs {
		switch {
		case c.Projection != v.Projection:
		case c.Version == v.Version:
			live = c.State == store.VersionLive
		case c.State == store.VersionRetired:
			retired = c
		}
	}
	return retired, live, nil
}
