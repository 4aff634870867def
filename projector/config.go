package projector

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"regexp"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

// Defaults of Config.
const (
	DefaultProjection      = "registry"
	DefaultStream          = wire.StreamName
	DefaultBatchSize       = 500
	DefaultConcurrency     = 4
	DefaultLeaseTTL        = 2 * time.Second
	DefaultIdleWait        = time.Second
	DefaultMaxAttempts     = 5
	DefaultParkRetry       = time.Minute
	DefaultShutdownTimeout = 10 * time.Second
)

// Config configures a Worker. Zero values take the defaults above.
type Config struct {
	// Projection names the checkpoints and leases ("registry").
	Projection string
	// Partitions, when set, must equal the log's partition count (the
	// count recorded when the log was first migrated); Run refuses to start
	// otherwise. Zero takes the log's.
	Partitions int
	// Stream is the events stream (ARTIFACTSTORE_EVENTS).
	Stream string
	// WorkerID identifies this worker (hostname-pid-random); letters,
	// digits, '-', '_' only.
	WorkerID string
	// BatchSize caps the events applied per transaction (500).
	BatchSize int
	// Concurrency is how many partitions may apply a batch at once (4):
	// the others wait, and take everything that arrived meanwhile in one
	// transaction. Keep it at most the database pool's size.
	Concurrency int
	// LeaseTTL is how long a partition lease and a member row last without
	// renewal (2s): a dead or cut-off worker's partitions move after at
	// most that long. Workers renew every LeaseTTL/4.
	LeaseTTL time.Duration
	// IdleWait is how long a partition waits for a message before it
	// checks the log to move its checkpoint up to the head (1s).
	IdleWait time.Duration
	// MaxAttempts is how many times an event's handler may fail in a row
	// before its partition parks (5).
	MaxAttempts int
	// ParkRetry is how long a parked partition waits before trying its
	// event again (1m).
	ParkRetry time.Duration
	// ShutdownTimeout bounds the work finished after Run's context ends (10s).
	ShutdownTimeout time.Duration
	// Logger receives the worker's logs (no-op when nil).
	Logger *zap.Logger
	// Registerer registers the worker's metrics (none when nil).
	Registerer prometheus.Registerer
	// Views applies events (store.RegistryViews{} when nil).
	Views store.ViewWriter

	hooks hooks
}

// hooks let tests stop or pause a worker at exact points.
type hooks struct {
	// beforeTx runs before a batch transaction begins; it may block.
	beforeTx func(partition int)
	// beforeCommit runs before a batch transaction commits; it may block.
	beforeCommit func(partition int)
	// afterCommit runs after a batch committed; a non-nil error makes the
	// worker stop there as if killed.
	afterCommit func(partition int, last int64) error
	// beforeHeartbeat runs before each heartbeat; it may block.
	beforeHeartbeat func()
}

var idRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// heartbeatInterval is how often a worker renews its member row and leases.
func (c *Config) heartbeatInterval() time.Duration { return c.LeaseTTL / 4 }

func (c *Config) setDefaults() {
	if c.Projection == "" {
		c.Projection = DefaultProjection
	}
	if c.Stream == "" {
		c.Stream = DefaultStream
	}
	if c.WorkerID == "" {
		host, _ := os.Hostname()
		b := make([]byte, 3)
		_, _ = rand.Read(b)
		c.WorkerID = regexp.MustCompile(`[^A-Za-z0-9_-]`).ReplaceAllString(fmt.Sprintf("%.30s-%d-%s", host, os.Getpid(), hex.EncodeToString(b)), "_")
	}
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.LeaseTTL, DefaultLeaseTTL)
	def(&c.IdleWait, DefaultIdleWait)
	def(&c.ParkRetry, DefaultParkRetry)
	def(&c.ShutdownTimeout, DefaultShutdownTimeout)
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Views == nil {
		c.Views = store.RegistryViews{}
	}
}

func (c *Config) validate() error {
	bad := func(field, why string) error { return fmt.Errorf("%w: %s %s", ErrConfig, field, why) }
	switch {
	case !store.ValidToken(c.Projection) || !idRe.MatchString(c.Projection):
		return bad("Projection", "must be 1-64 letters, digits, '-' or '_'")
	case c.Partitions < 0 || c.Partitions > wire.MaxPartitions:
		return bad("Partitions", fmt.Sprintf("must be 0 (the log's) or 1..%d", wire.MaxPartitions))
	case !idRe.MatchString(c.Stream):
		return bad("Stream", "must be a stream name (letters, digits, '-', '_')")
	case !idRe.MatchString(c.WorkerID):
		return bad("WorkerID", "must be 1-64 letters, digits, '-' or '_'")
	case c.BatchSize < 1 || c.BatchSize > 10000:
		return bad("BatchSize", "must be 1..10000")
	case c.Concurrency < 1 || c.Concurrency > 1024:
		return bad("Concurrency", "must be 1..1024")
	case c.LeaseTTL < 200*time.Millisecond:
		return bad("LeaseTTL", "must be at least 200ms")
	case c.IdleWait < 10*time.Millisecond:
		return bad("IdleWait", "must be at least 10ms")
	case c.MaxAttempts < 1:
		return bad("MaxAttempts", "must be at least 1")
	case c.ParkRetry <= 0 || c.ShutdownTimeout <= 0:
		return bad("ParkRetry/ShutdownTimeout", "must be positive")
	}
	return nil
}
