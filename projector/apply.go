package projector

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/internal/backoff"
	"github.com/artifactstore/artifactstore/store"
)

// applyError is a handler failure at events[index] of a batch.
type applyError struct {
	index int
	err   error
}

func (e *applyError) Error() string { return e.err.Error() }
func (e *applyError) Unwrap() error { return e.err }

// errLeaseExpired refuses a transaction once this worker's leases may have
// expired: the partition may belong to another worker by now.
var errLeaseExpired = errors.New("projector: leases may have expired")

// errInterrupted ends a catch-up from the log when its partition stops.
var errInterrupted = errors.New("projector: catch-up interrupted")

// commit applies events (in order, all of partition st.p, above st.cp) and
// moves the checkpoint to the last one. When another worker moved the
// checkpoint first, it re-reads it and applies only what is above it; a
// handler failure goes to applyPoison. A store error is returned.
func (w *Worker) commit(ctx context.Context, st *partition, events []store.Event) error {
	for moved := 0; len(events) > 0; {
		last := events[len(events)-1].Sequence
		err := w.apply(ctx, st, events, last)
		var ae *applyError
		switch {
		case err == nil:
			return w.afterCommit(st, last)
		case errors.Is(err, store.ErrCheckpointMoved):
			w.m.errors.WithLabelValues(w.cfg.Projection, "checkpoint_moved").Inc()
			if moved++; moved > 3 {
				return err
			}
			if err := w.reloadCheckpoint(ctx, st); err != nil {
				return err
			}
		case errors.As(err, &ae):
			if err := w.applyPoison(ctx, st, events, ae); err != nil || st.parkedNow {
				return err
			}
		default:
			w.m.errors.WithLabelValues(w.cfg.Projection, "store").Inc()
			return err
		}
		events = slices.DeleteFunc(events, func(e store.Event) bool { return e.Sequence <= st.cp })
	}
	return nil
}

// applyPoison deals with a handler failure at events[ae.index]: the events
// before it are applied, then the failing one is retried alone up to
// MaxAttempts times; if it still fails the partition parks.
func (w *Worker) applyPoison(ctx context.Context, st *partition, events []store.Event, ae *applyError) error {
	w.m.errors.WithLabelValues(w.cfg.Projection, "handler").Inc()
	if ae.index > 0 {
		if err := w.apply(ctx, st, events[:ae.index], events[ae.index-1].Sequence); err != nil {
			if errors.As(err, new(*applyError)) {
				return fmt.Errorf("handler failed differently on retry: %w", err)
			}
			return err
		}
		if err := w.afterCommit(st, events[ae.index-1].Sequence); err != nil {
			return err
		}
	}
	e := events[ae.index]
	last := ae.err
	attempts := 1
	if st.parked != nil && st.parked.Sequence == e.Sequence {
		attempts += st.parked.Attempts
	}
	bo := poisonRetry.Backoff()
	for a := 1; a < w.cfg.MaxAttempts; a++ {
		if d, _ := bo.Next(); !backoff.Sleep(ctx, d) {
			return ctx.Err()
		}
		err := w.apply(ctx, st, events[ae.index:ae.index+1], e.Sequence)
		if err == nil {
			return w.afterCommit(st, e.Sequence)
		}
		if !errors.As(err, new(*applyError)) {
			return err
		}
		last = err
		attempts++
	}
	return w.park(ctx, st, store.ParkedPoison, e.Sequence, e.Type, last, attempts)
}

// poisonRetry is the pause before a failing event is tried alone again.
var poisonRetry = backoff.Policy{Min: 100 * time.Millisecond, Max: 2 * time.Second}

