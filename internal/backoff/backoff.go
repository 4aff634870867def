// Package backoff is how the services wait before trying again. The
// retrying itself is github.com/sethvargo/go-retry's: retry.Do calls a
// function until it succeeds or returns an error not marked with
// retry.RetryableError, and stops waiting at once when its context ends.
// This package adds what go-retry leaves to its callers: a Policy that
// names each use's waits (exponential, capped, jittered), WithDeadline and
// WithNotify to bound and report retries, and Sleep for the long-running
// loops that own their retries and reset their backoff after progress.
package backoff

import (
	"context"
	"math"
	"time"

	"github.com/sethvargo/go-retry"
)

// Policy is a series of waits: Min first, then each wait Factor times the
// last, at most Max, each moved by up to JitterPercent of itself either
// way. The zero Factor doubles; the zero Max does not cap.
type Policy struct {
	Min, Max      time.Duration
	Factor        int64
	JitterPercent uint64
}

// Backoff starts a series of p's waits. It never stops: bound it with
// retry.WithMaxRetries or WithDeadline. Use each series from one goroutine
// and start another to reset it.
func (p Policy) Backoff() retry.Backoff {
	factor := time.Duration(max(p.Factor, 2))
	next := max(p.Min, 0)
	var b retry.Backoff = retry.BackoffFunc(func() (time.Duration, bool) {
		d := next
		if next > math.MaxInt64/factor {
			next = math.MaxInt64
		} else {
			next *= factor
		}
		return d, false
	})
	if p.Max > 0 {
		b = retry.WithCappedDuration(p.Max, b)
	}
	if p.JitterPercent > 0 {
		b = retry.WithJitterPercent(p.JitterPercent, b)
	}
	return b
}

// WithDeadline stops next once less than twice its next wait is left
// before deadline: the attempt after the wait needs time of its own.
func WithDeadline(deadline time.Time, next retry.Backoff) retry.Backoff {
	return retry.BackoffFunc(func() (time.Duration, bool) {
		d, stop := next.Next()
		if stop || time.Until(deadline) <= 2*d {
			return 0, true
		}
		return d, false
	})
}

// WithNotify calls fn with each wait next grants, before it is taken: the
// place to log a retry (with the error the caller kept) and count it.
func WithNotify(fn func(wait time.Duration), next retry.Backoff) retry.Backoff {
	return retry.BackoffFunc(func() (time.Duration, bool) {
		d, stop := next.Next()
		if !stop {
			fn(d)
		}
		return d, stop
	})
}

// Sleep waits for d or until ctx ends, whichever is first, and reports
// whether it waited the whole d.
func Sleep(ctx context.Context, d time.Duration) bool {
	if ctx.Err() != nil {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
