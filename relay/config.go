package relay

import (
	"crypto/ed25519"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/internal/wire"
)

// Defaults of Config; a zero field takes its default.
const (
	// DefaultStream is the public events stream.
	DefaultStream = "ARTIFACTSTORE_EVENTS"
	// DefaultReplicas is the stream's replica count.
	DefaultReplicas = 1
	// DefaultDuplicateWindow is the stream's Nats-Msg-Id de-duplication
	// window (JetStream's own default).
	DefaultDuplicateWindow = 2 * time.Minute
	// DefaultMaxInFlight bounds unacknowledged publishes.
	DefaultMaxInFlight = 512
	// DefaultBatchSize is how many events one read of the log returns.
	DefaultBatchSize = 1000
	// DefaultPollInterval is how often the log is read when no append
	// signal arrives.
	DefaultPollInterval = time.Second
	// DefaultAckTimeout is how long a publish may wait for its ack.
	DefaultAckTimeout = 5 * time.Second
	// DefaultLockRetryInterval is how often a standby tries the leader lock.
	DefaultLockRetryInterval = time.Second
	// DefaultRetryMin and DefaultRetryMax bound the backoff after errors.
	DefaultRetryMin = 100 * time.Millisecond
	DefaultRetryMax = 5 * time.Second
	// DefaultShutdownTimeout bounds waiting for in-flight acks at shutdown.
	DefaultShutdownTimeout = 5 * time.Second
	// MaxPublishBatch is the largest atomic batch: nats-server's default
	// limit (JetStream max_batch_size; larger batches are rejected).
	MaxPublishBatch = 1000
	// MaxBatchesInFlight bounds the atomic batches awaiting their commit
	// ack (the server allows 50 per stream, abandoned ones included).
	MaxBatchesInFlight = 4
	// DefaultCheckpointInterval is how often the active relay signs a
	// checkpoint of its position when it has moved (Config.CheckpointKey).
	DefaultCheckpointInterval = time.Minute
	// CheckpointHistory is how many checkpoints per log the bucket keeps.
	CheckpointHistory = 64
)

// Subjects is the stream's subject filter; every event subject is below it.
const Subjects = wire.Subjects

// Config configures a Relay and the stream it writes.
type Config struct {
	// Stream is the JetStream stream name (DefaultStream).
	Stream string
	// Replicas is the stream's replica count, used when creating it and
	// checked against an existing stream (DefaultReplicas).
	Replicas int
	// DuplicateWindow is the stream's de-duplication window, used when
	// creating it and checked against an existing stream
	// (DefaultDuplicateWindow). Exactly-once does not depend on it.
	DuplicateWindow time.Duration
	// MaxInFlight bounds published but unacknowledged messages
	// (DefaultMaxInFlight; MaxBatchesInFlight×PublishBatch when batching).
	// Keep it at or below the JetStream context's PublishAsyncMaxPending
	// (4000 by default) unless batching.
	MaxInFlight int
	// BatchSize is how many events one read of the log returns
	// (DefaultBatchSize).
	BatchSize int
	// PublishBatch, when 2..MaxPublishBatch, publishes the events in
	// JetStream atomic batches of up to PublishBatch events (never more
	// than one read of the log, BatchSize), with MaxInFlight/PublishBatch
	// batches in flight (at least 1, at most MaxBatchesInFlight). A server
	// with sync_interval: always then syncs once per batch instead of once
	// per event. 0 (the default) publishes each event asynchronously.
	// Streams the relay creates then allow atomic publishing; on an
	// existing stream that does not, the relay publishes per event and
	// logs a warning naming the fix.
	PublishBatch int
	// PollInterval is how often the log is read when no append signal
	// arrives (DefaultPollInterval).
	PollInterval time.Duration
	// AckTimeout is how long a publish waits for its ack before the relay
	// re-reads the stream (DefaultAckTimeout).
	AckTimeout time.Duration
	// LockRetryInterval is how often a standby relay tries to become the
	// active one (DefaultLockRetryInterval).
	LockRetryInterval time.Duration
	// RetryMin and RetryMax bound the exponential backoff after errors
	// (NATS or the database down) (DefaultRetryMin, DefaultRetryMax).
	RetryMin, RetryMax time.Duration
	// ShutdownTimeout bounds how long Run waits for in-flight acks after its
	// context is cancelled (DefaultShutdownTimeout).
	ShutdownTimeout time.Duration
	// AllowStreamDeletes makes the relay create the stream without
	// DenyDelete and DenyPurge and accept an existing stream that allows
	// deleting or purging messages. By default it creates the stream with
	// both denied and refuses one that allows either: anyone with
	// JetStream API rights on the stream could otherwise remove history
	// that downstream consumers rely on.
	AllowStreamDeletes bool
	// CheckpointKey, when set, makes the active relay sign a checkpoint of
	// its position — log id, sequence and chain digest of the last event
	// it knows to be in the stream (wire.Checkpoint) — every
	// CheckpointInterval when it has moved, and put it in the key-value
	// bucket wire.CheckpointBucket (created with the stream's replicas
	// when missing) under the log id. The JetStream given to New must then
	// also implement KeyValueManager.
	CheckpointKey ed25519.PrivateKey
	// CheckpointInterval is how often checkpoints are signed
	// (DefaultCheckpointInterval).
	CheckpointInterval time.Duration
	// Logger receives the relay's logs (a no-op logger when nil).
	Logger *zap.Logger
	// Registerer, when set, gets the relay's metrics registered.
	Registerer prometheus.Registerer
}

