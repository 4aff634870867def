package projection

import (
	"context"
	"fmt"
	"iter"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

// ReplayOptions configures Replay.
type ReplayOptions struct {
	// Schema is the schema the projection is built in, created when
	// missing; empty means the connection's current schema.
	Schema string
	// Partitions and LogID, when both set, record the projection's
	// identity and every partition's checkpoint (its last replayed event),
	// so that a Runner on the schema continues after the replay. Unset,
	// nothing is recorded and a Runner starts over from the stream.
	Partitions int
	LogID      string
	// Stream is recorded with the identity (DefaultStream).
	Stream string
}

// Replay rebuilds projection p from events in one transaction: it creates
// the schema and runs the migrations when needed, empties p.Tables and
// the projection's checkpoints and parked partitions, applies every event
// (strictly increasing sequences, else ErrOutOfOrder) through p's
// handlers, and commits. It returns the last sequence it read. An error
// (a handler's, the events') rolls everything back. Stop the Runners of
// that schema first: Replay locks the checkpoints so their batches wait,
// but they would then apply from their old positions.
//
// Replay into a fresh schema and Dump both schemas to check that the
// Runners' tables equal a replay of the same events (StreamEvents,
// LogEvents).
func Replay(ctx context.Context, db Beginner, p Projection, events iter.Seq2[Event, error], opts ReplayOptions) (int64, error) {
	if err := p.validate(); err != nil {
		return 0, err
	}
	if (opts.Partitions == 0) != (opts.LogID == "") || opts.Partitions < 0 || opts.Partitions > wire.MaxPartitions {
		return 0, fmt.Errorf("%w: ReplayOptions.Partitions and LogID are set together, Partitions 1..%d", ErrConfig, wire.MaxPartitions)
	}
	if opts.Schema != "" && !identRe.MatchString(opts.Schema) {
		return 0, fmt.Errorf("%w: ReplayOptions.Schema %q is not a lower-case identifier", ErrConfig, opts.Schema)
	}
	if opts.Stream == "" {
		opts.Stream = DefaultStream
	}
	var last int64
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) (err error) {
		last, err = replayTx(ctx, tx, p, events, opts)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("projection: replaying %s: %w", p.Name, err)
	}
	return last, nil
}

func replayTx(ctx context.Context, tx pgx.Tx, p Projection, events iter.Seq2[Event, error], opts ReplayOptions) (int64, error) {
	if opts.Schema != "" {
		// A role without CREATE on the database can replay into a schema
		// made for it: it is created only when missing.
		var exists bool
		if err := tx.QueryRow(ctx, "SELECT to_regnamespace($1) IS NOT NULL", opts.Schema).Scan(&exists); err != nil {
			return 0, err
		}
		schema := pgx.Identifier{opts.Schema}.Sanitize()
		if !exists {
			if _, err := tx.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
				return 0, err
			}
		}
		if _, err := tx.Exec(ctx, "SET LOCAL search_path TO "+schema); err != nil {
			return 0, err
		}
	}
	if _, err := migrateTx(ctx, tx, p); err != nil {
		return 0, err
	}
	if err := resetTx(ctx, tx, p); err != nil {
		return 0, err
	}
	var last int64
	lastOf := map[int]int64{}
	for e, err := range events {
		if err != nil {
			return 0, fmt.Errorf("reading events: %w", err)
		}
		if e.Sequence <= last {
			return 0, fmt.Errorf("%w: %d after %d", ErrOutOfOrder, e.Sequence, last)
		}
		if opts.Partitions > 0 && (e.Partition < 0 || e.Partition >= opts.Partitions) {
			return 0, fmt.Errorf("event %d is in partition %d, outside 0..%d", e.Sequence, e.Partition, opts.Partitions-1)
		}
		if err := p.apply(ctx, tx, e); err != nil {
			return 0, err
		}
		last, lastOf[e.Partition] = e.Sequence, e.Sequence
	}
	if opts.Partitions == 0 {
		return last, nil
	}
	if _, err := tx.Exec(ctx, `INSERT INTO projection_meta (projection, log_id, partitions, stream) VALUES ($1, $2, $3, $4)`,
		p.Name, opts.LogID, opts.Partitions, opts.Stream); err != nil {
		return 0, err
	}
	cps := make([]int64, opts.Partitions)
	for part, seq := range lastOf {
		cps[part] = seq
	}
	_, err := tx.Exec(ctx, `INSERT INTO projection_checkpoints (projection, partition, sequence)
		SELECT $1, p - 1, s FROM unnest($2::bigint[]) WITH ORDINALITY AS c(s, p)`, p.Name, cps)
	return last, err
}