// apply applies events (all of partition st.p, in order) and advances the
// checkpoint from st.cp to to, in one transaction. The compare-and-set of
// the checkpoint is the fence between workers that both believe they own
// the partition: only one of them commits.
func (w *Worker) apply(ctx context.Context, st *partition, events []store.Event, to int64) error {
	if !w.leaseValid() {
		return errLeaseExpired
	}
	if h := w.cfg.hooks.beforeTx; h != nil {
		h(st.p)
	}
	err := w.db.InTx(ctx, func(tx store.Tx) error {
		views := store.NewBufferedViews(tx, false)
		if br, ok := tx.(store.BatchReader); ok {
			// One round trip for the checkpoint and the rows the batch
			// reads; the writes then go with COMMIT.
			ids := make([]string, len(events))
			for i, e := range events {
				ids[i] = e.SubjectID
			}
			ps, rs, err := br.AdvanceCheckpointAndRead(ctx, w.cfg.Projection, st.p, st.cp, to, ids)
			if err != nil {
				return err
			}
			views.Preload(ids, ps, rs)
		} else if err := tx.AdvanceCheckpoint(ctx, w.cfg.Projection, st.p, st.cp, to); err != nil {
			return err
		}
		for i, e := range events {
			if err := w.cfg.Views.Apply(ctx, views, e); err != nil {
				if store.Temporary(err) || ctx.Err() != nil {
					return err
				}
				return &applyError{index: i, err: err}
			}
		}
		if err := views.Flush(ctx); err != nil {
			return err
		}
		if st.parked != nil {
			if err := tx.Unpark(ctx, w.cfg.Projection, st.p); err != nil {
				return err
			}
		}
		if h := w.cfg.hooks.beforeCommit; h != nil {
			h(st.p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	w.advanced(st, to)
	pl := partLabel(st.p)
	w.m.applied.WithLabelValues(w.cfg.Projection, pl).Add(float64(len(events)))
	w.m.batches.WithLabelValues(w.cfg.Projection, pl).Inc()
	if st.parked != nil {
		st.log.Info("partition resumed", zap.Int64("sequence", st.parked.Sequence), zap.String("reason", st.parked.Reason))
		st.parked = nil
		w.setParkedMetric(st)
	}
	return nil
}

// advanced records that the partition's checkpoint is now to.
func (w *Worker) advanced(st *partition, to int64) {
	st.cp = to
	w.m.checkpoint.WithLabelValues(w.cfg.Projection, partLabel(st.p)).Set(float64(to))
}

func (w *Worker) afterCommit(st *partition, last int64) error {
	if h := w.cfg.hooks.afterCommit; h != nil {
		if err := h(st.p, last); err != nil {
			return fmt.Errorf("%w: %w", errCrashed, err)
		}
	}
	return nil
}

// load reads the partition's checkpoint and parked record.
func (w *Worker) load(ctx context.Context, st *partition) error {
	if err := w.reloadCheckpoint(ctx, st); err != nil {
		return fmt.Errorf("reading checkpoint: %w", err)
	}
	parked, err := w.db.Parked(ctx)
	if err != nil {
		return fmt.Errorf("reading parked partitions: %w", err)
	}
	wasParked := st.parked != nil
	st.parked = nil
	for _, rec := range parked {
		if rec.Projection == w.cfg.Projection && rec.Partition == st.p {
			st.parked = &rec
			if !wasParked {
				// Parked by an earlier owner: try its event again now.
				st.retryAt = time.Now()
			}
		}
	}
	w.setParkedMetric(st)
	return nil
}

func (w *Worker) reloadCheckpoint(ctx context.Context, st *partition) error {
	return w.db.InTx(ctx, func(tx store.Tx) error {
		cp, err := tx.Checkpoint(ctx, w.cfg.Projection, st.p)
		if err == nil {
			w.advanced(st, cp)
		}
		return err
	})
}

// park records that the partition stopped on event seq and schedules the
// next attempt after ParkRetry.
func (w *Worker) park(ctx context.Context, st *partition, reason string, seq int64, eventType string, cause error, attempts int) error {
	rec := store.Parked{
		Projection: w.cfg.Projection, Partition: st.p, Sequence: seq, EventType: eventType, Reason: reason,
		Error: cause.Error(), Worker: w.cfg.WorkerID, Attempts: attempts, ParkedAt: time.Now().UTC(),
	}
	if err := w.db.InTx(ctx, func(tx store.Tx) error { return tx.Park(ctx, rec) }); err != nil {
		return fmt.Errorf("parking partition: %w", err)
	}
	st.parked, st.retryAt, st.parkedNow = &rec, time.Now().Add(w.cfg.ParkRetry), true
	w.setParkedMetric(st)
	st.log.Error("partition parked", zap.String("reason", reason), zap.Int64("sequence", seq),
		zap.String("event_type", eventType), zap.Int("attempts", attempts), zap.Error(cause),
		zap.Duration("retry_in", w.cfg.ParkRetry))
	return nil
}

func (w *Worker) setParkedMetric(st *partition) {
	v := 0.0
	if st.parked != nil {
		v = 1
	}
	w.m.parked.WithLabelValues(w.cfg.Projection, partLabel(st.p)).Set(v)
}
