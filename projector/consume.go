package projector

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

// partition is the state of one partition while this worker owns it.
type partition struct {
	p    int
	cons jetstream.Consumer
	log  *zap.Logger
	// cp is the checkpoint as this worker last saw it; the compare-and-set
	// in every transaction tells it when somebody else moved it.
	cp      int64
	parked  *store.Parked
	retryAt time.Time
	// gapTries counts refetches since gapSince while event gapSeq is
	// missing.
	gapTries int
	gapSeq   int64
	gapSince time.Time
}

// applyError is a handler failure at events[index] of a batch.
type applyError struct {
	index int
	err   error
}

func (e *applyError) Error() string { return e.err.Error() }
func (e *applyError) Unwrap() error { return e.err }

// consume owns partition p until ctx ends.
func (w *Worker) consume(ctx context.Context, p int, stop <-chan struct{}) error {
	st := &partition{p: p, log: w.log.With(zap.Int("partition", p))}
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return ctx.Err() != nil
		}
	}
	backoff := func(err error) bool {
		if stopped() {
			return false
		}
		st.log.Warn("partition error; retrying", zap.Error(err))
		select {
		case <-ctx.Done():
			return false
		case <-stop:
			return false
		case <-time.After(500 * time.Millisecond):
			return true
		}
	}
	for {
		err := w.startPartition(ctx, st)
		if err == nil {
			break
		}
		if errors.Is(err, errCrashed) {
			return err
		}
		if !backoff(err) {
			return nil
		}
	}
	for !stopped() {
		if st.parked != nil && time.Now().Before(st.retryAt) {
			select {
			case <-ctx.Done():
			case <-stop:
			case <-time.After(time.Until(st.retryAt)):
			}
			continue
		}
		err := w.fetchAndApply(ctx, st)
		if errors.Is(err, errCrashed) {
			return err
		}
		if err != nil && !backoff(err) {
			break
		}
	}
	// Hand the partition over now rather than after PinnedTTL.
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	if s, err := w.js.Stream(uctx, w.derived); err == nil {
		_ = s.UnpinConsumer(uctx, consumerName(w.cfg.Projection, p), priorityGroup)
	}
	return nil
}

// startPartition loads the partition's checkpoint and parked record, gets
// its consumer and catches up from the log when the stream no longer
// holds what comes after the checkpoint.
func (w *Worker) startPartition(ctx context.Context, st *partition) error {
	cons, err := w.js.Consumer(ctx, w.derived, consumerName(w.cfg.Projection, st.p))
	if err != nil {
		return fmt.Errorf("consumer: %w", err)
	}
	st.cons = cons
	if err := w.db.InTx(ctx, func(tx store.Tx) error {
		st.cp, err = tx.Checkpoint(ctx, w.cfg.Projection, st.p)
		return err
	}); err != nil {
		return fmt.Errorf("reading checkpoint: %w", err)
	}
	parked, err := w.db.Parked(ctx)
	if err != nil {
		return fmt.Errorf("reading parked partitions: %w", err)
	}
	st.parked = nil
	for _, rec := range parked {
		if rec.Projection == w.cfg.Projection && rec.Partition == st.p {
			st.parked, st.retryAt = &rec, time.Now()
			st.log.Warn("partition is parked; retrying its event", zap.Int64("sequence", rec.Sequence), zap.String("reason", rec.Reason))
		}
	}
	w.setParkedMetric(st)
	w.m.checkpoint.WithLabelValues(w.cfg.Projection, partLabel(st.p)).Set(float64(st.cp))
	first, err := w.firstHeld(ctx)
	if err != nil {
		return err
	}
	if first > st.cp+1 {
		return w.catchUp(ctx, st, first-1)
	}
	return nil
}

