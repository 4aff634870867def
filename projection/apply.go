package projection

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/store"
)

// Parked is a partition stopped on one event: a row of projection_parked.
type Parked struct {
	Partition int `json:"partition"`
	// Sequence is the event (or message) the partition stopped on.
	Sequence  int64  `json:"sequence"`
	EventType string `json:"event_type"`
	// Reason is ReasonPoison, ReasonGap or ReasonInvalid.
	Reason string `json:"reason"`
	// Error is the handler's error, or what is wrong with the stream.
	Error    string    `json:"error"`
	Worker   string    `json:"worker"`
	Attempts int       `json:"attempts"`
	ParkedAt time.Time `json:"parked_at"`
}

// applyError is a handler failure at events[index] of a batch.
type applyError struct {
	index int
	err   error
}

func (e *applyError) Error() string { return e.err.Error() }
func (e *applyError) Unwrap() error { return e.err }

// commit applies events (in order, all of partition st.p, above st.cp) and
// moves the checkpoint to the last one. When another instance moved the
// checkpoint first, it re-reads it and applies only what is above it; a
// handler failure goes to applyPoison. A database error is returned.
func (r *Runner) commit(ctx context.Context, st *partition, events []store.Event) error {
	for moved, conflicts := 0, 0; len(events) > 0; {
		last := events[len(events)-1].Sequence
		err := r.apply(ctx, st, events, last)
		var ae *applyError
		switch {
		case err == nil:
			return r.afterCommit(st, last)
		case errors.Is(err, errCrashed):
			return err
		case conflict(err) && conflicts < maxConflicts:
			// Partitions updating the same rows (an aggregate over
			// subjects) deadlock now and then; the batch is simply retried.
			r.m.errors.WithLabelValues(r.p.Name, "conflict").Inc()
			conflicts++
			if err := sleep(ctx, time.Duration(rand.Int64N(int64(20*time.Millisecond)<<min(conflicts, 5)))); err != nil {
				return err
			}
			continue
		case errors.Is(err, errCheckpointMoved):
			r.m.errors.WithLabelValues(r.p.Name, "checkpoint_moved").Inc()
			if moved++; moved > 3 {
				return err
			}
			if err := r.reloadCheckpoint(ctx, st); err != nil {
				return err
			}
		case errors.As(err, &ae):
			if err := r.applyPoison(ctx, st, events, ae); err != nil || st.parkedNow {
				return err
			}
		default:
			r.m.errors.WithLabelValues(r.p.Name, "store").Inc()
			return err
		}
		events = slices.DeleteFunc(events, func(e store.Event) bool { return e.Sequence <= st.cp })
	}
	return nil
}

// applyPoison deals with a handler failure at events[ae.index]: the events
// before it are applied, then the failing one is retried alone up to
// MaxAttempts times in all; if it still fails the partition parks.
func (r *Runner) applyPoison(ctx context.Context, st *partition, events []store.Event, ae *applyError) error {
	r.m.errors.WithLabelValues(r.p.Name, "handler").Inc()
	if ae.index > 0 {
		if err := r.apply(ctx, st, events[:ae.index], events[ae.index-1].Sequence); err != nil {
			if errors.As(err, new(*applyError)) {
				return fmt.Errorf("handler failed differently on retry: %w", err)
			}
			return err
		}
		if err := r.afterCommit(st, events[ae.index-1].Sequence); err != nil {
			return err
		}
	}
	e := events[ae.index]
	last := ae.err
	attempts := 1
	for ; attempts < r.cfg.MaxAttempts; attempts++ {
		if err := sleep(ctx, min(50*time.Millisecond<<attempts, 2*time.Second)); err != nil {
			return err
		}
		err := r.apply(ctx, st, events[ae.index:ae.index+1], e.Sequence)
		if err == nil {
			return r.afterCommit(st, e.Sequence)
		}
		if !errors.As(err, new(*applyError)) {
			return err
		}
		r.m.errors.WithLabelValues(r.p.Name, "handler").Inc()
		last = err
	}
	return r.park(ctx, st, ReasonPoison, e.Sequence, e.Type, last, attempts)
}