// resetTx empties the projection's tables and its runtime rows, after
// locking its checkpoints so that no Runner batch commits meanwhile.
func resetTx(ctx context.Context, tx pgx.Tx, p Projection) error {
	if _, err := tx.Exec(ctx, `SELECT 1 FROM projection_checkpoints WHERE projection = $1 FOR UPDATE`, p.Name); err != nil {
		return err
	}
	if len(p.Tables) > 0 {
		names := make([]string, len(p.Tables))
		for i, t := range p.Tables {
			names[i] = pgx.Identifier{t}.Sanitize()
		}
		if _, err := tx.Exec(ctx, "TRUNCATE "+strings.Join(names, ", ")); err != nil {
			return err
		}
	}
	_, err := tx.Exec(ctx, `WITH c AS (DELETE FROM projection_checkpoints WHERE projection = $1),
		k AS (DELETE FROM projection_parked WHERE projection = $1)
		DELETE FROM projection_meta WHERE projection = $1`, p.Name)
	return err
}

// Dump renders every row of p.Tables in schema (empty: the current one),
// each table's rows as PostgreSQL's text form ordered bytewise, for
// comparing tables built different ways byte for byte.
func Dump(ctx context.Context, db Querier, schema string, p Projection) (string, error) {
	var b strings.Builder
	for _, t := range slices.Sorted(slices.Values(p.Tables)) {
		name := pgx.Identifier{t}
		if schema != "" {
			name = pgx.Identifier{schema, t}
		}
		rows, err := db.Query(ctx, "SELECT t::text FROM "+name.Sanitize()+` AS t ORDER BY t::text COLLATE "C"`)
		if err != nil {
			return "", fmt.Errorf("projection: dumping %s: %w", t, err)
		}
		var line string
		if _, err := pgx.ForEachRow(rows, []any{&line}, func() error {
			fmt.Fprintf(&b, "%s %s\n", t, line)
			return nil
		}); err != nil {
			return "", fmt.Errorf("projection: dumping %s: %w", t, err)
		}
	}
	return b.String(), nil
}

// StreamOptions selects what StreamEvents reads.
type StreamOptions struct {
	// Stream is the events stream (DefaultStream).
	Stream string
	// LogID and Partitions, when set, are checked on every message as a
	// Runner checks them (ErrInvalidMessage otherwise).
	LogID      string
	Partitions int
}

// StreamEvents yields the events the stream holds when it is called, from
// its first message to its last, each checked (its headers, its payload
// digest, and the log id and partition when opts sets them). An invalid
// message is yielded as an error wrapping ErrInvalidMessage and ends it;
// so does ctx ending.
func StreamEvents(ctx context.Context, js JetStream, opts StreamOptions) iter.Seq2[Event, error] {
	if opts.Stream == "" {
		opts.Stream = DefaultStream
	}
	return func(yield func(Event, error) bool) {
		s, err := js.Stream(ctx, opts.Stream)
		if err != nil {
			yield(Event{}, fmt.Errorf("projection: stream %s: %w", opts.Stream, err))
			return
		}
		last := s.CachedInfo().State.LastSeq
		if s.CachedInfo().State.Msgs == 0 {
			return
		}
		cons, err := js.OrderedConsumer(ctx, opts.Stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{wire.Subjects}})
		if err != nil {
			yield(Event{}, fmt.Errorf("projection: consumer: %w", err))
			return
		}
		it, err := cons.Messages()
		if err != nil {
			yield(Event{}, fmt.Errorf("projection: consumer: %w", err))
			return
		}
		defer it.Stop()
		defer context.AfterFunc(ctx, it.Stop)()
		for {
			m, err := it.Next()
			if err != nil {
				if ctx.Err() != nil {
					err = ctx.Err()
				}
				yield(Event{}, fmt.Errorf("projection: reading the stream: %w", err))
				return
			}
			e, err := streamEvent(m, opts)
			if !yield(e, err) || err != nil {
				return
			}
			if md, err := m.Metadata(); err != nil || md.Sequence.Stream >= last {
				return
			}
		}
	}
}

// streamEvent decodes one message of StreamEvents.
func streamEvent(m jetstream.Msg, opts StreamOptions) (Event, error) {
	if opts.LogID != "" && opts.Partitions > 0 {
		wm, err := decode(m.Subject(), m.Headers(), m.Data(), opts.LogID, opts.Partitions)
		return Event{Event: wm.Event, Partition: wm.Partition}, err
	}
	wm, err := wire.Decode(m.Subject(), m.Headers(), m.Data())
	if err == nil && opts.LogID != "" && wm.LogID != opts.LogID {
		err = fmt.Errorf("event %d is from log %q, not %q", wm.Event.Sequence, wm.LogID, opts.LogID)
	}
	if err != nil {
		return Event{}, fmt.Errorf("%w: %w", ErrInvalidMessage, err)
	}
	return Event{Event: wm.Event, Partition: wm.Partition}, nil
}

// LogEvents yields the log's events (sequence > after) with their
// partition among the log's, page by page, up to the head when it reaches
// it: the events a Runner would apply, read from the log instead of the
// stream.
func LogEvents(ctx context.Context, db store.DB, after int64) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		parts, err := db.Partitions(ctx)
		if err != nil {
			yield(Event{}, fmt.Errorf("projection: reading the log's partition count: %w", err))
			return
		}
		for e, err := range store.All(ctx, db, after, 0) {
			if !yield(Event{Event: e, Partition: wire.Partition(e.SubjectID, parts)}, err) || err != nil {
				return
			}
		}
	}
}
