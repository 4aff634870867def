package ingest

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestLastProgressFallsBehindAnOverdueBatch: idle loops and batches within
// their time keep LastProgress at now; a batch past its time holds it at
// that time, so that the watchdog sees the loop fall behind.
func TestLastProgressFallsBehindAnOverdueBatch(t *testing.T) {
	t.Parallel()
	s := &Service{due: make([]atomic.Int64, 3)}
	require.True(t, s.LastProgress().IsZero(), "zero while Run is not running")
	s.running.Store(true)
	require.WithinDuration(t, time.Now(), s.LastProgress(), time.Second, "idle loops are on schedule")
	s.due[0].Store(time.Now().Add(time.Hour).UnixNano())
	require.WithinDuration(t, time.Now(), s.LastProgress(), time.Second, "a batch within its time is on schedule")
	overdue := time.Now().Add(-time.Minute)
	s.due[2].Store(overdue.UnixNano())
	require.Equal(t, overdue.UnixNano(), s.LastProgress().UnixNano(), "a batch past its time holds progress back")
}
