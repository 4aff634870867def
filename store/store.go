package store

import (
	"context"
	"time"
)

// DB is a handle on one dialect's database: the log, the views, the
// checkpoints and the command-side state. Implementations are safe for
// concurrent use.
type DB interface {
	// InTx runs fn in a transaction and commits it when fn returns nil; it
	// rolls back and returns fn's error otherwise. Errors that mean the
	// database is unreachable or the transaction lost a race wrap
	// ErrUnavailable.
	InTx(ctx context.Context, fn func(Tx) error) error
	// Fetch returns up to limit events with sequence > after, in order.
	Fetch(ctx context.Context, after int64, limit int) ([]Event, error)
	// Head returns the highest committed sequence (0 for an empty log).
	Head(ctx context.Context) (int64, error)
	// LogID returns the random id the log was given when first migrated.
	LogID(ctx context.Context) (string, error)
	// ChainHead returns the log's last committed sequence and its chain
	// digest, as the log's head row records them (the writers update it
	// with every append, in the same transaction).
	ChainHead(ctx context.Context) (ChainHead, error)
	// AppendSignal returns a channel that is closed the next time events
	// may have been appended (by this process or, on PostgreSQL, any
	// other). Take it before reading the log, then wait on it together with
	// a poll timer: it is a wake-up hint only, never relied on for
	// correctness.
	AppendSignal() <-chan struct{}
	// Package returns the view row of one package (ErrNotFound if absent).
	Package(ctx context.Context, id string) (PackageView, error)
	// ListPackages returns view rows ordered by package id.
	ListPackages(ctx context.Context, f PackageFilter) ([]PackageView, error)
	// Checkpoints returns every checkpoint row, ordered by projection and
	// partition.
	Checkpoints(ctx context.Context) ([]Checkpoint, error)
	// DumpViews returns a canonical text rendering of every row of every
	// view table (artifact_packages, retention_state), ordered by primary
	// key, for byte-for-byte comparison of views built different ways.
	DumpViews(ctx context.Context) (string, error)
	// TryLock takes the named leader lock without waiting. It returns
	// ErrLockHeld when another holder has it. The returned release func
	// gives it back. lost closes when the holder can no longer be sure it
	// holds the lock (its process or session died; on PostgreSQL, a lease
	// renewal failed or was late), before anyone else can take it; a holder
	// cut off silently loses it within seconds, so that a standby takes
	// over.
	TryLock(ctx context.Context, name string) (release func(), lost <-chan struct{}, err error)
	// FetchKeys returns the keys of up to limit events with after <
	// sequence <= upTo, in order (no payloads).
	FetchKeys(ctx context.Context, after, upTo int64, limit int) ([]EventKey, error)
	// Parked returns every parked projector partition, ordered by
	// projection and partition.
	Parked(ctx context.Context) ([]Parked, error)
	// Partitions returns the log's partition count P, fixed when the log
	// was first migrated.
	Partitions(ctx context.Context) (int, error)
	Leases
	// Dialect names the dialect ("postgres" or "sqlite").
	Dialect() string
	// Close releases the database's resources.
	Close()
}

