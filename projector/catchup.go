package projector

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

// keyPage is how many log keys an idle partition reads per query.
const keyPage = 5000

// idlePages bounds the log keys one idle check reads (keyPage each).
const idlePages = 20

// catchUp applies the partition's events in (st.cp, upTo] from the log, in
// transactions of up to BatchSize events: the stream does not hold them.
// A handler failure parks the partition. When interrupt closes (the
// partition is handed over) it stops after the transaction in flight and
// returns errInterrupted: what it committed stays, with its checkpoint.
func (w *Worker) catchUp(ctx context.Context, st *partition, upTo int64, interrupt <-chan struct{}) error {
	if st.cp >= upTo {
		return nil
	}
	st.log.Info("catching up from the log", zap.Int64("checkpoint", st.cp), zap.Int64("up_to", upTo))
	var mine []store.Event
	cursor := st.cp
	for cursor < upTo && !st.parkedNow {
		select {
		case <-interrupt:
			return errInterrupted
		default:
		}
		evs, err := w.db.Fetch(ctx, cursor, int(min(store.DefaultBatch, upTo-cursor)))
		if err != nil {
			return fmt.Errorf("catch-up: %w", err)
		}
		for _, e := range evs {
			if wire.Partition(e.SubjectID, w.parts) == st.p {
				mine = append(mine, e)
			}
			cursor = e.Sequence
		}
		done := len(evs) == 0 || cursor >= upTo
		if len(mine) >= w.cfg.BatchSize || done {
			if err := w.commit(ctx, st, mine); err != nil {
				return err
			}
			w.m.caughtUp.WithLabelValues(w.cfg.Projection, partLabel(st.p)).Add(float64(len(mine)))
			mine = mine[:0]
			if !st.parkedNow && st.cp < cursor {
				// Nothing of the partition up to cursor is left unapplied.
				if err := w.advanceTo(ctx, st, cursor); err != nil {
					return err
				}
			}
		}
		if done {
			break
		}
	}
	return nil
}

// advanceIdle moves an idle partition's checkpoint up to just below its
// first event in the log above the checkpoint (or to the head): the
// checkpoint means "every event of this partition up to here is applied",
// which an idle partition makes true without applying anything, and
// status's lag stays honest. When that first event is older than anything
// the stream still holds, the stream will never deliver it: it is applied
// from the log.
func (w *Worker) advanceIdle(ctx context.Context, st *partition) error {
	head, err := w.db.Head(ctx)
	if err != nil || head <= st.cp {
		return err
	}
	to, first := st.cp, int64(0)
	for page := 0; to < head && first == 0 && page < idlePages; page++ {
		keys, err := w.db.FetchKeys(ctx, to, head, keyPage)
		if err != nil || len(keys) == 0 {
			return err
		}
		for _, k := range keys {
			if wire.Partition(k.SubjectID, w.parts) == st.p {
				first = k.Sequence
				break
			}
			to = k.Sequence
		}
	}
	if err := w.advanceTo(ctx, st, to); err != nil || first == 0 {
		return err
	}
	held, err := w.firstHeld(ctx)
	if err != nil {
		return err
	}
	if held == 0 || first < held {
		upTo := head
		if held > 0 {
			upTo = held - 1
		}
		return w.catchUp(ctx, st, upTo, ctx.Done())
	}
	return nil
}

// advanceTo moves the checkpoint to to (compare-and-set) when it is below.
func (w *Worker) advanceTo(ctx context.Context, st *partition, to int64) error {
	if to <= st.cp {
		return nil
	}
	if !w.leaseValid() {
		return errLeaseExpired
	}
	err := w.db.InTx(ctx, func(tx store.Tx) error {
		return tx.AdvanceCheckpoint(ctx, w.cfg.Projection, st.p, st.cp, to)
	})
	if errors.Is(err, store.ErrCheckpointMoved) {
		return w.reloadCheckpoint(ctx, st)
	}
	if err != nil {
		return err
	}
	w.advanced(st, to)
	return nil
}

// firstHeld returns the log sequence of the first event the stream still
// holds (0 when it holds none).
func (w *Worker) firstHeld(ctx context.Context) (int64, error) {
	s, err := w.js.Stream(ctx, w.cfg.Stream)
	if err != nil {
		return 0, fmt.Errorf("stream info: %w", err)
	}
	state := s.CachedInfo().State
	if state.Msgs == 0 {
		return 0, nil
	}
	m, err := s.GetMsg(ctx, state.FirstSeq, jetstream.WithGetMsgSubject(wire.Subjects))
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

// startSeq returns the stream sequence to start partition p's consumer at:
// that of its first message whose event is above cp (binary search; the
// stream holds events in log order). A message whose sequence header does
// not parse counts as above: delivered, it parks the partition.
func (w *Worker) startSeq(ctx context.Context, p int, cp int64) (uint64, error) {
	s, err := w.js.Stream(ctx, w.cfg.Stream)
	if err != nil {
		return 0, fmt.Errorf("stream info: %w", err)
	}
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
