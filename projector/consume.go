package projector

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sourcegraph/conc"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/internal/backoff"
	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

// partition is the state of one partition while this worker applies it.
type partition struct {
	p   int
	log *zap.Logger
	// cp is the checkpoint as this worker last saw it: every event of the
	// partition up to cp is applied. The compare-and-set in every
	// transaction tells the worker when somebody else moved it.
	cp      int64
	parked  *store.Parked
	retryAt time.Time
	// parkedNow is set when this round of follow parked the partition: the
	// round stops there. parked alone may be an earlier park being retried.
	parkedNow bool
}

// runPartition applies partition p until ctx ends: it follows the stream
// from the checkpoint, and starts over from the checkpoint after an error
// (after a pause that doubles, up to 5 s, while errors repeat; only the
// first of a series is logged as a warning) or when a parked partition's
// retry is due. A NATS connection closed for good ends Run.
func (w *Worker) runPartition(ctx context.Context, p int) error {
	st := &partition{p: p, log: w.log.With(zap.Int("partition", p))}
	failures, bo := 0, partitionRetry.Backoff()
	for ctx.Err() == nil {
		began := time.Now()
		err := w.follow(ctx, st)
		if time.Since(began) > 30*time.Second {
			failures, bo = 0, partitionRetry.Backoff() // it worked for a while: a new series of errors
		}
		switch {
		case errors.Is(err, errCrashed):
			return err
		case errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, jetstream.ErrConnectionClosed):
			return fmt.Errorf("projector: %w", err)
		}
		wait := time.Duration(0)
		if err != nil && ctx.Err() == nil {
			log := st.log.Debug
			if failures == 0 {
				log = st.log.Warn
			}
			log("partition error; starting over from the checkpoint", zap.Error(err), zap.Int("failures", failures+1))
			wait, _ = bo.Next()
			failures++
		}
		if st.parked != nil {
			wait = max(wait, time.Until(st.retryAt))
		}
		backoff.Sleep(ctx, wait)
	}
	return nil
}

// partitionRetry is the pause before a partition starts over after an error.
var partitionRetry = backoff.Policy{Min: 500 * time.Millisecond, Max: 5 * time.Second}

// follow loads the partition's checkpoint, reads the partition's messages
// from the first one after it with an ordered consumer (no acks, no state
// kept on the server) and applies them in batches of whatever has arrived,
// up to BatchSize. It returns nil when ctx ends or the partition parks.
func (w *Worker) follow(ctx context.Context, st *partition) error {
	st.parkedNow = false
	if err := w.load(ctx, st); err != nil {
		return err
	}
	if st.parked != nil && time.Now().Before(st.retryAt) {
		return nil
	}
	msgs, errc, stop, err := w.subscribe(ctx, st)
	if err != nil {
		return err
	}
	defer stop()
	idle := time.NewTimer(w.cfg.IdleWait)
	defer idle.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return fmt.Errorf("consuming: %w", err)
		case <-idle.C:
			if err := w.advanceIdle(ctx, st); errors.Is(err, errInterrupted) || ctx.Err() != nil {
				return nil
			} else if err != nil {
				return err
			}
		case m := <-msgs:
			// Wait for a transaction slot before taking what has arrived:
			// while partitions queue for the database their messages pile
			// up, and each then commits them in one transaction.
			if !w.acquireSlot(ctx) {
				return nil
			}
			batch := []jetstream.Msg{m}
		drain:
			for len(batch) < w.cfg.BatchSize {
				select {
				case m := <-msgs:
					batch = append(batch, m)
				default:
					break drain
				}
			}
			err := w.handle(ctx, st, batch)
			w.releaseSlot()
			if errors.Is(err, errInterrupted) {
				return nil
			} else if err != nil || st.parkedNow {
				return err
			}
		}
		idle.Reset(w.cfg.IdleWait)
	}
}

// subscribe starts an ordered consumer of partition st.p at the first
// stream message after the checkpoint and a goroutine that feeds its
// messages to the returned channel; stop ends both.
func (w *Worker) subscribe(ctx context.Context, st *partition) (<-chan jetstream.Msg, <-chan error, func(), error) {
	start, err := w.startSeq(ctx, st.p, st.cp)
	if err != nil {
		return nil, nil, nil, err
	}
	cons, err := w.js.OrderedConsumer(ctx, w.cfg.Stream, jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{wire.PartitionFilter(st.p)},
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       start,
		InactiveThreshold: 30 * time.Second,
	})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(2 * w.cfg.BatchSize))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("consumer: %w", err)
	}
	msgs := make(chan jetstream.Msg, w.cfg.BatchSize)
	errc := make(chan error, 1)
	quit := make(chan struct{})
	var wg conc.WaitGroup
	wg.Go(func() {
		for {
			m, err := it.Next()
			if err != nil {
				if !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					errc <- err
				}
				return
			}
			select {
			case msgs <- m:
			case <-quit:
				return
			}
		}
	})
	stop := func() {
		close(quit)
		it.Stop()
		wg.Wait()
	}
	return msgs, errc, stop, nil
}

