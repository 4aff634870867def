package projection

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

// catchUp applies the partition's events in (st.cp, upTo] from the log
// source (Config.Log), in transactions of up to BatchSize events: the
// stream does not hold them. A handler failure parks the partition. When
// interrupt closes it stops after the transaction in flight and returns
// errInterrupted: what it committed stays, with its checkpoint.
func (r *Runner) catchUp(ctx context.Context, st *partition, upTo int64, interrupt <-chan struct{}) error {
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
		evs, err := r.cfg.Log.Fetch(ctx, cursor, int(min(store.DefaultBatch, upTo-cursor)))
		if err != nil {
			return fmt.Errorf("catch-up from the log: %w", err)
		}
		for _, e := range evs {
			if wire.Partition(e.SubjectID, r.id.parts) == st.p {
				mine = append(mine, e)
			}
			cursor = e.Sequence
		}
		done := len(evs) == 0 || cursor >= upTo
		if len(mine) >= r.cfg.BatchSize || done {
			n := len(mine)
			if err := r.commit(ctx, st, mine); err != nil {
				return err
			}
			r.m.caughtUp.WithLabelValues(r.p.Name, partLabel(st.p)).Add(float64(n))
			mine = mine[:0]
			if !st.parkedNow && st.cp < cursor {
				// Nothing of the partition up to cursor is left unapplied.
				if err := r.advanceTo(ctx, st, cursor); err != nil {
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

// advanceTo moves the checkpoint to to (compare-and-set, no events) when
// it is below.
func (r *Runner) advanceTo(ctx context.Context, st *partition, to int64) error {
	if to <= st.cp {
		return nil
	}
	err := r.apply(ctx, st, nil, to)
	if errors.Is(err, errCheckpointMoved) {
		return r.reloadCheckpoint(ctx, st)
	}
	return err
}
