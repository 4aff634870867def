package projector

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/sethvargo/go-retry"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/internal/backoff"
	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

// JetStream is what the projector needs from a JetStream context;
// jetstream.JetStream implements it.
type JetStream interface {
	Stream(ctx context.Context, name string) (jetstream.Stream, error)
	OrderedConsumer(ctx context.Context, stream string, cfg jetstream.OrderedConsumerConfig) (jetstream.Consumer, error)
}

var _ JetStream = jetstream.JetStream(nil)

// Worker is one projector process's share of a projection: it registers as
// a member, leases the partitions assigned to it and applies their events.
type Worker struct {
	db    store.DB
	js    JetStream
	cfg   Config
	log   *zap.Logger
	m     *metrics
	logID string
	// parts is the log's partition count, read at Run.
	parts int
	// validUntil is when this worker's leases may expire (sinceEpoch).
	validUntil atomic.Int64
	// slots bounds the partitions applying a batch at once.
	slots chan struct{}
	// progress is when the ownership loop last went round (Unix ns).
	progress atomic.Int64
}

// New returns a worker for db and js. It checks cfg (errors wrap
// ErrConfig) and registers the metrics with cfg.Registerer.
func New(db store.DB, js JetStream, cfg Config) (*Worker, error) {
	if db == nil || js == nil {
		return nil, fmt.Errorf("%w: nil database or JetStream", ErrConfig)
	}
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("projector: registering metrics: %w", err)
	}
	return &Worker{
		db:    db,
		js:    js,
		cfg:   cfg,
		log:   cfg.Logger.Named("projector").With(zap.String("projection", cfg.Projection), zap.String("worker", cfg.WorkerID)),
		m:     m,
		slots: make(chan struct{}, cfg.Concurrency),
	}, nil
}

// ID returns the worker id.
func (w *Worker) ID() string { return w.cfg.WorkerID }

// Healthy reports whether the worker's last lease renewal succeeded less
// than LeaseTTL ago (also when it holds no lease because others hold every
// partition): false before its first renewal and while it cannot reach
// PostgreSQL.
func (w *Worker) Healthy() bool { return w.leaseValid() }

// LastProgress returns when the worker's ownership loop last went round
// (every LeaseTTL/4, renewal failures included; zero before Run). A worker
// whose LastProgress stops moving is stuck.
func (w *Worker) LastProgress() time.Time {
	if n := w.progress.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Run registers the worker, leases its share of the partitions and applies
// their events until ctx ends. It first checks its dependencies: the
// database (log id, the log's partition count against Config.Partitions
// and the checkpoints, else ErrPartitionsChanged) and the stream, which it
// waits for. When ctx ends it finishes the batches in flight within
// ShutdownTimeout, gives its leases back and returns nil.
func (w *Worker) Run(ctx context.Context) error {
	if err := w.setup(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	w.log.Info("projector started", zap.Int("partitions", w.parts), zap.String("stream", w.cfg.Stream))
	return w.own(ctx)
}

// setup reads the log's identity and partition count, creates the
// checkpoints and waits for the stream.
func (w *Worker) setup(ctx context.Context) error {
	logID, err := w.db.LogID(ctx)
	if err != nil {
		return fmt.Errorf("projector: reading log id: %w", err)
	}
	w.logID = logID
	if w.parts, err = w.db.Partitions(ctx); err != nil {
		return fmt.Errorf("projector: reading the log's partition count: %w", err)
	}
	if w.cfg.Partitions != 0 && w.cfg.Partitions != w.parts {
		return fmt.Errorf("%w: configured %d, the log has %d (recorded when it was first migrated; leave the partition count unset to take the log's)",
			ErrPartitionsChanged, w.cfg.Partitions, w.parts)
	}
	if err := w.initCheckpoints(ctx); err != nil {
		return err
	}
	bo := backoff.WithNotify(func(time.Duration) {
		w.log.Info("waiting for the events stream", zap.String("stream", w.cfg.Stream))
	}, streamWait.Backoff())
	return retry.Do(ctx, bo, func(ctx context.Context) error {
		_, err := w.js.Stream(ctx, w.cfg.Stream)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return retry.RetryableError(err)
		} else if err != nil {
			return fmt.Errorf("projector: stream %s: %w", w.cfg.Stream, err)
		}
		return nil
	})
}

// streamWait is how often setup looks for a stream that does not exist yet.
var streamWait = backoff.Policy{Min: 100 * time.Millisecond, Max: 5 * time.Second}

// initCheckpoints creates a checkpoint row for every partition of the log.
// Checkpoints of another partition count (a projection written before the
// count was recorded with the log) are taken over only when they all hold
// the same sequence — right after replay --reset, or an unpartitioned
// replay — since a subject's partition depends on the count; otherwise
// Run returns ErrPartitionsChanged and replay --reset is the way out.
func (w *Worker) initCheckpoints(ctx context.Context) error {
	cps, err := w.db.Checkpoints(ctx)
	if err != nil {
		return fmt.Errorf("projector: reading checkpoints: %w", err)
	}
	have := map[int]int64{}
	uniform, common := true, int64(-1)
	for _, c := range cps {
		if c.Projection != w.cfg.Projection {
			continue
		}
		have[c.Partition] = c.Sequence
		uniform = uniform && (common < 0 || c.Sequence == common)
		common = c.Sequence
	}
	same := len(have) == w.parts
	for p := range have {
		same = same && p < w.parts
	}
	if len(have) > 0 && !same && !uniform {
		return fmt.Errorf("%w: %s has %d partition checkpoints at different sequences, the log has %d partitions (stop its workers and run replay --reset)",
			ErrPartitionsChanged, w.cfg.Projection, len(have), w.parts)
	}
	err = w.db.InTx(ctx, func(tx store.Tx) error {
		if len(have) > 0 && !same {
			w.log.Info("checkpoints of another partition count; every partition starts from their common sequence",
				zap.Int("partitions", w.parts), zap.Int("previous", len(have)), zap.Int64("checkpoint", common))
			if err := tx.DeleteCheckpoints(ctx, w.cfg.Projection); err != nil {
				return err
			}
			clear(have)
		}
		for p := range w.parts {
			if _, ok := have[p]; ok {
				continue
			}
			if err := tx.AdvanceCheckpoint(ctx, w.cfg.Projection, p, 0, max(common, 0)); err != nil && !errors.Is(err, store.ErrCheckpointMoved) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("projector: creating checkpoints: %w", err)
	}
	return nil
}

// Partition returns the partition of subjectID among n (wire.Partition).
func Partition(subjectID string, n int) int { return wire.Partition(subjectID, n) }

// Partitioner returns the function store.ReplayOptions.PartitionOf needs
// for a log with n partitions.
func Partitioner(n int) func(store.Event) int {
	return func(e store.Event) int { return wire.Partition(e.SubjectID, n) }
}