func (c Config) withDefaults() Config {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	defInt := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	if c.Stream == "" {
		c.Stream = DefaultStream
	}
	defInt(&c.Replicas, DefaultReplicas)
	if c.PublishBatch > 0 {
		defInt(&c.MaxInFlight, MaxBatchesInFlight*c.PublishBatch)
	}
	defInt(&c.MaxInFlight, DefaultMaxInFlight)
	defInt(&c.BatchSize, DefaultBatchSize)
	def(&c.DuplicateWindow, DefaultDuplicateWindow)
	def(&c.PollInterval, DefaultPollInterval)
	def(&c.AckTimeout, DefaultAckTimeout)
	def(&c.LockRetryInterval, DefaultLockRetryInterval)
	def(&c.RetryMin, DefaultRetryMin)
	def(&c.RetryMax, DefaultRetryMax)
	def(&c.ShutdownTimeout, DefaultShutdownTimeout)
	def(&c.CheckpointInterval, DefaultCheckpointInterval)
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c
}

// validate checks a config with defaults applied and names the bad field.
func (c Config) validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("relay: Config.%s %s", field, fmt.Sprintf(format, args...))
	}
	switch {
	case !validStreamName(c.Stream):
		return bad("Stream", "%q is not a valid stream name (no spaces, '.', '*', '>', '/' or '\\')", c.Stream)
	case c.Replicas < 1 || c.Replicas > 5:
		return bad("Replicas", "must be 1..5, got %d", c.Replicas)
	case c.DuplicateWindow < 100*time.Millisecond:
		return bad("DuplicateWindow", "must be at least 100ms, got %s", c.DuplicateWindow)
	case c.MaxInFlight < 1 || c.MaxInFlight > 65536:
		return bad("MaxInFlight", "must be 1..65536, got %d", c.MaxInFlight)
	case c.BatchSize < 1 || c.BatchSize > 100000:
		return bad("BatchSize", "must be 1..100000, got %d", c.BatchSize)
	case c.PublishBatch < 0 || c.PublishBatch == 1 || c.PublishBatch > MaxPublishBatch:
		return bad("PublishBatch", "must be 0 (per-event publishing) or 2..%d, got %d", MaxPublishBatch, c.PublishBatch)
	case c.PublishBatch > c.BatchSize:
		return bad("PublishBatch", "must be at most BatchSize (%d; a batch never spans two reads of the log), got %d", c.BatchSize, c.PublishBatch)
	case c.PollInterval < 0:
		return bad("PollInterval", "must be positive, got %s", c.PollInterval)
	case c.AckTimeout < 0:
		return bad("AckTimeout", "must be positive, got %s", c.AckTimeout)
	case c.LockRetryInterval < 0:
		return bad("LockRetryInterval", "must be positive, got %s", c.LockRetryInterval)
	case c.RetryMin < 0:
		return bad("RetryMin", "must be positive, got %s", c.RetryMin)
	case c.RetryMax < c.RetryMin:
		return bad("RetryMax", "must be at least RetryMin (%s), got %s", c.RetryMin, c.RetryMax)
	case c.ShutdownTimeout < 0:
		return bad("ShutdownTimeout", "must be positive, got %s", c.ShutdownTimeout)
	case c.CheckpointKey != nil && len(c.CheckpointKey) != ed25519.PrivateKeySize:
		return bad("CheckpointKey", "must be an ed25519 private key of %d bytes, got %d", ed25519.PrivateKeySize, len(c.CheckpointKey))
	case c.CheckpointInterval < 0:
		return bad("CheckpointInterval", "must be positive, got %s", c.CheckpointInterval)
	}
	return nil
}

// batchesInFlight is how many atomic batches may await their ack.
func (c Config) batchesInFlight() int {
	return min(MaxBatchesInFlight, max(1, c.MaxInFlight/c.PublishBatch))
}

func validStreamName(s string) bool {
	return s != "" && len(s) <= 255 && !strings.ContainsAny(s, " \t\r\n.*>/\\")
}