// fetchAndApply pulls one batch and applies it in groups: as many messages
// as have arrived (up to BatchSize) go into one transaction.
//
// A group that waits for a missing predecessor is held (neither acked nor
// nakked) and handled again with the next messages of the same fetch: the
// predecessor is often among them, since redeliveries do not come in
// sequence order (messages nakked at different times, some with a delay).
// Only what is still held when the fetch ends counts as a gap.
//
// The pull request expires on the server (FetchMaxWait), not on a client
// deadline: the server says it has ended on the same subscription, after
// the last message it sent, so every message delivered to this worker is
// received. With a context deadline (FetchContext) the client ends the
// fetch on its own clock, 10 % after the server's expiry, and drops what
// has arrived but is not yet taken in; on a busy machine those messages
// came back only after AckWait, and the partition waited that long on the
// gap (the projector benchmark drained at 3.5k instead of 9–19k events/s
// in about half its runs). A stop therefore waits for the fetch in flight
// to end, FetchWait at most.
func (w *Worker) fetchAndApply(ctx context.Context, st *partition) error {
	batch, err := st.cons.Fetch(w.cfg.BatchSize, jetstream.FetchMaxWait(w.cfg.FetchWait), jetstream.FetchPriorityGroup(priorityGroup))
	if errors.Is(err, jetstream.ErrPinIDMismatch) {
		return nil // another client holds the pin (or ours expired): pull again
	}
	if err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	msgs := batch.Messages()
	var held []jetstream.Msg
	nakRest := func() {
		for _, m := range held {
			_ = m.Nak()
		}
		held = nil
		for m := range msgs {
			_ = m.Nak()
		}
	}
	received := 0
	for {
		m, ok := <-msgs
		if !ok {
			break
		}
		received++
		group := append(held, m)
		held = nil
	drain:
		for len(group) < w.cfg.BatchSize {
			select {
			case m, ok := <-msgs:
				if !ok {
					break drain
				}
				group = append(group, m)
				received++
			default:
				break drain
			}
		}
		if ctx.Err() != nil {
			for _, m := range group {
				_ = m.Nak()
			}
			nakRest()
			return nil
		}
		parked := st.parked
		held, err = w.handle(ctx, st, group, false)
		if err != nil {
			if errors.Is(err, errCrashed) {
				return err
			}
			nakRest()
			return err
		}
		if st.parked != nil && st.parked != parked {
			nakRest()
			return nil
		}
	}
	if len(held) > 0 {
		if ctx.Err() != nil {
			for _, m := range held {
				_ = m.Nak()
			}
			return nil
		}
		if _, err := w.handle(ctx, st, held, true); err != nil {
			return err
		}
	}
	if err := batch.Error(); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) &&
		!errors.Is(err, nats.ErrTimeout) && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, jetstream.ErrPinIDMismatch) {
		return fmt.Errorf("fetch: %w", err)
	}
	if received == 0 && st.parked == nil && ctx.Err() == nil {
		return w.advanceIdle(ctx, st)
	}
	return nil
}

// advanceIdle moves an idle partition's checkpoint up to the log head when
// the log holds none of its events above the checkpoint (or up to just
// below the first one that is still on its way). The checkpoint means
// "every event of this partition up to here is applied", so this is true
// by construction, and it keeps status's lag honest for partitions that
// see no events. The write is compare-and-set like every other.
func (w *Worker) advanceIdle(ctx context.Context, st *partition) error {
	head, err := w.db.Head(ctx)
	if err != nil || head <= st.cp {
		return err
	}
	keys, err := w.partitionKeys(ctx, st.p, st.cp, head)
	if err != nil {
		return err
	}
	to := head
	if len(keys) > 0 {
		to = keys[0].Sequence - 1
	}
	if to <= st.cp {
		return nil
	}
	err = w.db.InTx(ctx, func(tx store.Tx) error {
		return tx.AdvanceCheckpoint(ctx, w.cfg.Projection, st.p, st.cp, to)
	})
	if errors.Is(err, store.ErrCheckpointMoved) {
		return w.reloadCheckpoint(ctx, st)
	}
	if err != nil {
		return err
	}
	st.cp = to
	w.m.checkpoint.WithLabelValues(w.cfg.Projection, partLabel(st.p)).Set(float64(to))
	return nil
}

type delivered struct {
	e    store.Event
	msgs []jetstream.Msg
}