// Tx is one transaction. Its methods must not be called after the
// transaction has ended.
type Tx interface {
	ViewTx
	// Append writes events (validated against the dialect's payload limit),
	// assigning each its sequence and created_at, and returns them in
	// order. It takes the log's commit-order lock: call it last, just before
	// commit. Invalid events return an error and write nothing.
	Append(ctx context.Context, events ...Event) ([]Event, error)
	// ResetViews deletes every row of the registry views.
	ResetViews(ctx context.Context) error
	// PutPackages upserts many package rows in bulk.
	PutPackages(ctx context.Context, ps []Package) error
	// PutRetentions upserts many retention rows in bulk.
	PutRetentions(ctx context.Context, rs []Retention) error
	// LoadViews bulk-inserts rows that are known not to exist yet (the
	// views were reset in this transaction); an existing row is an error.
	LoadViews(ctx context.Context, ps []Package, rs []Retention) error

	// Checkpoint returns the sequence a projection's partition has applied
	// up to (0 when it has none).
	Checkpoint(ctx context.Context, projection string, partition int) (int64, error)
	// AdvanceCheckpoint sets a partition's checkpoint from from to to, only
	// if it is still from (compare-and-set); otherwise ErrCheckpointMoved.
	AdvanceCheckpoint(ctx context.Context, projection string, partition int, from, to int64) error
	// LockCheckpoints creates the projection's missing checkpoints of
	// partitions 0..partitions-1 (at 0), locks every checkpoint of the
	// projection until the transaction ends and returns them ordered by
	// partition. A projector's compare-and-set on any of them (and so its
	// view transaction) waits until then; Replay takes them first, so it
	// never interleaves with a worker's batch.
	LockCheckpoints(ctx context.Context, projection string, partitions int) ([]Checkpoint, error)
	// DeleteCheckpoints removes every checkpoint of a projection.
	DeleteCheckpoints(ctx context.Context, projection string) error
	// Park records (or replaces) a parked projector partition.
	Park(ctx context.Context, p Parked) error
	// Unpark deletes a partition's parked record, if any.
	Unpark(ctx context.Context, projection string, partition int) error

	// ClaimCommand records that command id is being handled in this
	// transaction, with the fingerprint of the command's parameters. It
	// returns false when the id was already recorded (by a committed
	// transaction; a concurrent one is waited for); the recorded
	// fingerprint is then left as it was.
	ClaimCommand(ctx context.Context, id string, fingerprint []byte) (bool, error)
	// CommandReply returns what is kept of a completed command id (its
	// reply and fingerprint), or ErrNotFound.
	CommandReply(ctx context.Context, id string) (CommandRecord, error)
	// CompleteCommand stores the reply of a claimed command.
	CompleteCommand(ctx context.Context, id string, sequence int64, reply []byte) error
	// ReleaseCommand forgets a claim made in this transaction (the command
	// was rejected, so nothing about it is kept).
	ReleaseCommand(ctx context.Context, id string) error
	// ClaimPackage records a new package in the command-side index. It
	// returns false when (name, version) is already taken.
	ClaimPackage(ctx context.Context, id, name, version string) (bool, error)
	// FinalizePackage marks a package finalized in the command-side index.
	// It returns ErrNotFound for an unknown id and false when the package
	// was already finalized.
	FinalizePackage(ctx context.Context, id string) (bool, error)
}

// ViewTx is what view handlers may do within a transaction: read and write
// the registry view rows.
type ViewTx interface {
	// GetPackage returns a package row or ErrNotFound.
	GetPackage(ctx context.Context, id string) (Package, error)
	// PutPackage inserts or replaces a package row.
	PutPackage(ctx context.Context, p Package) error
	// GetRetention returns a retention row or ErrNotFound.
	GetRetention(ctx context.Context, packageID string) (Retention, error)
	// PutRetention inserts or replaces a retention row.
	PutRetention(ctx context.Context, r Retention) error
}

// Package status values.
const (
	StatusOpen      = "open"
	StatusFinalized = "finalized"
)

// Package is one row of artifact_packages. Every field is determined by
// events, never by the wall clock at projection time.
type Package struct {
	ID             string     `json:"package_id"`
	Name           string     `json:"name"`
	Version        string     `json:"version"`
	Status         string     `json:"status"`
	CreatedBy      string     `json:"created_by"`
	CreatedAt      time.Time  `json:"created_at"`
	FinalizedBy    string     `json:"finalized_by,omitempty"`
	FinalizedAt    *time.Time `json:"finalized_at,omitempty"`
	ManifestDigest *Digest    `json:"manifest_digest,omitempty"`
	// CreatedSequence is the sequence of the package's created event.
	CreatedSequence int64 `json:"created_sequence"`
	// LastSequence is the sequence of the last event applied to the row.
	LastSequence int64 `json:"last_sequence"`
}

// Retention policies.
const (
	RetentionKeepForever = "keep_forever"
	RetentionKeepDays    = "keep_days"
)

// Retention is one row of retention_state.
type Retention struct {
	PackageID string `json:"package_id"`
	// Policy is keep_forever or keep_days.
	Policy string `json:"policy"`
	// KeepDays is the retention period for keep_days, counted from
	// finalization.
	KeepDays int `json:"keep_days,omitempty"`
	// ExpiresAt is set once the package is finalized under keep_days.
	ExpiresAt    *time.Time `json:"expires_at,omitempty"`
	LastSequence int64      `json:"last_sequence"`
}

// PackageView is a package row joined with its retention row, as queries
// return it.
type PackageView struct {
	Package
	Retention *Retention `json:"retention,omitempty"`
}

// PackageFilter selects packages for ListPackages.
type PackageFilter struct {
	// Name, when set, keeps packages of that name only.
	Name string
	// Status, when set, keeps packages in that status only.
	Status string
	// After is a paging cursor: only packages with id > After.
	After string
	// Limit caps the number of rows (1..1000; 0 means 100).
	Limit int
}

// Checkpoint is one projection partition's position.
type Checkpoint struct {
	Projection string `json:"projection"`
	Partition  int    `json:"partition"`
	Sequence   int64  `json:"sequence"`
}
