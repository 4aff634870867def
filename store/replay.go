package store

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"slices"
	"time"
)

// replayFlushRows bounds the rows Replay buffers before a bulk write.
const replayFlushRows = 100_000

// page is one read of the log, or the error that ended the reading.
type page struct {
	events []Event
	err    error
}

// readAhead reads the log in (after, upTo] page by page on its own
// goroutine, at most two pages ahead of the consumer. stop ends it and
// waits for it.
func readAhead(ctx context.Context, db DB, after, upTo int64) (<-chan page, func()) {
	ctx, cancel := context.WithCancel(ctx)
	out := make(chan page, 2)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(out)
		cursor := after
		for cursor < upTo {
			events, err := db.Fetch(ctx, cursor, min(DefaultBatch, int(upTo-cursor)))
			if err == nil && len(events) == 0 {
				return
			}
			select {
			case out <- page{events: events, err: err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
			cursor = events[len(events)-1].Sequence
		}
	}()
	return out, func() { cancel(); <-done }
}

// DefaultBatch is the page size Tail, Replay and All read the log in.
const DefaultBatch = 1000

// ReplayOptions configures Replay.
type ReplayOptions struct {
	// Reset empties the views (and the projection's checkpoints) first.
	Reset bool
	// Projection names the checkpoint row Replay writes (partition 0);
	// "registry" when empty.
	Projection string
	// UpTo stops after this sequence (0: the whole log as of the start).
	UpTo int64
	// Progress, when set, is called after each page with the sequence
	// applied so far and the target sequence.
	Progress func(applied, target int64)
	// Partitions is how many partition checkpoints (0..Partitions-1) the
	// projection keeps, as partitioned projectors do. Replay advances every
	// one of them to the sequence it reached, so projectors resume exactly
	// after the replay. 0 keeps the projection's current partitioning (as
	// many partitions as it has checkpoint rows for, at least 1).
	Partitions int
	// PartitionOf maps an event to its partition. It is needed only for a
	// replay without Reset whose partitions' checkpoints differ: each event
	// is then applied only if it is above its own partition's checkpoint.
	PartitionOf func(Event) int
}

// Replay drains the log through w inside one transaction and records the
// highest applied sequence as the projection's checkpoint (every partition's,
// see ReplayOptions.Partitions). It returns that sequence.
//
// Projector workers may run meanwhile: Replay first locks the projection's
// checkpoints (Tx.LockCheckpoints), which every worker batch
// compare-and-sets in its view transaction, so no batch commits while the
// replay runs and none is half-seen. Only then does it read the log head:
// every checkpoint a worker committed is at or below it. It applies the log
// up to that head (or UpTo) and moves checkpoints only forward; a worker
// whose compare-and-set then fails reads the new checkpoint back and
// resumes after it. Events committed while it runs are left for the next
// run, and because sequence order is commit order none below that head can
// appear later. With Reset it also clears the projection's parked
// partitions; it returns ErrCheckpointAhead, changing nothing, when a
// checkpoint is already beyond its target. On error nothing is changed.
func Replay(ctx context.Context, db DB, w ViewWriter, opts ReplayOptions) (int64, error) {
	if opts.Projection == "" {
		opts.Projection = "registry"
	}
	var applied int64
	err := db.InTx(ctx, func(tx Tx) error {
		var err error
		applied, err = replayTx(ctx, db, tx, w, opts)
		return err
	})
	if errors.Is(err, ErrConflict) {
		// The views changed under the replay although it held the
		// checkpoints: a writer that does not take them first.
		return 0, fmt.Errorf("store: replay: a writer outside the projection's checkpoints changed the views: %w", err)
	}
	if err != nil {
		return 0, fmt.Errorf("store: replay: %w", err)
	}
	return applied, nil
}

// ReplayTx is Replay inside the caller's transaction tx (which it does not
// commit): it locks the projection's checkpoints, applies the log above
// them up to the head read after the lock (or opts.UpTo), advances every
// checkpoint to the sequence it reached and returns it. A projection
// version's switch uses it to catch up in the switch's transaction.
func ReplayTx(ctx context.Context, db DB, tx Tx, w ViewWriter, opts ReplayOptions) (int64, error) {
	if opts.Projection == "" {
		opts.Projection = "registry"
	}
	return replayTx(ctx, db, tx, w, opts)
}

// replayTx is Replay's transaction.
func replayTx(ctx context.Context, db DB, tx Tx, w ViewWriter, opts ReplayOptions) (int64, error) {
	locked, err := tx.LockCheckpoints(ctx, opts.Projection, opts.Partitions)
	if err != nil {
		return 0, fmt.Errorf("locking checkpoints: %w", err)
	}
	parts := opts.Partitions
	if parts <= 0 {
		parts = 1
		for _, c := range locked {
			parts = max(parts, c.Partition+1)
		}
	}
	target := opts.UpTo
	if target == 0 {
		// Read after the lock: no worker commits past it now.
		if target, err = db.Head(ctx); err != nil {
			return 0, fmt.Errorf("reading head: %w", err)
		}
	}
	if opts.Reset {
		if err := resetProjection(ctx, tx, w, opts.Projection, parts, locked, target); err != nil {
			return 0, err
		}
	}
	cps := make([]int64, parts)
	uniform := true
	for p := range cps {
		if cps[p], err = tx.Checkpoint(ctx, opts.Projection, p); err != nil {
			return 0, err
		}
		uniform = uniform && cps[p] == cps[0]
	}
	if !uniform && opts.PartitionOf == nil {
		return 0, fmt.Errorf("the %d partition checkpoints of %s differ (%v): replay with Reset, or set PartitionOf", parts, opts.Projection, cps)
	}
	applied, err := applyLog(ctx, db, tx, w, opts, cps, target)
	if err != nil {
		return 0, err
	}
	for p, cp := range cps {
		if cp < applied {
			if err := tx.AdvanceCheckpoint(ctx, opts.Projection, p, cp, applied); err != nil {
				return 0, err
			}
		}
	}
	return applied, nil
}

// resetProjection empties the views, the projection's checkpoints and its
// parked partitions, unless a locked checkpoint is beyond target: the
// rebuilt views would then stop short of what a worker has acknowledged.
func resetProjection(ctx context.Context, tx Tx, w ViewWriter, projection string, parts int, locked []Checkpoint, target int64) error {
	for _, c := range locked {
		if c.Sequence > target {
			return fmt.Errorf("%w: %s partition %d is at %d, the replay would stop at %d", ErrCheckpointAhead,
				projection, c.Partition, c.Sequence, target)
		}
	}
	if err := w.Reset(ctx, tx); err != nil {
		return fmt.Errorf("resetting views: %w", err)
	}
	if err := tx.DeleteCheckpoints(ctx, projection); err != nil {
		return err
	}
	for p := range parts {
		if err := tx.Unpark(ctx, projection, p); err != nil {
			return err
		}
	}
	return nil
}

// applyLog applies the events in (min(cps), target] through w in bulk,
// each only above its partition's checkpoint when cps differ, and returns
// the last sequence it read.
func applyLog(ctx context.Context, db DB, tx Tx, w ViewWriter, opts ReplayOptions, cps []int64, target int64) (int64, error) {
	uniform := !slices.ContainsFunc(cps, func(cp int64) bool { return cp != cps[0] })
	applied := slices.Min(cps)
	views := NewBufferedViews(tx, opts.Reset)
	// Pages are read ahead on another connection while this one applies
	// and flushes: reading and writing overlap.
	pages, stopReading := readAhead(ctx, db, applied, target)
	defer stopReading()
	for applied < target {
		pg, ok := <-pages
		if !ok {
			break
		}
		if pg.err != nil {
			return 0, pg.err
		}
		for _, e := range pg.events {
			apply := uniform
			if !uniform {
				p := opts.PartitionOf(e)
				if p < 0 || p >= len(cps) {
					return 0, fmt.Errorf("PartitionOf(%d) = %d, outside 0..%d", e.Sequence, p, len(cps)-1)
				}
				apply = e.Sequence > cps[p]
			}
			if apply {
				if err := w.Apply(ctx, views, e); err != nil {
					return 0, err
				}
			}
			applied = e.Sequence
		}
		if views.Pending() >= replayFlushRows {
			if err := views.Flush(ctx); err != nil {
				return 0, err
			}
		}
		if opts.Progress != nil {
			opts.Progress(applied, target)
		}
	}
	return applied, views.Flush(ctx)
}

// TailOptions configures Tail.
type TailOptions struct {
	// Batch is the page size (DefaultBatch when 0).
	Batch int
	// Poll is the longest wait between reads when no wake-up arrives
	// (500ms when 0).
	Poll time.Duration
}

// Tail follows the log from the cursor after: it yields every event with a
// larger sequence in order, then waits for more. It ends cleanly (no error)
// when the consumer stops ranging or ctx is cancelled; a read error is
// yielded once and ends it.
func Tail(ctx context.Context, db DB, after int64, opts TailOptions) iter.Seq2[Event, error] {
	if opts.Batch <= 0 {
		opts.Batch = DefaultBatch
	}
	if opts.Poll <= 0 {
		opts.Poll = 500 * time.Millisecond
	}
	return func(yield func(Event, error) bool) {
		cursor := after
		timer := time.NewTimer(opts.Poll)
		defer timer.Stop()
		for ctx.Err() == nil {
			signal := db.AppendSignal()
			batch, err := db.Fetch(ctx, cursor, opts.Batch)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				yield(Event{}, err)
				return
			}
			for _, e := range batch {
				if !yield(e, nil) {
					return
				}
				cursor = e.Sequence
			}
			if len(batch) < opts.Batch {
				timer.Reset(opts.Poll)
				select {
				case <-signal:
				case <-timer.C:
				case <-ctx.Done():
					return
				}
			}
		}
	}
}

// All yields every event with sequence > after that is committed when the
// iteration reaches it, page by page, then ends.
func All(ctx context.Context, db DB, after int64, batch int) iter.Seq2[Event, error] {
	if batch <= 0 {
		batch = DefaultBatch
	}
	return func(yield func(Event, error) bool) {
		cursor := after
		for {
			page, err := db.Fetch(ctx, cursor, batch)
			if err != nil {
				yield(Event{}, err)
				return
			}
			for _, e := range page {
				if !yield(e, nil) {
					return
				}
				cursor = e.Sequence
			}
			if len(page) < batch {
				return
			}
		}
	}
}