// handle applies one group of messages. Every message ends acked (applied
// now or before) or nakked (to be delivered again), except, when final is
// false, those that wait for a missing predecessor: handle returns them
// untouched, for the caller to hand in again with the next messages of the
// fetch. handle returns an error only for failures worth a pause (store or
// NATS unavailable); the messages it returns are then the caller's to nak.
func (w *Worker) handle(ctx context.Context, st *partition, msgs []jetstream.Msg, final bool) (held []jetstream.Msg, err error) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.cfg.ShutdownTimeout)
	defer cancel()
	pl := partLabel(st.p)
	nak := func(ms []jetstream.Msg) {
		for _, m := range ms {
			_ = m.Nak()
		}
	}
	bySeq := map[int64]*delivered{}
	var pending uint64
	for _, m := range msgs {
		e, err := Decode(m.Subject(), m.Headers(), m.Data(), w.logID)
		if err == nil && Partition(e.SubjectID, w.cfg.Partitions) != st.p {
			err = fmt.Errorf("%w: event %d of subject %s delivered to partition %d", ErrStreamMismatch, e.Sequence, e.SubjectID, st.p)
		}
		if err != nil {
			seq, _ := strconv.ParseInt(m.Headers().Get(wire.HeaderSequence), 10, 64)
			return held, w.park(wctx, st, store.ParkedPoison, seq, m.Headers().Get(wire.HeaderEventType), err, 1, msgs)
		}
		if md, err := m.Metadata(); err == nil {
			pending = md.NumPending
			if md.NumDelivered > 1 {
				w.m.redelivered.WithLabelValues(w.cfg.Projection, partLabel(st.p)).Inc()
			}
		}
		if d := bySeq[e.Sequence]; d != nil {
			d.msgs = append(d.msgs, m)
		} else {
			bySeq[e.Sequence] = &delivered{e: e, msgs: []jetstream.Msg{m}}
		}
	}
	if st.gapTries > 0 && bySeq[st.gapSeq] != nil {
		// The awaited predecessor is here: it was not lost (a failure
		// after its delivery sent it back), so the gap's clock restarts.
		st.gapTries = 0
	}
	items := make([]*delivered, 0, len(bySeq))
	for _, d := range bySeq {
		items = append(items, d)
	}
	slices.SortFunc(items, func(a, b *delivered) int { return cmp.Compare(a.e.Sequence, b.e.Sequence) })
	defer w.m.lag.WithLabelValues(w.cfg.Projection, pl).Set(float64(pending))

	for moved := 0; ; {
		// Idempotent by sequence: what is at or below the checkpoint is
		// applied already.
		i := 0
		for i < len(items) && items[i].e.Sequence <= st.cp {
			for _, m := range items[i].msgs {
				_ = m.Ack()
			}
			w.m.skipped.WithLabelValues(w.cfg.Projection, pl).Inc()
			i++
		}
		items = items[i:]
		if len(items) == 0 {
			return held, nil
		}
		fresh := func() []jetstream.Msg {
			var out []jetstream.Msg
			for _, d := range items {
				out = append(out, d.msgs...)
			}
			return out
		}
		last := items[len(items)-1].e.Sequence

		// Gap check against the log: the partition's events in (cp, last]
		// must be exactly the ones delivered.
		keys, err := w.partitionKeys(wctx, st.p, st.cp, last)
		if err != nil {
			nak(fresh())
			return held, fmt.Errorf("reading log keys: %w", err)
		}
		var missing []int64
		j := 0
		for _, k := range keys {
			if j < len(items) && items[j].e.Sequence == k.Sequence {
				if items[j].e.PayloadDigest != k.PayloadDigest {
					err := fmt.Errorf("%w: event %d payload digest differs from the log's", ErrStreamMismatch, k.Sequence)
					return held, w.park(wctx, st, store.ParkedPoison, k.Sequence, items[j].e.Type, err, 1, fresh())
				}
				j++
				continue
			}
			missing = append(missing, k.Sequence)
		}
		if j < len(items) {
			err := fmt.Errorf("%w: event %d is not in the log's partition %d", ErrStreamMismatch, items[j].e.Sequence, st.p)
			return held, w.park(wctx, st, store.ParkedPoison, items[j].e.Sequence, items[j].e.Type, err, 1, fresh())
		}
		if len(missing) > 0 && !final && items[0].e.Sequence > missing[0] {
			// The predecessor may come later in this fetch.
			return append(held, fresh()...), nil
		}
		if len(missing) > 0 {
			// Another worker (the previous owner finishing its last batch)
			// may have applied them: a gap counts only against the
			// checkpoint in the database.
			prev := st.cp
			if err := w.reloadCheckpoint(wctx, st); err != nil {
				nak(fresh())
				return held, err
			}
			if st.cp != prev {
				continue
			}
			first, err := w.firstHeld(wctx)
			if err != nil {
				nak(fresh())
				return held, err
			}
			if missing[0] < first {
				// The stream no longer holds them: catch up from the log.
				if err := w.catchUp(wctx, st, first-1); err != nil {
					nak(fresh())
					return held, err
				}
				if st.parked != nil && st.parked.Reason == store.ParkedPoison && st.parked.Sequence < first {
					nak(fresh())
					return held, nil
				}
				continue
			}
			if items[0].e.Sequence < missing[0] {
				// Apply what is contiguous; the rest comes again.
				k := 0
				for k < len(items) && items[k].e.Sequence < missing[0] {
					k++
				}
				var later []jetstream.Msg
				for _, d := range items[k:] {
					later = append(later, d.msgs...)
				}
				if final {
					for _, m := range later {
						_ = m.NakWithDelay(w.gapDelay())
					}
				} else {
					held = append(held, later...)
				}
				items = items[:k]
				continue
			}
			// The predecessor may still be out with a worker that died or
			// stalled: it comes back after AckWait. Only a gap that outlives
			// that parks the partition.
			if st.gapTries == 0 || st.gapSeq != missing[0] {
				st.gapTries, st.gapSeq, st.gapSince = 0, missing[0], time.Now()
			}
			st.gapTries++
			w.m.errors.WithLabelValues(w.cfg.Projection, "gap").Inc()
			gapErr := fmt.Errorf("event %d arrived but event %d of partition %d (after checkpoint %d) was not delivered",
				items[0].e.Sequence, missing[0], st.p, st.cp)
			if st.gapTries > w.cfg.GapRetries && time.Since(st.gapSince) > 2*w.cfg.AckWait {
				attempts := st.gapTries
				if st.parked != nil && st.parked.Reason == store.ParkedGap && st.parked.Sequence == missing[0] {
					attempts += st.parked.Attempts
				}
				// The retry after ParkRetry gets a full window again rather
				// than parking on its first look.
				st.gapTries = 0
				return held, w.park(wctx, st, store.ParkedGap, missing[0], "", gapErr, attempts, fresh())
			}
			if st.gapTries == 1 {
				st.log.Info("partition waits for a predecessor to be redelivered", zap.Error(gapErr))
			}
			for _, m := range fresh() {
				_ = m.NakWithDelay(w.gapDelay())
			}
			return held, nil
		}
		st.gapTries = 0

		events := make([]store.Event, len(items))
		for k, d := range items {
			events[k] = d.e
		}
		err = w.apply(wctx, st, events, last)
		var ae *applyError
		switch {
		case err == nil:
			if err := w.afterCommit(st, last); err != nil {
				return held, err
			}
			for _, m := range fresh() {
				_ = m.Ack()
			}
			return held, nil
		case errors.Is(err, errCrashed):
			return held, err
		case errors.Is(err, store.ErrCheckpointMoved):
			// Another worker (that still thinks it owns the partition, or
			// took it over) advanced it: re-read and drop what it applied.
			w.m.errors.WithLabelValues(w.cfg.Projection, "checkpoint_moved").Inc()
			if err := w.reloadCheckpoint(wctx, st); err != nil || moved > 3 {
				nak(fresh())
				return held, err
			}
			moved++
			continue
		case errors.As(err, &ae):
			err := w.applyPoison(wctx, st, events, ae)
			if errors.Is(err, errCrashed) {
				return held, err
			}
			if err != nil || st.parked != nil {
				// Everything not applied goes back to the stream.
				var rest []jetstream.Msg
				for _, d := range items {
					if d.e.Sequence > st.cp {
						rest = append(rest, d.msgs...)
					} else {
						for _, m := range d.msgs {
							_ = m.Ack()
						}
					}
				}
				nak(rest)
				return held, err
			}
			continue
		default:
			w.m.errors.WithLabelValues(w.cfg.Projection, "store").Inc()
			nak(fresh())
			return held, err
		}
	}
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
	for a := 1; a < w.cfg.MaxAttempts; a++ {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(50*time.Millisecond<<a, 2*time.Second)):
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
	return w.park(ctx, st, store.ParkedPoison, e.Sequence, e.Type, last, attempts, nil)
}

