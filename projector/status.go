package projector

import (
	"context"
	"fmt"

	"github.com/artifactstore/artifactstore/store"
)

// PartitionStatus is one partition of a projection as status shows it.
type PartitionStatus struct {
	Partition int `json:"partition"`
	// Worker holds the partition's lease (empty when nobody does).
	Worker string `json:"worker,omitempty"`
	// Checkpoint is the sequence up to which every event of the partition
	// is applied.
	Checkpoint int64 `json:"checkpoint"`
	// Parked is set while the partition is stopped on an event.
	Parked *store.Parked `json:"parked,omitempty"`
}

// Status is a projection's position, read from the database only (any
// process can call it; no NATS needed).
type Status struct {
	Projection string `json:"projection"`
	// LogPartitions is the log's partition count P.
	LogPartitions int `json:"log_partitions"`
	// Head is the log's highest sequence.
	Head int64 `json:"head"`
	// Applied is the lowest partition checkpoint: every event up to it is
	// in the views.
	Applied int64 `json:"applied"`
	// Lag is Head - Applied, in events.
	Lag        int64             `json:"lag"`
	Partitions []PartitionStatus `json:"partitions"`
	// ParkedPartitions counts parked partitions.
	ParkedPartitions int `json:"parked_partitions"`
}

// Inspect returns the status of projection: its partition checkpoints
// (partitions 0..n-1 where n is the highest partition with a checkpoint or
// a parked record, plus one), parked partitions and lag behind the log.
// ctx bounds the queries; database errors are returned wrapped.
func Inspect(ctx context.Context, db store.DB, projection string) (Status, error) {
	if projection == "" {
		projection = DefaultProjection
	}
	head, err := db.Head(ctx)
	if err != nil {
		return Status{}, fmt.Errorf("projector: status: %w", err)
	}
	cps, err := db.Checkpoints(ctx)
	if err != nil {
		return Status{}, fmt.Errorf("projector: status: %w", err)
	}
	parked, err := db.Parked(ctx)
	if err != nil {
		return Status{}, fmt.Errorf("projector: status: %w", err)
	}
	parts, err := db.Partitions(ctx)
	if err != nil {
		return Status{}, fmt.Errorf("projector: status: %w", err)
	}
	holders, err := db.LeaseHolders(ctx, projection)
	if err != nil {
		return Status{}, fmt.Errorf("projector: status: %w", err)
	}
	n := 0
	for _, c := range cps {
		if c.Projection == projection {
			n = max(n, c.Partition+1)
		}
	}
	for _, p := range parked {
		if p.Projection == projection {
			n = max(n, p.Partition+1)
		}
	}
	s := Status{Projection: projection, LogPartitions: parts, Head: head, Partitions: make([]PartitionStatus, n)}
	for i := range s.Partitions {
		s.Partitions[i].Partition = i
		s.Partitions[i].Worker = holders[i]
	}
	for _, c := range cps {
		if c.Projection == projection {
			s.Partitions[c.Partition].Checkpoint = c.Sequence
		}
	}
	for _, p := range parked {
		if p.Projection == projection {
			p := p
			s.Partitions[p.Partition].Parked = &p
			s.ParkedPartitions++
		}
	}
	if n > 0 {
		s.Applied = s.Partitions[0].Checkpoint
		for _, p := range s.Partitions {
			s.Applied = min(s.Applied, p.Checkpoint)
		}
	}
	s.Lag = head - s.Applied
	return s, nil
}
