package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/projection"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/postgres"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// world is the artifactstore side of a test: the log in a PostgreSQL
// schema of its own, an in-process nats-server and the real relay
// publishing the log to the events stream.
type world struct {
	log       *postgres.DB
	logURL    string // the log's database URL, search_path set
	logSchema string
	logID     string
	parts     int
	ns        *testenv.NATSServer
	js        jetstream.JetStream

	mu   sync.Mutex
	next int
}

func newWorld(t *testing.T) *world {
	t.Helper()
	base, schema := testenv.Schema(t)
	db := testenv.OpenPostgres(t, base, schema)
	ctx := context.Background()
	logID, err := db.LogID(ctx)
	require.NoError(t, err)
	parts, err := db.Partitions(ctx)
	require.NoError(t, err)
	ns := testenv.NATS(t)
	w := &world{log: db, logURL: withParams(t, base, "", schema), logSchema: schema, logID: logID, parts: parts, ns: ns, js: ns.JetStream(t)}
	w.startRelay(t)
	return w
}

// withParams returns base with another user (when set) and search_path.
func withParams(t testing.TB, base, user, schema string) string {
	t.Helper()
	u, err := url.Parse(base)
	require.NoError(t, err)
	if user != "" {
		u.User = url.User(user)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

func (w *world) startRelay(t *testing.T) {
	t.Helper()
	js, err := jetstream.New(w.ns.Connect(t))
	require.NoError(t, err)
	r, err := relay.New(w.log, js, relay.Config{Logger: testenv.Logger(t).Named("relay"), Registerer: prometheus.NewRegistry(),
		PollInterval: 100 * time.Millisecond, RetryMin: 10 * time.Millisecond, RetryMax: 200 * time.Millisecond, ShutdownTimeout: time.Second})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
}

// actors finalize packages; each package is created by "ci".
var actors = []string{"alice", "bob", "carol", "dave"}

// appendPackages appends n packages created by ci, three in four of them
// finalized by one of the actors, and returns nothing: the log is the
// reference.
func (w *world) appendPackages(t testing.TB, n int) {
	t.Helper()
	w.mu.Lock()
	from := w.next
	w.next += n
	w.mu.Unlock()
	var evs []store.Event
	for i := from; i < from+n; i++ {
		evs = append(evs, storetest.Created(t, storetest.PackageID(i), "svc-"+strconv.Itoa(i%9), "1."+strconv.Itoa(i), "ci"))
	}
	for i := from; i < from+n; i++ {
		if i%4 != 3 {
			evs = append(evs, storetest.Finalized(t, storetest.PackageID(i), actors[i%len(actors)], store.DigestOf([]byte(strconv.Itoa(i)))))
		}
	}
	for len(evs) > 0 {
		k := min(100, len(evs))
		storetest.Append(t, w.log, evs[:k]...)
		evs = evs[k:]
	}
}

// lastPerPartition returns each partition's last event in the log.
func (w *world) lastPerPartition(t testing.TB) []int64 {
	t.Helper()
	out := make([]int64, w.parts)
	for ev, err := range store.All(context.Background(), w.log, 0, 0) {
		require.NoError(t, err)
		out[wire.Partition(ev.SubjectID, w.parts)] = ev.Sequence
	}
	return out
}

// expected returns, from the log, "actor day" → packages finalized.
func (w *world) expected(t testing.TB) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for ev, err := range store.All(context.Background(), w.log, 0, 0) {
		require.NoError(t, err)
		if ev.Type == store.TypePackageFinalized {
			out[ev.Actor+" "+ev.CreatedAt.UTC().Format(time.DateOnly)]++
		}
	}
	return out
}

// team is the downstream team's side: a login role of its own and a
// schema it owns, with no privilege on the log's schema.
type team struct {
	role, schema string
	url          string // what the team's processes are given
	pool         *pgxpool.Pool
}

func newTeam(t *testing.T) *team {
	t.Helper()
	base := testenv.PostgresURL(t)
	ctx := context.Background()
	role := testenv.Name("team")
	admin, err := pgx.Connect(ctx, base)
	require.NoError(t, err)
	defer admin.Close(ctx)
	_, err = admin.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN; CREATE SCHEMA %s AUTHORIZATION %s; CREATE SCHEMA %s_replay AUTHORIZATION %s",
		role, role, role, role, role))
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx := context.Background()
		admin, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Logf("dropping role %s: %v", role, err)
			return
		}
		defer admin.Close(ctx)
		_, err = admin.Exec(ctx, fmt.Sprintf(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '%s';
			DROP SCHEMA IF EXISTS %s CASCADE; DROP SCHEMA IF EXISTS %s_replay CASCADE; DROP ROLE IF EXISTS %s`, role, role, role, role))
		if err != nil {
			t.Logf("dropping role %s: %v", role, err)
		}
	})
	tm := &team{role: role, schema: role, url: withParams(t, base, role, role)}
	tm.pool, err = pgxpool.New(ctx, tm.url)
	require.NoError(t, err)
	t.Cleanup(tm.pool.Close)
	return tm
}

// checkpoints returns the example projection's checkpoints by partition.
func (tm *team) checkpoints(t testing.TB) map[int]int64 {
	t.Helper()
	out := map[int]int64{}
	rows, err := tm.pool.Query(context.Background(), `SELECT partition, sequence FROM projection_checkpoints WHERE projection = $1`, Name)
	var p int
	var s int64
	if err == nil {
		_, err = pgx.ForEachRow(rows, []any{&p, &s}, func() error { out[p] = s; return nil })
	}
	var pe interface{ SQLState() string }
	if errors.As(err, &pe) && pe.SQLState() == "42P01" {
		return out // not migrated yet
	}
	require.NoError(t, err)
	return out
}

// caughtUp reports whether every checkpoint reached want.
func caughtUp(cps map[int]int64, want []int64) bool {
	for p, seq := range want {
		if cps[p] < seq {
			return false
		}
	}
	return true
}

// requireReplayEqual checks the team's table against a Replay of the
// stream's events (made by the team's role, into its replay schema), byte
// for byte, and against the counts the log's events make.
func (tm *team) requireReplayEqual(t testing.TB, w *world) {
	t.Helper()
	ctx := context.Background()
	p := Projection()
	var parked int
	require.NoError(t, tm.pool.QueryRow(ctx, `SELECT count(*) FROM projection_parked`).Scan(&parked))
	require.Zero(t, parked)
	projected, err := projection.Dump(ctx, tm.pool, "", p)
	require.NoError(t, err)
	_, err = projection.Replay(ctx, tm.pool, p, projection.StreamEvents(ctx, w.js, projection.StreamOptions{LogID: w.logID, Partitions: w.parts}),
		projection.ReplayOptions{Schema: tm.schema + "_replay"})
	require.NoError(t, err)
	replayed, err := projection.Dump(ctx, tm.pool, tm.schema+"_replay", p)
	require.NoError(t, err)
	require.NotEmpty(t, replayed)
	require.Equal(t, replayed, projected, "the example's table differs from a replay of the stream")
	got := map[string]int64{}
	rows, err := tm.pool.Query(ctx, `SELECT actor || ' ' || to_char(day, 'YYYY-MM-DD'), count FROM finalized_per_day`)
	require.NoError(t, err)
	var k string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&k, &n}, func() error { got[k] = n; return nil })
	require.NoError(t, err)
	require.Equal(t, w.expected(t), got, "packages finalized per actor per day, counted from the log")
}

// proc is a child process of the test, killed at cleanup.
type proc struct {
	name    string
	path    string
	args    []string
	env     []string
	logPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func newProc(t testing.TB, name, path string, env []string, args ...string) *proc {
	p := &proc{name: name, path: path, args: args, env: env, logPath: filepath.Join(t.TempDir(), name+".log")}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s's last output:\n%s", p.name, p.tail(30))
		}
	})
	return p
}

func (p *proc) start(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(t, err)
	cmd := exec.Command(p.path, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = f, f
	// A test binary that dies takes its children with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(done)
	}()
}

// signal sends sig and waits (10 s at most) for the process to exit; it
// returns the exit error.
func (p *proc) signal(sig syscall.Signal) error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("%s did not exit within 10 s of %s", p.name, sig)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func (p *proc) kill() { _ = p.signal(syscall.SIGKILL) }

// running reports whether the process is alive.
func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *proc) tail(n int) string {
	b, _ := os.ReadFile(p.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
