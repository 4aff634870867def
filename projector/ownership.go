package projector

import (
	"context"
	"slices"
	"time"

	"github.com/sourcegraph/conc"
	"go.uber.org/zap"
)

// running is a partition this worker applies.
type running struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// owner is the ownership loop's state: the partitions running and until
// when their leases are known to be held.
type owner struct {
	w     *Worker
	owned map[int]*running
	wg    conc.WaitGroup
	fatal chan error
	// failing is set while heartbeats fail (logged once).
	failing bool
}

// leaseClock is the worker's monotonic clock for lease validity: nanoseconds
// since leaseEpoch.
var leaseEpoch = time.Now()

func sinceEpoch() int64 { return int64(time.Since(leaseEpoch)) }

// own runs the ownership loop until ctx ends: every LeaseTTL/4 it renews
// this worker's member row, computes its share of the partitions over the
// live members, gives back the leases it no longer should hold, claims the
// ones it should, and starts and stops partitions to match the leases it
// holds. A worker that cannot renew its leases stops every partition once
// they may have expired, so another worker can take them.
func (w *Worker) own(ctx context.Context) error {
	o := &owner{w: w, owned: map[int]*running{}, fatal: make(chan error, w.parts)}
	defer func() {
		o.stop(o.ownedList())
		o.wg.Wait()
		w.m.owned.WithLabelValues(w.cfg.Projection, w.cfg.WorkerID).Set(0)
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		if err := w.db.Leave(lctx, w.cfg.Projection, w.cfg.WorkerID); err != nil {
			w.log.Warn("leaving the projection failed; its leases expire instead", zap.Error(err))
		}
	}()
	tick := time.NewTicker(w.cfg.heartbeatInterval())
	defer tick.Stop()
	for {
		if h := w.cfg.hooks.beforeHeartbeat; h != nil {
			h()
		}
		o.beat(ctx)
		w.progress.Store(time.Now().UnixNano())
		select {
		case <-ctx.Done():
			return nil
		case err := <-o.fatal:
			return err
		case <-tick.C:
		}
	}
}

// beat is one round of the ownership loop.
func (o *owner) beat(ctx context.Context) {
	w := o.w
	start, held, err := o.renew(ctx)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		if !o.failing {
			w.log.Warn("renewing leases failed", zap.Error(err))
		}
		o.failing = true
		w.m.errors.WithLabelValues(w.cfg.Projection, "lease").Inc()
		if !w.leaseValid() && len(o.owned) > 0 {
			w.log.Warn("leases may have expired; stopping every partition", zap.Ints("partitions", o.ownedList()))
			w.m.leaseLost.WithLabelValues(w.cfg.Projection, w.cfg.WorkerID).Inc()
			o.stop(o.ownedList())
		}
		return
	}
	if o.failing {
		w.log.Info("renewing leases again")
		o.failing = false
	}
	w.validUntil.Store(start + int64(w.cfg.LeaseTTL))
	var lost []int
	for p := range o.owned {
		if !slices.Contains(held, p) {
			lost = append(lost, p)
		}
	}
	if len(lost) > 0 {
		w.log.Warn("leases lost to another worker", zap.Ints("partitions", lost))
		o.stop(lost)
	}
	for _, p := range held {
		if o.owned[p] == nil {
			o.start(ctx, p)
		}
	}
	w.m.owned.WithLabelValues(w.cfg.Projection, w.cfg.WorkerID).Set(float64(len(o.owned)))
}

// renew beats, stops and gives back the partitions this worker should no
// longer hold, and claims its share. It returns the partitions it holds
// and when the claim started (sinceEpoch), from which the leases last
// LeaseTTL. Each database call has half the TTL; stopping partitions
// (finishing their transactions in flight) does not eat into it.
func (o *owner) renew(ctx context.Context) (int64, []int, error) {
	w := o.w
	timed := func(fn func(ctx context.Context) error) error {
		tctx, cancel := context.WithTimeout(ctx, w.cfg.LeaseTTL/2)
		defer cancel()
		return fn(tctx)
	}
	var members []string
	if err := timed(func(ctx context.Context) (err error) {
		members, err = w.db.Heartbeat(ctx, w.cfg.Projection, w.cfg.WorkerID, w.cfg.LeaseTTL)
		return err
	}); err != nil {
		return 0, nil, err
	}
	want := assign(members, w.parts, w.cfg.WorkerID)
	var release []int
	for p := range o.owned {
		if !slices.Contains(want, p) {
			release = append(release, p)
		}
	}
	if len(release) > 0 {
		slices.Sort(release)
		w.log.Info("handing partitions over", zap.Ints("partitions", release), zap.Int("members", len(members)))
		o.stop(release)
		// Unreleased leases expire; the next owner only waits longer.
		if err := timed(func(ctx context.Context) error {
			return w.db.ReleaseLeases(ctx, w.cfg.Projection, w.cfg.WorkerID, release)
		}); err != nil {
			w.log.Warn("giving leases back failed; they expire", zap.Error(err))
		}
	}
	start := sinceEpoch()
	var held []int
	err := timed(func(ctx context.Context) (err error) {
		held, err = w.db.ClaimLeases(ctx, w.cfg.Projection, w.cfg.WorkerID, want, w.cfg.LeaseTTL)
		return err
	})
	return start, held, err
}

// start runs partition p until stopped. Partitions stop through their own
// context, never Run's, so that a stop can finish the batch in flight.
func (o *owner) start(ctx context.Context, p int) {
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r := &running{cancel: cancel, done: make(chan struct{})}
	o.owned[p] = r
	o.w.log.Info("taking partition", zap.Int("partition", p))
	o.wg.Go(func() {
		defer close(r.done)
		if err := o.w.runPartition(pctx, p); err != nil {
			o.fatal <- err
		}
	})
}

// stop stops partitions and waits for them: each finishes the transaction
// it has in flight (bounded by ShutdownTimeout) and applies no more.
func (o *owner) stop(ps []int) {
	for _, p := range ps {
		o.owned[p].cancel()
	}
	for _, p := range ps {
		<-o.owned[p].done
		delete(o.owned, p)
	}
}

func (o *owner) ownedList() []int {
	out := make([]int, 0, len(o.owned))
	for p := range o.owned {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// leaseValid reports whether this worker's leases are still certainly held:
// less than LeaseTTL since the start of the last successful renewal.
func (w *Worker) leaseValid() bool { return sinceEpoch() < w.validUntil.Load() }

// assign spreads partitions over the sorted members round-robin and
// returns self's share.
func assign(members []string, partitions int, self string) []int {
	members = slices.Clone(members)
	slices.Sort(members)
	members = slices.Compact(members)
	i := slices.Index(members, self)
	if i < 0 {
		return nil
	}
	var out []int
	for p := i; p < partitions; p += len(members) {
		out = append(out, p)
	}
	return out
}