// apply applies events (all of partition st.p, in order) and advances the
// checkpoint from st.cp to to, in one transaction. The compare-and-set of
// the checkpoint comes first: it is the fence between instances that both
// believe they own the partition (the second waits for the first's row
// lock, then finds the checkpoint moved), so only one commits a range.
func (r *Runner) apply(ctx context.Context, st *partition, events []store.Event, to int64) error {
	if !r.leaseValid() {
		return errLeaseExpired
	}
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		if r.p.Serialize {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('artifactstore.projection.batch:' || current_schema() || ':' || $1, 0))`,
				r.p.Name); err != nil {
				return err
			}
		}
		tag, err := tx.Exec(ctx, `UPDATE projection_checkpoints SET sequence = $4 WHERE projection = $1 AND partition = $2 AND sequence = $3`,
			r.p.Name, st.p, st.cp, to)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return errCheckpointMoved
		}
		for i, e := range events {
			if err := r.p.apply(ctx, tx, Event{Event: e, Partition: st.p}); err != nil {
				if temporary(err) || ctx.Err() != nil || tx.Conn().IsClosed() {
					return err
				}
				return &applyError{index: i, err: err}
			}
		}
		if st.parked != nil {
			if _, err := tx.Exec(ctx, `DELETE FROM projection_parked WHERE projection = $1 AND partition = $2`, r.p.Name, st.p); err != nil {
				return err
			}
		}
		if h := r.cfg.hooks.beforeCommit; h != nil {
			if err := h(st.p); err != nil {
				return fmt.Errorf("%w: %w", errCrashed, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	r.advanced(st, to)
	pl := partLabel(st.p)
	r.m.applied.WithLabelValues(r.p.Name, pl).Add(float64(len(events)))
	r.m.batches.WithLabelValues(r.p.Name, pl).Inc()
	if st.parked != nil {
		st.log.Info("partition resumed", zap.Int64("sequence", st.parked.Sequence), zap.String("reason", st.parked.Reason))
		st.parked = nil
		r.setParkedMetric(st)
	}
	return nil
}

// advanced records that the partition's checkpoint is now to.
func (r *Runner) advanced(st *partition, to int64) {
	st.cp = to
	r.m.checkpoint.WithLabelValues(r.p.Name, partLabel(st.p)).Set(float64(to))
}

func (r *Runner) afterCommit(st *partition, last int64) error {
	if h := r.cfg.hooks.afterCommit; h != nil {
		if err := h(st.p, last); err != nil {
			return fmt.Errorf("%w: %w", errCrashed, err)
		}
	}
	return nil
}

// load reads the partition's checkpoint and parked record.
func (r *Runner) load(ctx context.Context, st *partition) error {
	if err := r.reloadCheckpoint(ctx, st); err != nil {
		return fmt.Errorf("reading checkpoint: %w", err)
	}
	var rec Parked
	err := r.pool.QueryRow(ctx, `SELECT partition, sequence, event_type, reason, error, worker, attempts, parked_at
		FROM projection_parked WHERE projection = $1 AND partition = $2`, r.p.Name, st.p).
		Scan(&rec.Partition, &rec.Sequence, &rec.EventType, &rec.Reason, &rec.Error, &rec.Worker, &rec.Attempts, &rec.ParkedAt)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		st.parked = nil
	case err != nil:
		return fmt.Errorf("reading the parked record: %w", err)
	default:
		if st.parked == nil {
			// Parked by an earlier owner: try its event again now.
			st.retryAt = time.Now()
		}
		st.parked = &rec
	}
	r.setParkedMetric(st)
	return nil
}

func (r *Runner) reloadCheckpoint(ctx context.Context, st *partition) error {
	var cp int64
	err := r.pool.QueryRow(ctx, `SELECT sequence FROM projection_checkpoints WHERE projection = $1 AND partition = $2`, r.p.Name, st.p).Scan(&cp)
	if err != nil {
		return err
	}
	r.advanced(st, cp)
	return nil
}

// park records that the partition stopped on event seq, logs it as an
// error and schedules the next attempt after ParkRetry. Parking again on
// the same event adds up the attempts.
func (r *Runner) park(ctx context.Context, st *partition, reason string, seq int64, eventType string, cause error, attempts int) error {
	if prev := st.parked; prev != nil && prev.Sequence == seq && prev.Reason == reason {
		attempts += prev.Attempts
	}
	rec := Parked{Partition: st.p, Sequence: seq, EventType: eventType, Reason: reason, Error: cause.Error(),
		Worker: r.cfg.WorkerID, Attempts: attempts, ParkedAt: time.Now().UTC()}
	_, err := r.pool.Exec(ctx, `INSERT INTO projection_parked AS p
			(projection, partition, sequence, event_type, reason, error, worker, attempts, parked_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		ON CONFLICT (projection, partition) DO UPDATE SET sequence = excluded.sequence, event_type = excluded.event_type,
			reason = excluded.reason, error = excluded.error, worker = excluded.worker, attempts = excluded.attempts,
			parked_at = excluded.parked_at`,
		r.p.Name, rec.Partition, rec.Sequence, rec.EventType, rec.Reason, rec.Error, rec.Worker, rec.Attempts, rec.ParkedAt)
	if err != nil {
		return fmt.Errorf("parking partition: %w", err)
	}
	st.parked, st.parkedNow, st.retryAt = &rec, true, time.Now().Add(r.cfg.ParkRetry)
	r.setParkedMetric(st)
	st.log.Error("partition parked", zap.String("reason", reason), zap.Int64("sequence", seq),
		zap.String("event_type", eventType), zap.Int("attempts", attempts), zap.Int64("checkpoint", st.cp),
		zap.Error(cause), zap.Duration("retry_in", r.cfg.ParkRetry))
	return nil
}

func (r *Runner) setParkedMetric(st *partition) {
	v := 0.0
	if st.parked != nil {
		v = 1
	}
	r.m.parked.WithLabelValues(r.p.Name, partLabel(st.p)).Set(v)
}

// maxConflicts bounds the immediate retries of a batch that deadlocked or
// failed to serialize.
const maxConflicts = 20

// conflict reports whether err is a deadlock or serialization failure:
// the transaction lost a race and may simply run again.
func conflict(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001")
}

// sleep waits d or until ctx ends (its error).
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
