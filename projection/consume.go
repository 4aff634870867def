package projection

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

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

// partition is the state of one partition while this instance applies it.
type partition struct {
	p   int
	log *zap.Logger
	// cp is the checkpoint as this instance last saw it: every event of the
	// partition up to cp is applied. The compare-and-set in every
	// transaction tells the instance when somebody else moved it.
	cp     int64
	parked *Parked
	// parkedNow is set when the partition parked during this follow: it
	// stops. (parked alone may be an earlier park being retried.)
	parkedNow bool
	retryAt   time.Time
}

// runPartition applies partition p until ctx ends: it follows the stream
// from the checkpoint, and starts over from the checkpoint after an error
// (after a pause that doubles up to 5 s while errors repeat; the first of
// a series is logged as a warning) or when a parked partition's retry is
// due. A NATS connection closed for good ends Run.
func (r *Runner) runPartition(ctx context.Context, p int) error {
	st := &partition{p: p, log: r.log.With(zap.Int("partition", p))}
	failures := 0
	for ctx.Err() == nil {
		began := time.Now()
		err := r.follow(ctx, st)
		if time.Since(began) > 30*time.Second {
			failures = 0
		}
		switch {
		case errors.Is(err, errCrashed):
			return err
		case errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, jetstream.ErrConnectionClosed):
			return fmt.Errorf("projection: %w", err)
		}
		wait := time.Duration(0)
		if err != nil && ctx.Err() == nil {
			log := st.log.Debug
			if failures == 0 {
				log = st.log.Warn
			}
			log("partition error; starting over from the checkpoint", zap.Error(err), zap.Int("failures", failures+1))
			wait = min(500*time.Millisecond<<min(failures, 4), 5*time.Second)
			failures++
		}
		if st.parked != nil {
			wait = max(wait, time.Until(st.retryAt))
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	return nil
}

// follow loads the partition's checkpoint, reads the partition's messages
// from the first one after it with an ordered consumer and applies them in
// batches of whatever has arrived, up to BatchSize. It returns nil when ctx
// ends or the partition parks.
func (r *Runner) follow(ctx context.Context, st *partition) error {
	if err := r.load(ctx, st); err != nil {
		return err
	}
	st.parkedNow = false
	if st.parked != nil && time.Now().Before(st.retryAt) {
		return nil
	}
	msgs, errc, stop, err := r.subscribe(ctx, st)
	if err != nil {
		return err
	}
	defer stop()
	idle := time.NewTimer(r.cfg.IdleWait)
	defer idle.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return fmt.Errorf("consuming: %w", err)
		case <-idle.C:
			if err := r.idle(ctx, st); err != nil {
				return err
			}
		case m := <-msgs:
			// Wait for a transaction slot before taking what has arrived:
			// while partitions queue for the database their messages pile
			// up, and each then commits them in one transaction.
			if !r.acquireSlot(ctx) {
				return nil
			}
			batch := []jetstream.Msg{m}
		drain:
			for len(batch) < r.cfg.BatchSize {
				select {
				case m := <-msgs:
					batch = append(batch, m)
				default:
					break drain
				}
			}
			err := r.handle(ctx, st, batch)
			r.releaseSlot()
			if errors.Is(err, errInterrupted) {
				return nil
			} else if err != nil || st.parkedNow {
				return err
			}
		}
		idle.Reset(r.cfg.IdleWait)
	}
}

// idle runs when the partition received nothing for IdleWait. A parked
// partition whose message the stream no longer holds (an operator removed
// it, or the stream's limits did) is cleared: nothing blocks it any more.
func (r *Runner) idle(ctx context.Context, st *partition) error {
	r.m.lag.WithLabelValues(r.p.Name, partLabel(st.p)).Set(0)
	if st.parked == nil {
		return nil
	}
	s, err := r.js.Stream(ctx, r.cfg.Stream)
	if err != nil {
		return fmt.Errorf("stream info: %w", err)
	}
	start, err := startSeq(ctx, s, st.p, st.cp)
	if err != nil || start <= s.CachedInfo().State.LastSeq {
		return err // a message above the checkpoint is still to come
	}
	if _, err := r.pool.Exec(ctx, `DELETE FROM projection_parked WHERE projection = $1 AND partition = $2`, r.p.Name, st.p); err != nil {
		return fmt.Errorf("clearing the parked record: %w", err)
	}
	st.log.Info("partition resumed: the stream no longer holds the message it was parked on",
		zap.Int64("sequence", st.parked.Sequence), zap.String("reason", st.parked.Reason))
	st.parked = nil
	r.setParkedMetric(st)
	return nil
}

