package backoff_test

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/sethvargo/go-retry"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/artifactstore/artifactstore/internal/backoff"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waits returns the first n waits of b, and whether it stopped before n.
func waits(b retry.Backoff, n int) ([]time.Duration, bool) {
	var out []time.Duration
	for range n {
		d, stop := b.Next()
		if stop {
			return out, true
		}
		out = append(out, d)
	}
	return out, false
}

func TestPolicyWaits(t *testing.T) {
	t.Parallel()
	ms := time.Millisecond
	for name, c := range map[string]struct {
		p    backoff.Policy
		want []time.Duration
	}{
		"doubles up to Max":   {backoff.Policy{Min: 500 * ms, Max: 5 * time.Second}, []time.Duration{500 * ms, time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}},
		"Factor multiplies":   {backoff.Policy{Min: 5 * ms, Factor: 4}, []time.Duration{5 * ms, 20 * ms, 80 * ms, 320 * ms}},
		"Factor below 2 is 2": {backoff.Policy{Min: ms, Factor: 1}, []time.Duration{ms, 2 * ms, 4 * ms}},
		"no Min never waits":  {backoff.Policy{Max: time.Second}, []time.Duration{0, 0, 0}},
	} {
		t.Run(name, func(t *testing.T) {
			got, stopped := waits(c.p.Backoff(), len(c.want))
			require.False(t, stopped, "a policy's series never stops")
			require.Equal(t, c.want, got)
		})
	}
}

func TestPolicySaturates(t *testing.T) {
	t.Parallel()
	got, _ := waits(backoff.Policy{Min: time.Hour, Factor: 10}.Backoff(), 30)
	for i := 1; i < len(got); i++ {
		require.GreaterOrEqual(t, got[i], got[i-1], "waits never shrink (no overflow), wait %d", i)
	}
	require.Equal(t, time.Duration(math.MaxInt64), got[len(got)-1])
}

func TestPolicyJitter(t *testing.T) {
	t.Parallel()
	b := backoff.Policy{Min: time.Second, Max: time.Second, JitterPercent: 25}.Backoff()
	got, _ := waits(b, 1000)
	seen := map[time.Duration]bool{}
	for _, d := range got {
		require.GreaterOrEqual(t, d, 750*time.Millisecond)
		require.LessOrEqual(t, d, 1250*time.Millisecond)
		seen[d] = true
	}
	require.Greater(t, len(seen), 10, "waits are spread")
}

func TestWithDeadline(t *testing.T) {
	t.Parallel()
	b := backoff.WithDeadline(time.Now().Add(time.Minute), backoff.Policy{Min: 10 * time.Second}.Backoff())
	got, stopped := waits(b, 10)
	require.True(t, stopped)
	require.Equal(t, []time.Duration{10 * time.Second, 20 * time.Second}, got,
		"a 40 s wait would leave less than 40 s before the deadline")
	_, stop := backoff.WithDeadline(time.Now().Add(-time.Second), backoff.Policy{}.Backoff()).Next()
	require.True(t, stop, "past the deadline nothing is retried, not even without a wait")
}

func TestWithNotify(t *testing.T) {
	t.Parallel()
	var heard []time.Duration
	b := backoff.WithNotify(func(d time.Duration) { heard = append(heard, d) },
		retry.WithMaxRetries(2, backoff.Policy{Min: time.Second}.Backoff()))
	got, stopped := waits(b, 3)
	require.True(t, stopped)
	require.Equal(t, []time.Duration{time.Second, 2 * time.Second}, got)
	require.Equal(t, got, heard, "each wait granted is heard, the stop is not")
}

// The tests below hold go-retry to what the call sites rely on.

func TestDoRetriesUntilSuccess(t *testing.T) {
	t.Parallel()
	calls, notified := 0, 0
	b := backoff.WithNotify(func(time.Duration) { notified++ }, backoff.Policy{Min: time.Millisecond}.Backoff())
	err := retry.Do(context.Background(), b, func(context.Context) error {
		if calls++; calls < 3 {
			return retry.RetryableError(errors.New("not yet"))
		}
		return nil
	})
	require.NoError(t, err)
	require.Equal(t, 3, calls)
	require.Equal(t, 2, notified)
}

func TestDoDoesNotRetryAPermanentError(t *testing.T) {
	t.Parallel()
	permanent := errors.New("permanent")
	calls := 0
	b := backoff.WithNotify(func(time.Duration) { t.Error("a permanent error is not retried") }, backoff.Policy{Min: time.Millisecond}.Backoff())
	err := retry.Do(context.Background(), b, func(context.Context) error {
		calls++
		return permanent
	})
	require.Same(t, permanent, err, "the error comes back as it was returned")
	require.Equal(t, 1, calls)
}

func TestDoReturnsTheLastErrorUnmarked(t *testing.T) {
	t.Parallel()
	last := errors.New("still down")
	calls := 0
	err := retry.Do(context.Background(), retry.WithMaxRetries(2, backoff.Policy{Min: time.Millisecond}.Backoff()), func(context.Context) error {
		calls++
		return retry.RetryableError(last)
	})
	require.Same(t, last, err)
	require.Equal(t, 3, calls, "one attempt and two retries")
}

func TestDoStopsAtOnceOnCancel(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waiting := make(chan struct{})
	b := backoff.WithNotify(func(time.Duration) { close(waiting) }, backoff.Policy{Min: time.Hour}.Backoff())
	done := make(chan error, 1)
	calls := 0
	go func() {
		done <- retry.Do(ctx, b, func(context.Context) error {
			calls++
			return retry.RetryableError(errors.New("down"))
		})
	}()
	<-waiting
	began := time.Now()
	cancel()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled)
		require.Less(t, time.Since(began), 5*time.Second)
		require.Equal(t, 1, calls, "no attempt after the cancel")
	case <-time.After(10 * time.Second):
		t.Fatal("retry.Do still waiting after its context was cancelled")
	}
}

func TestSleep(t *testing.T) {
	t.Parallel()
	require.True(t, backoff.Sleep(context.Background(), 0))
	require.True(t, backoff.Sleep(context.Background(), time.Millisecond))

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.False(t, backoff.Sleep(ctx, 0), "an ended context is not slept on, even for no time")

	ctx, cancel = context.WithCancel(context.Background())
	done := make(chan bool, 1)
	go func() { done <- backoff.Sleep(ctx, time.Hour) }()
	cancel()
	select {
	case full := <-done:
		require.False(t, full)
	case <-time.After(10 * time.Second):
		t.Fatal("Sleep did not return when its context was cancelled")
	}
}
