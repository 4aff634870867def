package ingest

import (
	"fmt"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Defaults of Config's zero fields.
const (
	// DefaultQueueGroup is the micro queue group every instance joins.
	DefaultQueueGroup = "artifactstore"
	// DefaultRequestTimeout bounds how long a request waits for its reply.
	DefaultRequestTimeout = 2 * time.Second
	// DefaultMaxBatch is the largest number of commands committed in one
	// transaction.
	DefaultMaxBatch = 256
	// DefaultBatchDelay is how long a batch waits for more commands once
	// its first one has arrived, when fewer than MaxBatch are queued: none.
	// Batches form by themselves while the committers are busy; lingering
	// only added latency in the benchmark (bench_test.go).
	DefaultBatchDelay time.Duration = 0
	// DefaultCommitters is how many batches may be committing at once.
	DefaultCommitters = 2
	// DefaultMaxPending is how many decoded commands may wait for a batch.
	DefaultMaxPending = 8192
	// DefaultMaxRetries is how many times a batch that lost a race
	// (deadlock, serialization failure) or met an unreachable database is
	// retried before its commands are answered unavailable.
	DefaultMaxRetries = 3
	// DefaultQueryConcurrency bounds the queries run at once.
	DefaultQueryConcurrency = 8
	// DefaultReplyPrefix is the inbox namespace of nats.go's requests
	// (nats.NewInbox).
	DefaultReplyPrefix = "_INBOX."
	// ServiceImportReplyPrefix is where nats-server maps the reply of a
	// request that crossed a service import (as in the deployment
	// Config.Identity relies on): "_R_.<random>.<random>", routed back to
	// the requester's own inbox by the server.
	ServiceImportReplyPrefix = "_R_."
)

// DefaultReplyPrefixes returns the inbox namespaces ingest answers when
// Config.ReplyPrefixes is empty: DefaultReplyPrefix and
// ServiceImportReplyPrefix.
func DefaultReplyPrefixes() []string {
	return []string{DefaultReplyPrefix, ServiceImportReplyPrefix}
}

// Config configures the ingest service. Zero fields take the defaults above.
type Config struct {
	// QueueGroup is the micro queue group (DefaultQueueGroup).
	QueueGroup string
	// RequestTimeout is the longest a command or query waits for its
	// reply; when the database does not answer in time the reply is
	// unavailable. Keep it below the clients' request timeout.
	RequestTimeout time.Duration
	// MaxBatch caps the commands of one transaction (1..10000).
	MaxBatch int
	// BatchDelay is how long a batch lingers for more commands after its
	// first one (0..100ms; 0, the default, does not linger).
	BatchDelay time.Duration
	// Committers is how many batches commit concurrently (1..64).
	Committers int
	// MaxPending caps the commands waiting for a batch; beyond it commands
	// are answered unavailable at once.
	MaxPending int
	// MaxRetries caps retries of a batch on temporary errors (0..100).
	// Negative means never retry.
	MaxRetries int
	// QueryConcurrency caps the get/list queries run at once.
	QueryConcurrency int
	// Logger receives the service's logs (a no-op logger when nil).
	Logger *zap.Logger
	// Registerer, when set, receives the service's Prometheus metrics.
	Registerer prometheus.Registerer
	// Metadata is added to the micro service metadata (shown by `nats
	// micro info`).
	Metadata map[string]string
	// Identity says what to do with the requester's identity that
	// nats-server attaches (the Nats-Request-Info header) when commands
	// reach ingest through a service import with share: true
	// (IdentityTrustClaim by default). See identity.go for the trust model.
	Identity IdentityMode
	// ReplyPrefixes are the inbox namespaces ingest answers: a request
	// whose reply subject starts with none of them (or has none) is dropped
	// unanswered before it is decoded, logged (at most once a second) and
	// counted in artifactstore_ingest_rejected_replies_total. Without this
	// a client could name any subject as its reply (the events stream, a KV
	// bucket, the JetStream API) and ingest, which may answer any request
	// (allow_responses), would publish its reply there. Each prefix ends
	// with '.', has no wildcards and is outside $... and artifactstore.*.
	// Set it to the clients' per-user inbox prefixes
	// (nats.CustomInboxPrefix("_INBOX_client") makes replies
	// "_INBOX_client.<id>": allow "_INBOX_client."); it replaces the
	// defaults, so keep ServiceImportReplyPrefix when clients come through
	// a service import. Empty means DefaultReplyPrefixes().
	ReplyPrefixes []string
}

func (c Config) withDefaults() Config {
	if c.QueueGroup == "" {
		c.QueueGroup = DefaultQueueGroup
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = DefaultMaxBatch
	}
	if c.Committers == 0 {
		c.Committers = DefaultCommitters
	}
	if c.MaxPending == 0 {
		c.MaxPending = DefaultMaxPending
	}
	if c.MaxRetries == 0 {
		c.MaxRetries = DefaultMaxRetries
	} else if c.MaxRetries < 0 {
		c.MaxRetries = 0
	}
	if c.QueryConcurrency == 0 {
		c.QueryConcurrency = DefaultQueryConcurrency
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if len(c.ReplyPrefixes) == 0 {
		c.ReplyPrefixes = DefaultReplyPrefixes()
	} else {
		c.ReplyPrefixes = slices.Clone(c.ReplyPrefixes)
	}
	return c
}

// validate checks a config with defaults applied and names the bad field.
func (c Config) validate() error {
	switch {
	case !subjectSafe(c.QueueGroup):
		return fmt.Errorf("ingest: config: QueueGroup %q is not a valid queue group", c.QueueGroup)
	case c.RequestTimeout < 10*time.Millisecond:
		return fmt.Errorf("ingest: config: RequestTimeout %s is below 10ms", c.RequestTimeout)
	case c.MaxBatch < 1 || c.MaxBatch > 10000:
		return fmt.Errorf("ingest: config: MaxBatch %d is outside 1..10000", c.MaxBatch)
	case c.BatchDelay < 0 || c.BatchDelay > 100*time.Millisecond:
		return fmt.Errorf("ingest: config: BatchDelay %s is outside 0..100ms", c.BatchDelay)
	case c.BatchDelay >= c.RequestTimeout:
		return fmt.Errorf("ingest: config: BatchDelay %s is not below RequestTimeout %s", c.BatchDelay, c.RequestTimeout)
	case c.Committers < 1 || c.Committers > 64:
		return fmt.Errorf("ingest: config: Committers %d is outside 1..64", c.Committers)
	case c.MaxPending < 1:
		return fmt.Errorf("ingest: config: MaxPending %d is below 1", c.MaxPending)
	case c.MaxRetries > 100:
		return fmt.Errorf("ingest: config: MaxRetries %d is above 100", c.MaxRetries)
	case c.QueryConcurrency < 1 || c.QueryConcurrency > 1024:
		return fmt.Errorf("ingest: config: QueryConcurrency %d is outside 1..1024", c.QueryConcurrency)
	case c.Identity != IdentityTrustClaim && c.Identity != IdentityVerify && c.Identity != IdentityRequire:
		return fmt.Errorf("ingest: config: Identity %q is not one of \"\", verify, require", c.Identity)
	}
	for _, p := range c.ReplyPrefixes {
		if err := validateReplyPrefix(p); err != nil {
			return fmt.Errorf("ingest: config: ReplyPrefixes: %q %w (want an inbox prefix such as %q)", p, err, DefaultReplyPrefix)
		}
	}
	return nil
}

// subjectSafe reports whether s is non-empty printable ASCII without
// whitespace or wildcards.
func subjectSafe(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == '*' || c == '>' {
			return false
		}
	}
	return true
}