// subscribe starts an ordered consumer of partition st.p at the first
// stream message after the checkpoint and a goroutine that feeds its
// messages to the returned channel; stop ends both.
func (r *Runner) subscribe(ctx context.Context, st *partition) (<-chan jetstream.Msg, <-chan error, func(), error) {
	start, err := r.startSeq(ctx, st.p, st.cp)
	if err != nil {
		return nil, nil, nil, err
	}
	cons, err := r.js.OrderedConsumer(ctx, r.cfg.Stream, jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{wire.PartitionFilter(st.p)},
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       start,
		InactiveThreshold: 30 * time.Second,
	})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(2 * r.cfg.BatchSize))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("consumer: %w", err)
	}
	msgs := make(chan jetstream.Msg, r.cfg.BatchSize)
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
// message at or below the checkpoint is skipped. A message whose partition
// predecessor (Artifactstore-Partition-Previous) is above what is applied
// means the stream lacks events of this partition: they are applied from
// the log source when there is one; otherwise the partition parks with
// reason gap, its checkpoint before them. A message that is not a valid
// event of the projection's log and partition parks it with reason invalid.
// Either way the messages before are applied first.
func (r *Runner) handle(ctx context.Context, st *partition, msgs []jetstream.Msg) error {
	wctx, cancel := r.graceful(ctx)
	defer cancel()
	pl := partLabel(st.p)
	pending := -1.0
	defer func() {
		if pending >= 0 {
			r.m.lag.WithLabelValues(r.p.Name, pl).Set(pending)
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
		wm, err := decode(m.Subject(), m.Headers(), m.Data(), r.id.logID, r.id.parts)
		if err == nil && wm.Partition != st.p {
			err = fmt.Errorf("%w: event %d of partition %d delivered to partition %d", ErrInvalidMessage, wm.Event.Sequence, wm.Partition, st.p)
		}
		if err != nil {
			if err := r.commit(wctx, st, events); err != nil || st.parkedNow {
				return err
			}
			r.m.errors.WithLabelValues(r.p.Name, ReasonInvalid).Inc()
			seq, _ := strconv.ParseInt(m.Headers().Get(wire.HeaderSequence), 10, 64)
			return r.park(wctx, st, ReasonInvalid, seq, m.Headers().Get(wire.HeaderEventType), err, 1)
		}
		if md, err := m.Metadata(); err == nil {
			pending = float64(md.NumPending)
		}
		e := wm.Event
		if e.Sequence <= applied() {
			r.m.skipped.WithLabelValues(r.p.Name, pl).Inc()
			continue
		}
		if wm.Previous > applied() {
			if err := r.commit(wctx, st, events); err != nil || st.parkedNow {
				return err
			}
			events = events[:0]
			if err := r.gap(wctx, ctx.Done(), st, wm); err != nil || st.parkedNow {
				return err
			}
		}
		events = append(events, e)
	}
	return r.commit(wctx, st, events)
}

// gap deals with message m whose predecessor in its partition was never
// applied: the log source supplies the missing events, or the partition
// parks on m with its checkpoint left below them.
func (r *Runner) gap(ctx context.Context, interrupt <-chan struct{}, st *partition, m wire.Message) error {
	r.m.errors.WithLabelValues(r.p.Name, ReasonGap).Inc()
	e := m.Event
	if r.cfg.Log != nil {
		st.log.Warn("the stream lacks events of this partition; applying them from the log",
			zap.Int64("sequence", e.Sequence), zap.Int64("previous", m.Previous), zap.Int64("checkpoint", st.cp))
		return r.catchUp(ctx, st, e.Sequence-1, interrupt)
	}
	cause := fmt.Errorf("the stream lacks events of partition %d: event %d follows event %d, the checkpoint is %d; "+
		"events in (%d, %d] are not in the stream (its limits removed them, or they were lost) and there is no log source",
		st.p, e.Sequence, m.Previous, st.cp, st.cp, m.Previous)
	return r.park(ctx, st, ReasonGap, e.Sequence, e.Type, cause, 1)
}

// startSeq returns the stream sequence to start partition p's consumer at:
// that of its first message whose event is above cp (binary search; the
// stream holds events in log order). A message whose sequence header does
// not parse counts as above: delivered, it parks the partition.
func (r *Runner) startSeq(ctx context.Context, p int, cp int64) (uint64, error) {
	s, err := r.js.Stream(ctx, r.cfg.Stream)
	if err != nil {
		return 0, fmt.Errorf("stream info: %w", err)
	}
	return startSeq(ctx, s, p, cp)
}

func startSeq(ctx context.Context, s jetstream.Stream, p int, cp int64) (uint64, error) {
	state := s.CachedInfo().State
	if state.Msgs == 0 {
		return state.LastSeq + 1, nil
	}
	filter := wire.PartitionFilter(p)
	lo, hi := state.FirstSeq, state.LastSeq+1
	for lo < hi {
		mid := lo + (hi-lo)/2
		m, err := s.GetMsg(ctx, mid, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			hi = mid
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("locating the checkpoint in the stream: %w", err)
		}
		seq, err := strconv.ParseInt(m.Header.Get(wire.HeaderSequence), 10, 64)
		if err != nil || seq > cp {
			hi = mid
			continue
		}
		lo = m.Sequence + 1
	}
	return lo, nil
}

func partLabel(p int) string { return strconv.Itoa(p) }

// acquireSlot waits for one of the instance's Concurrency transaction
// slots; false when ctx ends first.
func (r *Runner) acquireSlot(ctx context.Context) bool {
	select {
	case r.slots <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (r *Runner) releaseSlot() { <-r.slots }

// graceful returns a context for work that must not stop halfway (a
// batch, a catch-up): it ends ShutdownTimeout after ctx does.
func (r *Runner) graceful(ctx context.Context) (context.Context, context.CancelFunc) {
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(r.cfg.ShutdownTimeout, cancel)
		context.AfterFunc(wctx, func() { t.Stop() })
	})
	return wctx, func() { stop(); cancel() }
}
