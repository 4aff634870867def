package projection

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// JetStream is what a Runner needs from a JetStream context;
// jetstream.JetStream implements it.
type JetStream interface {
	Stream(ctx context.Context, name string) (jetstream.Stream, error)
	OrderedConsumer(ctx context.Context, stream string, cfg jetstream.OrderedConsumerConfig) (jetstream.Consumer, error)
}

var _ JetStream = jetstream.JetStream(nil)

// Runner is one instance of a projection: it registers as a member in the
// projection's database, leases its share of the partitions and applies
// their events from the stream. Any number of instances may run against one
// database; they share the partitions.
type Runner struct {
	pool *pgxpool.Pool
	js   JetStream
	p    Projection
	cfg  Config
	log  *zap.Logger
	m    *metrics
	// id is the projection's identity, set by setup.
	id identity
	// leases is the connection of lease renewals.
	leases leaseConn
	// validUntil is when this instance's leases may expire (sinceEpoch).
	validUntil atomic.Int64
	// slots bounds the partitions applying a batch at once.
	slots chan struct{}
	// progress is when the ownership loop last went round (Unix ns).
	progress atomic.Int64
}

// New returns an instance of projection p on pool (the team's database;
// its search_path names the schema of the projection's tables) reading js.
// It checks p and cfg (errors wrap ErrConfig) and registers the metrics
// with cfg.Registerer.
func New(pool *pgxpool.Pool, js JetStream, p Projection, cfg Config) (*Runner, error) {
	if pool == nil || js == nil {
		return nil, fmt.Errorf("%w: nil pool or JetStream", ErrConfig)
	}
	if err := p.validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("projection: registering metrics: %w", err)
	}
	return &Runner{
		pool:  pool,
		js:    js,
		p:     p,
		cfg:   cfg,
		log:   cfg.Logger.Named("projection").With(zap.String("projection", p.Name), zap.String("worker", cfg.WorkerID)),
		m:     m,
		slots: make(chan struct{}, cfg.Concurrency),
	}, nil
}

// ID returns the instance's worker id.
func (r *Runner) ID() string { return r.cfg.WorkerID }

// Healthy reports whether the instance's last lease renewal succeeded less
// than LeaseTTL ago (also when others hold every partition): false before
// the first renewal and while it cannot reach its database.
func (r *Runner) Healthy() bool { return r.leaseValid() }

// LastProgress returns when the ownership loop last went round (every
// LeaseTTL/4, failed renewals included; zero before Run).
func (r *Runner) LastProgress() time.Time {
	if n := r.progress.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Run applies the projection until ctx ends. It first migrates (the
// runtime's tables and the projection's migrations), waits for the stream,
// and checks the projection's identity: the log id and partition count
// recorded at its first start against Config, the stream's events and the
// log source (ErrForeignLog, ErrPartitionsChanged, ErrPartitionsUnknown,
// ErrMigrationChanged). Then it leases its share of the partitions and
// follows them. When ctx ends it finishes the transactions in flight within
// ShutdownTimeout, gives its leases back and returns nil. A NATS
// connection closed for good ends it with an error.
func (r *Runner) Run(ctx context.Context) error {
	if err := r.setup(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	r.log.Info("projection started", zap.String("log_id", r.id.logID), zap.Int("partitions", r.id.parts),
		zap.String("stream", r.cfg.Stream), zap.Bool("log_source", r.cfg.Log != nil))
	defer r.leases.close()
	return r.own(ctx)
}

// setup migrates, establishes the identity and creates the checkpoints.
func (r *Runner) setup(ctx context.Context) error {
	if _, err := Migrate(ctx, r.pool, r.p); err != nil {
		return err
	}
	id, err := r.identify(ctx)
	if err != nil {
		return err
	}
	r.id = id
	var beyond int
	// Only missing rows are inserted: an insert that conflicted with a row
	// another instance's batch holds would wait for that batch.
	err = r.pool.QueryRow(ctx, `WITH made AS (INSERT INTO projection_checkpoints (projection, partition, sequence)
			SELECT $1, p, 0 FROM generate_series(0, $2 - 1) AS p
			WHERE NOT EXISTS (SELECT 1 FROM projection_checkpoints c WHERE c.projection = $1 AND c.partition = p)
			ON CONFLICT DO NOTHING)
		SELECT count(*) FROM projection_checkpoints WHERE projection = $1 AND partition >= $2`, r.p.Name, id.parts).Scan(&beyond)
	if err != nil {
		return fmt.Errorf("projection: creating checkpoints: %w", err)
	}
	if beyond > 0 {
		return fmt.Errorf("%w: %s has checkpoints of partitions beyond its %d", ErrPartitionsChanged, r.p.Name, id.parts)
	}
	return nil
}