// handle applies a batch of the partition's messages in stream order. A
// message at or below what is applied is skipped. A message whose
// partition predecessor (Artifactstore-Partition-Previous) is above what
// is applied means the stream lacks events of this partition: they are
// applied from the log first. A message that does not decode parks the
// partition after the messages before it are applied.
func (w *Worker) handle(ctx context.Context, st *partition, msgs []jetstream.Msg) error {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.cfg.ShutdownTimeout)
	defer cancel()
	pl := partLabel(st.p)
	pending := -1.0
	defer func() {
		if pending >= 0 {
			w.m.lag.WithLabelValues(w.cfg.Projection, pl).Set(pending)
		}
	}()
	events := make([]store.Event, 0, len(msgs))
	applied := func() int64 {
		if len(events) > 0 {
			return max(st.cp, events[len(events)-1].Sequence)
		}
		return st.cp
	}
	for _, m := range msgs {
		wm, err := Decode(m.Subject(), m.Headers(), m.Data(), w.logID, w.parts)
		if err == nil && wm.Partition != st.p {
			err = fmt.Errorf("%w: event %d of partition %d delivered to partition %d", ErrStreamMismatch, wm.Event.Sequence, wm.Partition, st.p)
		}
		if err != nil {
			if err := w.commit(wctx, st, events); err != nil || st.parkedNow {
				return err
			}
			seq, _ := strconv.ParseInt(m.Headers().Get(wire.HeaderSequence), 10, 64)
			attempts := 1
			if st.parked != nil && st.parked.Sequence == seq {
				attempts += st.parked.Attempts
			}
			return w.park(wctx, st, store.ParkedPoison, seq, m.Headers().Get(wire.HeaderEventType), err, attempts)
		}
		if md, err := m.Metadata(); err == nil {
			pending = float64(md.NumPending)
		}
		e := wm.Event
		if e.Sequence <= applied() {
			w.m.skipped.WithLabelValues(w.cfg.Projection, pl).Inc()
			continue
		}
		if wm.Previous > applied() {
			if err := w.commit(wctx, st, events); err != nil || st.parkedNow {
				return err
			}
			events = events[:0]
			w.m.errors.WithLabelValues(w.cfg.Projection, "gap").Inc()
			st.log.Warn("the stream lacks events of this partition; applying them from the log",
				zap.Int64("sequence", e.Sequence), zap.Int64("previous", wm.Previous), zap.Int64("checkpoint", st.cp))
			if err := w.catchUp(wctx, st, e.Sequence-1, ctx.Done()); err != nil || st.parkedNow {
				return err
			}
		}
		events = append(events, e)
	}
	return w.commit(wctx, st, events)
}

// Decode rebuilds the event of a stream message with the contract's checks
// (wire.Decode), and checks that it comes from the log logID and that its
// partition is its subject id's among the log's parts partitions.
func Decode(subject string, h nats.Header, body []byte, logID string, parts int) (wire.Message, error) {
	m, err := wire.Decode(subject, h, body)
	if err != nil {
		return wire.Message{}, fmt.Errorf("projector: %w", err)
	}
	if m.LogID != logID {
		return wire.Message{}, fmt.Errorf("%w: event %d is from log %q, not %q", ErrStreamMismatch, m.Event.Sequence, m.LogID, logID)
	}
	if want := wire.Partition(m.Event.SubjectID, parts); m.Partition != want {
		return wire.Message{}, fmt.Errorf("%w: event %d of subject %s is in partition %d, the log's %d partitions put it in %d",
			ErrStreamMismatch, m.Event.Sequence, m.Event.SubjectID, m.Partition, parts, want)
	}
	return m, nil
}

func partLabel(p int) string { return strconv.Itoa(p) }

// acquireSlot waits for one of the worker's Concurrency transaction slots;
// false when ctx ends first.
func (w *Worker) acquireSlot(ctx context.Context) bool {
	select {
	case w.slots <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (w *Worker) releaseSlot() { <-w.slots }
