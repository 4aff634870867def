package e2e

import (
	"context"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/projector"
)

// Projector tests with real processes: the real binary's projector
// subcommand beside ingest, relay, nats-server and PostgreSQL, each test
// asserting the one property it names.

// skipIfOff skips a real-process test when ARTIFACTSTORE_CHAOS=off.
func skipIfOff(t *testing.T) {
	t.Helper()
	if os.Getenv(EnvChaos) == "off" {
		t.Skipf("%s=off", EnvChaos)
	}
}

// viewWatch records, for every acknowledged command, when its event
// became visible in the views: the first poll at which the package row's
// last_sequence reaches the reply's sequence (the view row and the
// checkpoint commit together, so this is what a reader sees).
type viewWatch struct {
	conn *pgx.Conn

	mu      sync.Mutex
	pending []*op
	visible map[*op]time.Time
}

// newViewWatch polls the views every 10ms until the test ends.
func newViewWatch(t *testing.T, e *env) *viewWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := pgx.Connect(ctx, e.dbURL)
	require.NoError(t, err)
	w := &viewWatch{conn: conn, visible: map[*op]time.Time{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.poll(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		conn.Close(context.Background())
	})
	return w
}

// add is the load's onAck: o is awaited in the views from now on.
func (w *viewWatch) add(o *op) {
	w.mu.Lock()
	w.pending = append(w.pending, o)
	w.mu.Unlock()
}

func (w *viewWatch) poll(ctx context.Context) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.mu.Lock()
		ids := make([]string, 0, len(w.pending))
		for _, o := range w.pending {
			ids = append(ids, o.packageID)
		}
		w.mu.Unlock()
		if len(ids) == 0 {
			continue
		}
		rows, err := w.conn.Query(ctx, "SELECT package_id, last_sequence FROM artifact_packages WHERE package_id = ANY($1)", ids)
		if err != nil {
			continue
		}
		last := map[string]int64{}
		var id string
		var seq int64
		_, err = pgx.ForEachRow(rows, []any{&id, &seq}, func() error { last[id] = seq; return nil })
		now := time.Now()
		if err != nil {
			continue
		}
		w.mu.Lock()
		w.pending = slices.DeleteFunc(w.pending, func(o *op) bool {
			if last[o.packageID] >= o.reply.Sequence {
				w.visible[o] = now
				return true
			}
			return false
		})
		w.mu.Unlock()
	}
}

// await waits until no acknowledged command is pending.
func (w *viewWatch) await(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		w.mu.Lock()
		n := len(w.pending)
		w.mu.Unlock()
		if n == 0 {
			return
		}
		require.True(t, time.Now().Before(deadline), "%d acknowledged commands not in the views within %s", n, timeout)
		time.Sleep(20 * time.Millisecond) // poll interval
	}
}

// lags returns reply → view for the acknowledged commands that keep says.
func (w *viewWatch) lags(ops []*op, keep func(*op) bool) []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []time.Duration
	for _, o := range ops {
		if v, ok := w.visible[o]; ok && keep(o) {
			out = append(out, v.Sub(o.ackedAt))
		}
	}
	return out
}

// runLoad starts l in the background; stop ends it and waits.
func runLoad(t *testing.T, l *load) (stop func()) {
	t.Helper()
	ch := make(chan struct{})
	giveUp, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.run(ch, giveUp)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			close(ch)
			<-done
			cancel()
		})
	}
	t.Cleanup(stop)
	return stop
}

// requireVerdicts runs verify and fails on any error or failed oracle
// (acks only with ops).
func requireVerdicts(t *testing.T, e *env, ops []*op, catchUp time.Duration) {
	t.Helper()
	vs, err := verify(t, e, ops, catchUp)
	for _, v := range vs {
		t.Logf("%s", v)
		require.True(t, v.ok(), "oracle %s failed: %s", v.Check, v)
	}
	require.NoError(t, err)
	want := 2 // O1, O2
	if ops != nil {
		want++ // acks
	}
	require.Len(t, vs, want, "every oracle ran")
}

// leaseHolders returns how many partitions each worker holds.
func leaseHolders(t *testing.T, e *env) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hs, err := e.db.LeaseHolders(ctx, projector.DefaultProjection)
	require.NoError(t, err)
	out := map[string]int{}
	for _, w := range hs {
		out[w]++
	}
	return out
}
