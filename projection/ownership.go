package projection

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/sourcegraph/conc"
	"go.uber.org/zap"
)

// running is a partition this instance applies.
type running struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// owner is the ownership loop's state: the partitions running.
type owner struct {
	r     *Runner
	owned map[int]*running
	wg    conc.WaitGroup
	fatal chan error
	// failing is set while heartbeats fail (logged once).
	failing bool
}

// own runs the ownership loop until ctx ends: every LeaseTTL/4 it renews
// the member row, computes this instance's share over the live members,
// gives back the leases it should no longer hold, claims the ones it
// should, and starts and stops partitions to match the leases it holds. An
// instance that cannot renew stops every partition once its leases may
// have expired, so another can take them.
func (r *Runner) own(ctx context.Context) error {
	o := &owner{r: r, owned: map[int]*running{}, fatal: make(chan error, r.id.parts)}
	crashed := false
	defer func() {
		o.stop(o.ownedList())
		o.wg.Wait()
		r.m.owned.WithLabelValues(r.p.Name, r.cfg.WorkerID).Set(0)
		if crashed {
			return // a simulated death leaves its leases to expire
		}
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		if err := r.leave(lctx); err != nil {
			r.log.Warn("leaving the projection failed; its leases expire instead", zap.Error(err))
		}
	}()
	tick := time.NewTicker(r.cfg.heartbeatInterval())
	defer tick.Stop()
	for {
		o.beat(ctx)
		r.progress.Store(time.Now().UnixNano())
		select {
		case <-ctx.Done():
			return nil
		case err := <-o.fatal:
			crashed = errors.Is(err, errCrashed)
			return err
		case <-tick.C:
		}
	}
}

// beat is one round of the ownership loop.
func (o *owner) beat(ctx context.Context) {
	r := o.r
	start, held, err := o.renew(ctx)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		if !o.failing {
			r.log.Warn("renewing leases failed", zap.Error(err))
		}
		o.failing = true
		r.m.errors.WithLabelValues(r.p.Name, "lease").Inc()
		if !r.leaseValid() && len(o.owned) > 0 {
			r.log.Warn("leases may have expired; stopping every partition", zap.Ints("partitions", o.ownedList()))
			r.m.leaseLost.WithLabelValues(r.p.Name, r.cfg.WorkerID).Inc()
			o.stop(o.ownedList())
		}
		return
	}
	if o.failing {
		r.log.Info("renewing leases again")
		o.failing = false
	}
	r.validUntil.Store(start + int64(r.cfg.LeaseTTL))
	var lost []int
	for p := range o.owned {
		if !slices.Contains(held, p) {
			lost = append(lost, p)
		}
	}
	if len(lost) > 0 {
		r.log.Warn("leases lost to another instance", zap.Ints("partitions", lost))
		o.stop(lost)
	}
	for _, p := range held {
		if o.owned[p] == nil {
			o.start(ctx, p)
		}
	}
	r.m.owned.WithLabelValues(r.p.Name, r.cfg.WorkerID).Set(float64(len(o.owned)))
}

// renew beats, stops and gives back the partitions this instance should no
// longer hold, and claims its share. It returns the partitions it holds and
// when the claim started (sinceEpoch), from which the leases last LeaseTTL.
// Each database call has half the TTL.
func (o *owner) renew(ctx context.Context) (int64, []int, error) {
	r := o.r
	timed := func(fn func(ctx context.Context) error) error {
		tctx, cancel := context.WithTimeout(ctx, r.cfg.LeaseTTL/2)
		defer cancel()
		return fn(tctx)
	}
	var members []string
	if err := timed(func(ctx context.Context) (err error) {
		members, err = r.heartbeat(ctx)
		return err
	}); err != nil {
		return 0, nil, err
	}
	want := assign(members, r.id.parts, r.cfg.WorkerID)
	var release []int
	for p := range o.owned {
		if !slices.Contains(want, p) {
			release = append(release, p)
		}
	}
	if len(release) > 0 {
		slices.Sort(release)
		r.log.Info("handing partitions over", zap.Ints("partitions", release), zap.Int("members", len(members)))
		o.stop(release)
		if err := timed(func(ctx context.Context) error { return r.releaseLeases(ctx, release) }); err != nil {
			r.log.Warn("giving leases back failed; they expire", zap.Error(err))
		}
	}
	start := sinceEpoch()
	var held []int
	err := timed(func(ctx context.Context) (err error) {
		held, err = r.claimLeases(ctx, want)
		return err
	})
	return start, held, err
}

// start runs partition p until stopped. Partitions stop through their own
// context, never Run's, so that a stop can finish the batch in flight.
func (o *owner) start(ctx context.Context, p int) {
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	run := &running{cancel: cancel, done: make(chan struct{})}
	o.owned[p] = run
	o.r.log.Info("taking partition", zap.Int("partition", p))
	o.wg.Go(func() {
		defer close(run.done)
		if err := o.r.runPartition(pctx, p); err != nil {
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
