package projection

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
	DefaultStream          = wire.StreamName
	DefaultBatchSize       = 500
	DefaultConcurrency     = 4
	DefaultLeaseTTL        = 2 * time.Second
	DefaultIdleWait        = time.Second
	DefaultMaxAttempts     = 5
	DefaultParkRetry       = time.Minute
	DefaultShutdownTimeout = 10 * time.Second
)

// Config configures a Runner. Zero values take the defaults above.
type Config struct {
	// Stream is the events stream (ARTIFACTSTORE_EVENTS).
	Stream string
	// LogID, when set, is the log the projection must be built from
	// (artifactstore status shows it). Unset, the first start records the
	// log id of the stream's events. Either way a later start refuses a
	// stream of another log (ErrForeignLog).
	LogID string
	// Partitions, when set, is the log's partition count P (artifactstore
	// status shows it). Unset, the first start learns it from the stream's
	// messages, or returns ErrPartitionsUnknown when they do not tell it
	// unambiguously. It is recorded at the first start; a later start with
	// another count returns ErrPartitionsChanged.
	Partitions int
	// WorkerID identifies this instance (hostname-pid-random); letters,
	// digits, '-', '_' only.
	WorkerID string
	// BatchSize caps the events applied per transaction (500).
	BatchSize int
	// Concurrency is how many partitions may apply a batch at once (4).
	// Keep it below the pool's size: leases use a connection of their own.
	Concurrency int
	// LeaseTTL is how long a partition lease and a member row last without
	// renewal (2s): a dead instance's partitions move to the others after
	// at most that long. Instances renew every LeaseTTL/4.
	LeaseTTL time.Duration
	// IdleWait is how long a partition waits for a message before it
	// reports itself idle (and clears a parked record whose message is no
	// longer in the stream) (1s).
	IdleWait time.Duration
	// MaxAttempts is how many times an event's handler may fail in a row
	// before its partition parks (5).
	MaxAttempts int
	// ParkRetry is how long a parked partition waits before trying its
	// event again (1m).
	ParkRetry time.Duration
	// ShutdownTimeout bounds the work finished after Run's context ends:
	// the transaction in flight, giving the leases back (10s).
	ShutdownTimeout time.Duration
	// Log, when set, is the artifactstore log itself (possible only where
	// the projection's database is the log's): events the stream lacks are
	// then applied from it instead of parking the partition with reason
	// gap. Its log id and partition count must be the projection's.
	Log store.DB
	// Logger receives the runner's logs (no-op when nil).
	Logger *zap.Logger
	// Registerer registers the runner's metrics (none when nil).
	Registerer prometheus.Registerer

	hooks hooks
}

// hooks let tests stop or pause an instance at exact points.
type hooks struct {
	// beforeCommit runs before a batch transaction commits; a non-nil
	// error makes the instance stop there as if killed (the transaction is
	// not committed).
	beforeCommit func(partition int) error
	// afterCommit runs after a batch committed; a non-nil error makes the
	// instance stop there as if killed.
	afterCommit func(partition int, last int64) error
}

var idRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

func (c *Config) setDefaults() {
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
}

func (c *Config) validate() error {
	bad := func(field, why string) error { return fmt.Errorf("%w: Config.%s %s", ErrConfig, field, why) }
	switch {
	case !idRe.MatchString(c.Stream):
		return bad("Stream", "must be a stream name (letters, digits, '-', '_')")
	case c.LogID != "" && !store.ValidToken(c.LogID):
		return bad("LogID", "must be a log id (one subject token)")
	case c.Partitions < 0 || c.Partitions > wire.MaxPartitions:
		return bad("Partitions", fmt.Sprintf("must be 0 (learn it) or 1..%d", wire.MaxPartitions))
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
	case c.ParkRetry <= 0:
		return bad("ParkRetry", "must be positive")
	case c.ShutdownTimeout <= 0:
		return bad("ShutdownTimeout", "must be positive")
	}
	return nil
}

// heartbeatInterval is how often an instance renews its member row and leases.
func (c *Config) heartbeatInterval() time.Duration { return c.LeaseTTL / 4 }
