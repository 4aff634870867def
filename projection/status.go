package projection

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/internal/wire"
)

// Querier runs queries: *pgxpool.Pool, *pgx.Conn and pgx.Tx all do.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// PartitionStatus is one partition of a projection.
type PartitionStatus struct {
	Partition int `json:"partition"`
	// Worker holds the partition's lease (empty when nobody does).
	Worker string `json:"worker,omitempty"`
	// Checkpoint is the sequence up to which every event of the partition
	// is applied.
	Checkpoint int64 `json:"checkpoint"`
	// Pending counts the partition's messages in the stream above the
	// checkpoint (-1 when the stream was not read).
	Pending int64 `json:"pending"`
	// Parked is set while the partition is stopped on an event.
	Parked *Parked `json:"parked,omitempty"`
}

// Status is a projection's position.
type Status struct {
	Projection string `json:"projection"`
	// LogID and LogPartitions are the identity recorded at the first start
	// (empty and 0 before it).
	LogID         string `json:"log_id"`
	LogPartitions int    `json:"log_partitions"`
	// StreamLast is the log sequence of the stream's last message (0 when
	// the stream was not read or is empty).
	StreamLast int64 `json:"stream_last"`
	// Applied is the highest checkpoint.
	Applied int64 `json:"applied"`
	// Lag is the stream's messages above the checkpoints, over every
	// partition (-1 when the stream was not read).
	Lag        int64             `json:"lag"`
	Partitions []PartitionStatus `json:"partitions"`
	// Parked counts parked partitions.
	Parked int `json:"parked"`
}

// Inspect returns projection name's status: checkpoints, lease holders and
// parked partitions from db (the projection's database; an empty status
// before the runtime's tables exist), and, when js is
// not nil, the stream's last sequence and each partition's pending
// messages (one short-lived consumer per partition). ctx bounds the calls;
// errors are returned wrapped.
func Inspect(ctx context.Context, db Querier, js JetStream, stream, name string) (Status, error) {
	s := Status{Projection: name, Lag: -1}
	err := db.QueryRow(ctx, `SELECT log_id, partitions FROM projection_meta WHERE projection = $1`, name).Scan(&s.LogID, &s.LogPartitions)
	if pe := (*pgconn.PgError)(nil); errors.As(err, &pe) && pe.Code == "42P01" {
		return s, nil // the runtime's tables are not there yet: nothing started
	}
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return Status{}, fmt.Errorf("projection: status: %w", err)
	}
	s.Partitions = make([]PartitionStatus, s.LogPartitions)
	for i := range s.Partitions {
		s.Partitions[i] = PartitionStatus{Partition: i, Pending: -1}
	}
	if err := inspectRows(ctx, db, name, &s); err != nil {
		return Status{}, fmt.Errorf("projection: status: %w", err)
	}
	if js == nil || s.LogPartitions == 0 {
		return s, nil
	}
	if stream == "" {
		stream = DefaultStream
	}
	if err := inspectStream(ctx, js, stream, &s); err != nil {
		return Status{}, fmt.Errorf("projection: status: %w", err)
	}
	return s, nil
}

// inspectRows reads checkpoints, leases and parked partitions into s.
func inspectRows(ctx context.Context, db Querier, name string, s *Status) error {
	at := func(p int) *PartitionStatus {
		if p >= 0 && p < len(s.Partitions) {
			return &s.Partitions[p]
		}
		return &PartitionStatus{}
	}
	rows, err := db.Query(ctx, `SELECT partition, sequence FROM projection_checkpoints WHERE projection = $1`, name)
	if err != nil {
		return err
	}
	var p int
	var seq int64
	if _, err := pgx.ForEachRow(rows, []any{&p, &seq}, func() error {
		at(p).Checkpoint = seq
		s.Applied = max(s.Applied, seq)
		return nil
	}); err != nil {
		return err
	}
	var w string
	rows, err = db.Query(ctx, `SELECT partition, worker FROM projection_leases WHERE projection = $1 AND expires_at > now()`, name)
	if err != nil {
		return err
	}
	if _, err := pgx.ForEachRow(rows, []any{&p, &w}, func() error { at(p).Worker = w; return nil }); err != nil {
		return err
	}
	rows, err = db.Query(ctx, `SELECT partition, sequence, event_type, reason, error, worker, attempts, parked_at
		FROM projection_parked WHERE projection = $1`, name)
	if err != nil {
		return err
	}
	var rec Parked
	_, err = pgx.ForEachRow(rows, []any{&rec.Partition, &rec.Sequence, &rec.EventType, &rec.Reason, &rec.Error, &rec.Worker, &rec.Attempts, &rec.ParkedAt},
		func() error {
			c := rec
			at(c.Partition).Parked = &c
			s.Parked++
			return nil
		})
	return err
}

// inspectStream reads the stream's last event and counts each partition's
// messages above its checkpoint with a short-lived consumer.
func inspectStream(ctx context.Context, js JetStream, stream string, s *Status) error {
	str, err := js.Stream(ctx, stream)
	if err != nil {
		return err
	}
	st := str.CachedInfo().State
	if st.Msgs > 0 {
		m, err := str.GetMsg(ctx, st.LastSeq)
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return err
		}
		if err == nil {
			s.StreamLast, _ = strconv.ParseInt(m.Header.Get(wire.HeaderSequence), 10, 64)
		}
	}
	s.Lag = 0
	for i := range s.Partitions {
		ps := &s.Partitions[i]
		start, err := startSeq(ctx, str, ps.Partition, ps.Checkpoint)
		if err != nil {
			return err
		}
		c, err := str.CreateConsumer(ctx, jetstream.ConsumerConfig{
			FilterSubject: wire.PartitionFilter(ps.Partition), DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
			OptStartSeq: start, AckPolicy: jetstream.AckNonePolicy, MemoryStorage: true, InactiveThreshold: 5 * time.Second,
		})
		if err != nil {
			return fmt.Errorf("counting partition %d's pending messages: %w", ps.Partition, err)
		}
		ps.Pending = int64(c.CachedInfo().NumPending)
		s.Lag += ps.Pending
		_ = str.DeleteConsumer(ctx, c.CachedInfo().Name)
	}
	return nil
}