// apply applies events (all of partition st.p, in order) and advances the
// checkpoint from st.cp to to, in one transaction.
func (w *Worker) apply(ctx context.Context, st *partition, events []store.Event, to int64) error {
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
	pl := partLabel(st.p)
	st.cp = to
	w.m.checkpoint.WithLabelValues(w.cfg.Projection, pl).Set(float64(to))
	w.m.applied.WithLabelValues(w.cfg.Projection, pl).Add(float64(len(events)))
	w.m.batches.WithLabelValues(w.cfg.Projection, pl).Inc()
	if st.parked != nil {
		st.log.Info("partition resumed", zap.Int64("sequence", st.parked.Sequence), zap.String("reason", st.parked.Reason))
		st.parked = nil
		w.setParkedMetric(st)
	}
	return nil
}

func (w *Worker) afterCommit(st *partition, last int64) error {
	if h := w.cfg.hooks.afterCommit; h != nil {
		if err := h(st.p, last); err != nil {
			return fmt.Errorf("%w: %w", errCrashed, err)
		}
	}
	return nil
}

func (w *Worker) reloadCheckpoint(ctx context.Context, st *partition) error {
	return w.db.InTx(ctx, func(tx store.Tx) error {
		cp, err := tx.Checkpoint(ctx, w.cfg.Projection, st.p)
		st.cp = cp
		return err
	})
}

