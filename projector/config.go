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

	"github.com/artifactstore/artifactstore/store"
)

// Defaults of Config.
const (
	DefaultProjection      = "registry"
	DefaultStream          = "ARTIFACTSTORE_EVENTS"
	DefaultMembersBucket   = "ARTIFACTSTORE_PROJECTORS"
	DefaultPartitions      = 8
	DefaultBatchSize       = 500
	DefaultAckWait         = 30 * time.Second
	DefaultPinnedTTL       = 10 * time.Second
	DefaultMemberTTL       = 10 * time.Second
	DefaultFetchWait       = time.Second
	DefaultMaxAttempts     = 5
	DefaultGapRetries      = 3
	DefaultParkRetry       = time.Minute
	DefaultShutdownTimeout = 10 * time.Second
)

// priorityGroup is the priority group every partition consumer pins in.
const priorityGroup = "projector"

// Config configures a Worker. Zero values take the defaults above.
type Config struct {
	// Projection names the checkpoints and consumers ("registry").
	Projection string
	// Partitions is the number of partitions (8). Every worker of a
	// projection must use the same count; changing it needs replay --reset.
	Partitions int
	// Stream is the public events stream (ARTIFACTSTORE_EVENTS).
	Stream string
	// MembersBucket is the KV bucket workers register in
	// (ARTIFACTSTORE_PROJECTORS).
	MembersBucket string
	// WorkerID identifies this worker (hostname-pid-random); letters,
	// digits, '-', '_' only.
	WorkerID string
	// BatchSize caps the events applied per transaction (500).
	BatchSize int
	// AckWait is the partition consumers' ack wait (30s).
	AckWait time.Duration
	// PinnedTTL is how long a partition stays pinned to a worker that
	// stopped pulling (10s).
	PinnedTTL time.Duration
	// MemberTTL is how long a worker stays a member without a heartbeat
	// (10s); heartbeats go every MemberTTL/3, at most a second apart. It
	// is the members bucket's TTL when this worker creates the bucket; an
	// existing bucket keeps its own, so give every worker the same value.
	MemberTTL time.Duration
	// FetchWait is the longest a pull request waits for messages (1s).
	FetchWait time.Duration
	// MaxAttempts is how many times an event's handler may fail in a row
	// before its partition parks (5).
	MaxAttempts int
	// GapRetries is how many times a partition refetches after seeing a gap
	// before it parks (3).
	GapRetries int
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
	// afterCommit runs after a batch committed, before its acks; a non-nil
	// error makes the worker stop there as if killed.
	afterCommit func(partition int, last int64) error
	// beforeHeartbeat runs before each membership heartbeat; it may block.
	beforeHeartbeat func()
}

var workerIDRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// heartbeatInterval is how often a worker beats and reads the members:
// MemberTTL/3, but at least every second, because a partition that moves
// is unowned from the moment its old owner sees the new membership until
// the new owner sees it too.
func (c *Config) heartbeatInterval() time.Duration { return min(c.MemberTTL/3, time.Second) }

func (c *Config) setDefaults() {
	if c.Projection == "" {
		c.Projection = DefaultProjection
	}
	if c.Partitions == 0 {
		c.Partitions = DefaultPartitions
	}
	if c.Stream == "" {
		c.Stream = DefaultStream
	}
	if c.MembersBucket == "" {
		c.MembersBucket = DefaultMembersBucket
	}
	if c.WorkerID == "" {
		host, _ := os.Hostname()
		b := make([]byte, 3)
		_, _ = rand.Read(b)
		c.WorkerID = regexp.MustCompile(`[^A-Za-z0-9_-]`).ReplaceAllString(fmt.Sprintf("%.30s-%d-%s", host, os.Getpid(), hex.EncodeToString(b)), "_")
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.AckWait == 0 {
		c.AckWait = DefaultAckWait
	}
	if c.PinnedTTL == 0 {
		c.PinnedTTL = DefaultPinnedTTL
	}
	if c.MemberTTL == 0 {
		c.MemberTTL = DefaultMemberTTL
	}
	if c.FetchWait == 0 {
		c.FetchWait = DefaultFetchWait
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.GapRetries == 0 {
		c.GapRetries = DefaultGapRetries
	}
	if c.ParkRetry == 0 {
		c.ParkRetry = DefaultParkRetry
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
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
	case !store.ValidToken(c.Projection) || !workerIDRe.MatchString(c.Projection):
		return bad("Projection", "must be 1-64 letters, digits, '-' or '_'")
	case c.Partitions < 1 || c.Partitions > 1024:
		return bad("Partitions", "must be 1..1024")
	case !workerIDRe.MatchString(c.Stream):
		return bad("Stream", "must be a stream name (letters, digits, '-', '_')")
	case !workerIDRe.MatchString(c.MembersBucket):
		return bad("MembersBucket", "must be a bucket name (letters, digits, '-', '_')")
	case !workerIDRe.MatchString(c.WorkerID):
		return bad("WorkerID", "must be 1-64 letters, digits, '-' or '_'")
	case c.BatchSize < 1 || c.BatchSize > 10000:
		return bad("BatchSize", "must be 1..10000")
	case c.AckWait < 100*time.Millisecond:
		return bad("AckWait", "must be at least 100ms")
	case c.PinnedTTL < 100*time.Millisecond || c.PinnedTTL <= c.FetchWait:
		return bad("PinnedTTL", "must be at least 100ms and longer than FetchWait (a pull at most every FetchWait keeps the pin)")
	case c.MemberTTL < 300*time.Millisecond:
		return bad("MemberTTL", "must be at least 300ms")
	case c.FetchWait < 10*time.Millisecond:
		return bad("FetchWait", "must be at least 10ms")
	case c.MaxAttempts < 1:
		return bad("MaxAttempts", "must be at least 1")
	case c.GapRetries < 0:
		return bad("GapRetries", "must not be negative")
	case c.ParkRetry <= 0 || c.ShutdownTimeout <= 0:
		return bad("ParkRetry/ShutdownTimeout", "must be positive")
	}
	return nil
}
