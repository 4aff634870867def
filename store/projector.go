package store

import (
	"context"
	"time"
)

// EventKey is what a partitioned projector needs to know about an event
// without reading its payload: its sequence, its subject id (the
// partitioning key) and its payload digest (to check a stream copy against
// the log).
type EventKey struct {
	Sequence      int64
	SubjectID     string
	PayloadDigest Digest
}

// BatchReader is implemented by transactions that can advance a projector
// checkpoint and read the view rows a batch will touch in one round trip.
// A projector batch then takes two: this one, and its writes sent with
// COMMIT. Stores without it are used through Tx.AdvanceCheckpoint and row
// by row reads.
type BatchReader interface {
	// AdvanceCheckpointAndRead does what Tx.AdvanceCheckpoint does and
	// returns the package and retention rows of ids that exist (keyed by
	// package id).
	AdvanceCheckpointAndRead(ctx context.Context, projection string, partition int, from, to int64, ids []string) (map[string]Package, map[string]Retention, error)
}

// Reasons a projector partition is parked.
const (
	// ParkedPoison: the event's handler kept failing.
	ParkedPoison = "poison"
	// ParkedGap: the stream delivered an event whose predecessor in the
	// partition had not been applied and the stream did not supply it.
	ParkedGap = "gap"
)

// Parked is a projector partition stopped on one event. It is written by
// the projector when it parks the partition and deleted in the transaction
// that applies the event.
type Parked struct {
	Projection string `json:"projection"`
	Partition  int    `json:"partition"`
	// Sequence is the event the partition stopped on.
	Sequence  int64  `json:"sequence"`
	EventType string `json:"event_type"`
	// Reason is ParkedPoison or ParkedGap.
	Reason string `json:"reason"`
	// Error is the last error, as text.
	Error string `json:"error"`
	// Worker is the id of the projector worker that parked the partition.
	Worker string `json:"worker"`
	// Attempts counts the failed attempts so far.
	Attempts int `json:"attempts"`
	// ParkedAt is the wall-clock time of the latest attempt (not a view
	// value: replay never writes it).
	ParkedAt time.Time `json:"parked_at"`
}

// Leases is how projector workers share a projection's partitions: each
// live worker renews a member row, and each partition is leased to one
// worker at a time. Expiry is decided by the database's clock, so worker
// clocks do not matter; a worker that cannot renew loses its leases when
// they expire, whatever state it is in.
type Leases interface {
	// Heartbeat records worker as a live member of projection for ttl and
	// returns the projection's live members (worker included), sorted.
	Heartbeat(ctx context.Context, projection, worker string, ttl time.Duration) ([]string, error)
	// ClaimLeases renews worker's leases on the partitions of want it holds
	// and takes those that are free or expired, each for ttl; it returns
	// the partitions of want that worker holds afterwards, sorted. Leases
	// outside want are left alone (ReleaseLeases gives them back).
	ClaimLeases(ctx context.Context, projection, worker string, want []int, ttl time.Duration) ([]int, error)
	// ReleaseLeases gives back worker's leases on partitions.
	ReleaseLeases(ctx context.Context, projection, worker string, partitions []int) error
	// Leave removes worker's member row and every lease it holds.
	Leave(ctx context.Context, projection, worker string) error
	// LeaseHolders returns the unexpired lease holder of each partition of
	// projection that has one.
	LeaseHolders(ctx context.Context, projection string) (map[int]string, error)
}