// park records that the partition stopped on event seq, naks msgs and
// schedules the next attempt after ParkRetry.
func (w *Worker) park(ctx context.Context, st *partition, reason string, seq int64, eventType string, cause error, attempts int, msgs []jetstream.Msg) error {
	for _, m := range msgs {
		_ = m.Nak()
	}
	rec := store.Parked{
		Projection: w.cfg.Projection, Partition: st.p, Sequence: seq, EventType: eventType, Reason: reason,
		Error: cause.Error(), Worker: w.cfg.WorkerID, Attempts: attempts, ParkedAt: time.Now().UTC(),
	}
	if err := w.db.InTx(ctx, func(tx store.Tx) error { return tx.Park(ctx, rec) }); err != nil {
		return fmt.Errorf("parking partition: %w", err)
	}
	st.parked, st.retryAt = &rec, time.Now().Add(w.cfg.ParkRetry)
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

// firstHeld returns the sequence of the first event the derived stream
// still holds (0 when it holds none).
func (w *Worker) firstHeld(ctx context.Context) (int64, error) {
	s, err := w.js.Stream(ctx, w.derived)
	if err != nil {
		return 0, fmt.Errorf("stream info: %w", err)
	}
	state := s.CachedInfo().State
	if state.Msgs == 0 {
		return 0, nil
	}
	m, err := s.GetMsg(ctx, state.FirstSeq, jetstream.WithGetMsgSubject(partitionedPrefix+">"))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("first stream message: %w", err)
	}
	seq, err := strconv.ParseInt(m.Header.Get(wire.HeaderSequence), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("first stream message: bad %s header", wire.HeaderSequence)
	}
	return seq, nil
}

// catchUp applies the partition's events in (st.cp, upTo] from the log,
// in transactions of up to BatchSize events: the stream no longer holds
// them. A handler failure parks the partition.
func (w *Worker) catchUp(ctx context.Context, st *partition, upTo int64) error {
	if st.cp >= upTo {
		return nil
	}
	st.log.Info("catching up from the log", zap.Int64("checkpoint", st.cp), zap.Int64("up_to", upTo))
	const page = store.DefaultBatch
	var mine []store.Event
	flush := func(to int64) error {
		err := w.apply(ctx, st, mine, to)
		var ae *applyError
		if errors.As(err, &ae) {
			if err := w.applyPoison(ctx, st, mine, ae); err != nil {
				return err
			}
			if st.parked != nil {
				return nil
			}
			mine = slices.DeleteFunc(mine, func(e store.Event) bool { return e.Sequence <= st.cp })
			return w.apply(ctx, st, mine, to)
		}
		if err != nil {
			return err
		}
		w.m.caughtUp.WithLabelValues(w.cfg.Projection, partLabel(st.p)).Add(float64(len(mine)))
		return w.afterCommit(st, to)
	}
	cursor := st.cp
	for cursor < upTo && st.parked == nil {
		evs, err := w.db.Fetch(ctx, cursor, int(min(page, upTo-cursor)))
		if err != nil {
			return fmt.Errorf("catch-up: %w", err)
		}
		if len(evs) == 0 {
			break
		}
		for _, e := range evs {
			if Partition(e.SubjectID, w.cfg.Partitions) == st.p {
				mine = append(mine, e)
			}
			cursor = e.Sequence
		}
		if len(mine) >= w.cfg.BatchSize || cursor >= upTo || len(evs) < page {
			if err := flush(cursor); err != nil {
				return err
			}
			mine = mine[:0]
		}
	}
	return nil
}

// gapDelay is how long messages delivered ahead of a missing predecessor
// wait before they come again.
func (w *Worker) gapDelay() time.Duration { return min(w.cfg.AckWait/4, time.Second) }
