package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/projector"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/store"
)

// EnvBenchCommands sets how many commands the throughput run sends
// (default 20000: 10000 creates and 10000 finalizes).
const EnvBenchCommands = "ARTIFACTSTORE_BENCH_COMMANDS"

// observer records, per event sequence, when the event was seen in the
// stream (by an ordered consumer, as a downstream reader sees it) and when
// it became visible in the views (the first checkpoint poll at which its
// partition's checkpoint covers it).
type observer struct {
	mu         sync.Mutex
	createdAt  map[int64]time.Time
	inStream   map[int64]time.Time
	inView     map[int64]time.Time
	pending    map[int][]int64 // partition → sequences not yet in the views
	partitions int
	streamCh   chan struct{}
}

func newObserver(partitions int) *observer {
	return &observer{createdAt: map[int64]time.Time{}, inStream: map[int64]time.Time{}, inView: map[int64]time.Time{},
		pending: map[int][]int64{}, partitions: partitions, streamCh: make(chan struct{}, 1)}
}

// watchStream consumes the public stream from the next message on.
func (o *observer) watchStream(ctx context.Context, js jetstream.JetStream, from uint64) (func(), error) {
	s, err := js.Stream(ctx, relay.DefaultStream)
	if err != nil {
		return nil, err
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: from})
	if err != nil {
		return nil, err
	}
	cc, err := c.Consume(func(m jetstream.Msg) {
		now := time.Now()
		h := m.Headers()
		seq, err1 := strconv.ParseInt(h.Get(relay.HeaderSequence), 10, 64)
		at, err2 := time.Parse(relay.CreatedAtLayout, h.Get(relay.HeaderCreatedAt))
		if err1 != nil || err2 != nil {
			return
		}
		p := projector.Partition(h.Get(relay.HeaderSubjectID), o.partitions)
		o.mu.Lock()
		if _, dup := o.inStream[seq]; !dup {
			o.inStream[seq], o.createdAt[seq] = now, at
			o.pending[p] = append(o.pending[p], seq)
		}
		o.mu.Unlock()
	}, jetstream.PullMaxMessages(1000))
	if err != nil {
		return nil, err
	}
	return cc.Stop, nil
}

// watchViews polls the checkpoints every interval until ctx ends.
func (o *observer) watchViews(ctx context.Context, db store.DB, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cps, err := db.Checkpoints(ctx)
		now := time.Now()
		if err != nil {
			continue
		}
		o.mu.Lock()
		for _, c := range cps {
			if c.Projection != projector.DefaultProjection {
				continue
			}
			rest := o.pending[c.Partition][:0]
			for _, s := range o.pending[c.Partition] {
				if s <= c.Sequence {
					o.inView[s] = now
				} else {
					rest = append(rest, s)
				}
			}
			o.pending[c.Partition] = rest
		}
		o.mu.Unlock()
	}
}

func (o *observer) counts() (stream, view int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.inStream), len(o.inView)
}

// awaitCounts waits until n events were seen in the stream and the views.
func (o *observer) awaitCounts(ctx context.Context, n int) error {
	for {
		s, v := o.counts()
		if s >= n && v >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("saw %d events in the stream and %d in the views of %d", s, v, n)
		case <-time.After(10 * time.Millisecond): // poll interval
		}
	}
}

// percentile returns the p-th percentile (0..1) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// runStats is what one load run measured.
type runStats struct {
	commands                   int
	took                       time.Duration
	cmdRate, streamRate, vRate float64
	reply, commitStream        []time.Duration
	commitView, commandView    []time.Duration
}

// measure runs l against e with the stream and view observers.
func measure(b *testing.B, e *env, l *load, expect int) runStats {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	nc, js := e.connect(b)
	defer nc.Close()
	s, err := js.Stream(ctx, relay.DefaultStream)
	if err != nil {
		b.Fatal(err)
	}
	o := newObserver(e.opts.partitions)
	stopStream, err := o.watchStream(ctx, js, s.CachedInfo().State.LastSeq+1)
	if err != nil {
		b.Fatal(err)
	}
	defer stopStream()
	vctx, vcancel := context.WithCancel(ctx)
	var vwg sync.WaitGroup
	vwg.Add(1)
	go func() {
		defer vwg.Done()
		o.watchViews(vctx, e.db, 2*time.Millisecond)
	}()

	start := time.Now()
	l.run(make(chan struct{}), ctx)
	ops := l.snapshot()
	n := 0
	for _, op := range ops {
		if op.acked {
			n++
		}
	}
	if n != expect {
		b.Fatalf("%d of %d commands acknowledged", n, expect)
	}
	if err := o.awaitCounts(ctx, expect); err != nil {
		b.Fatal(err)
	}
	vcancel()
	vwg.Wait()

	st := runStats{commands: n}
	var lastAck, lastStream, lastView time.Time
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, op := range ops {
		st.reply = append(st.reply, op.latency)
		lastAck = maxTime(lastAck, op.ackedAt)
		seq := op.reply.Sequence
		view, ok := o.inView[seq]
		if !ok {
			b.Fatalf("event %d was never seen in the views", seq)
		}
		sent := op.sent
		if !op.schedule.IsZero() {
			sent = op.schedule // paced: from when the command was due
		}
		st.commandView = append(st.commandView, view.Sub(sent))
	}
	for seq, at := range o.createdAt {
		st.commitStream = append(st.commitStream, o.inStream[seq].Sub(at))
		st.commitView = append(st.commitView, o.inView[seq].Sub(at))
		lastStream = maxTime(lastStream, o.inStream[seq])
		lastView = maxTime(lastView, o.inView[seq])
	}
	st.took = lastAck.Sub(start)
	st.cmdRate = float64(n) / lastAck.Sub(start).Seconds()
	st.streamRate = float64(n) / lastStream.Sub(start).Seconds()
	st.vRate = float64(n) / lastView.Sub(start).Seconds()
	return st
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// waitAssigned waits until the projectors have settled their membership:
// the partitions they own add up to the partition count, each owning some,
// for a second on end. A benchmark measures the steady state; partitions
// moving while the first commands flow show up as a rebalance, not as the
// pipeline's latency.
func waitAssigned(b *testing.B, e *env) {
	b.Helper()
	client := &http.Client{Timeout: 2 * time.Second}
	owned := func(p *proc) int {
		resp, err := client.Get(strings.TrimSuffix(p.health, "/readyz") + "/metrics")
		if err != nil {
			return -1
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return -1
		}
		for _, line := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(line, "artifactstore_projector_owned_partitions{") {
				f := strings.Fields(line)
				n, err := strconv.ParseFloat(f[len(f)-1], 64)
				if err != nil {
					return -1
				}
				return int(n)
			}
		}
		return -1
	}
	settled := func() bool {
		total := 0
		for _, p := range e.projectors {
			n := owned(p)
			if n <= 0 {
				return false
			}
			total += n
		}
		return total == e.opts.partitions
	}
	var since time.Time // when the assignment was first seen settled
	testenv.Eventually(b, time.Minute, func() bool {
		if !settled() {
			since = time.Time{}
			return false
		}
		if since.IsZero() {
			since = time.Now()
		}
		return time.Since(since) >= time.Second // still so a heartbeat later
	}, "the projectors to share the %d partitions", e.opts.partitions)
}

// BenchmarkEndToEnd starts PostgreSQL, a nats-server and the services as
// processes, drives create-then-finalize commands from 64 concurrent
// clients, and reports throughput and latency next to raw baselines
// measured in the same run: a batched PostgreSQL INSERT of the same rows
// (100 rows per statement) and JetStream PublishAsync of the same
// messages. The paced sub-benchmark offers 1,000 commands/s and reports p99
// command → view.
//
// It runs two deployments, one after the other on fresh databases and
// servers: "single", one process of each service (what a 2-core machine
// should run), and "replicated", ingest ×2, relay ×2 (one standby) and
// projector ×3 sharing the same cores (the shape a highly available
// deployment spreads over machines; co-located, it measures what the extra
// processes cost).
func BenchmarkEndToEnd(b *testing.B) {
	commands := 20000
	if v, err := strconv.Atoi(os.Getenv(EnvBenchCommands)); err == nil && v > 0 {
		commands = v
	}
	pg := newPG(b)
	b.Logf("machine: %s", machine())
	for _, d := range []struct {
		name                       string
		ingest, relays, projectors int
	}{
		{"single", 1, 1, 1},
		{"replicated", 2, 2, 3},
	} {
		b.Run(d.name, func(b *testing.B) {
			e := startEnv(b, pg, "bench_"+d.name, envOptions{logLevel: "warn", ackWait: "30s",
				ingest: d.ingest, relays: d.relays, projectors: d.projectors})
			b.Logf("%s: ingest ×%d, relay ×%d, projector ×%d, %d partitions", d.name, d.ingest, d.relays, d.projectors, e.opts.partitions)
			waitAssigned(b, e)
			b.Run("throughput", func(b *testing.B) { benchThroughput(b, e, commands) })
			b.Run("paced-1000", func(b *testing.B) { benchPaced(b, e, commands) })
		})
	}
}

// benchThroughput drives commands from 64 clients as fast as they are
// answered.
func benchThroughput(b *testing.B, e *env, commands int) {
	const clients = 64
	b.ReportAllocs()
	for b.Loop() {
		perClient := max(1, commands/2/clients)
		l := newLoad(b, e, loadOptions{clients: clients, packages: perClient})
		st := measure(b, e, l, perClient*clients*2)

		rawPG := rawInsert(b, e, st.commands)
		rawJS := rawPublish(b, e, st.commands)
		b.ReportMetric(st.cmdRate, "cmds/s")
		b.ReportMetric(st.streamRate, "stream-events/s")
		b.ReportMetric(st.vRate, "view-events/s")
		b.ReportMetric(ms(percentile(st.reply, 0.5)), "reply-p50-ms")
		b.ReportMetric(ms(percentile(st.reply, 0.99)), "reply-p99-ms")
		b.ReportMetric(ms(percentile(st.commitStream, 0.5)), "commit-stream-p50-ms")
		b.ReportMetric(ms(percentile(st.commitStream, 0.99)), "commit-stream-p99-ms")
		b.ReportMetric(ms(percentile(st.commitView, 0.5)), "commit-view-p50-ms")
		b.ReportMetric(ms(percentile(st.commitView, 0.99)), "commit-view-p99-ms")
		b.ReportMetric(rawPG, "raw-pg-rows/s")
		b.ReportMetric(rawJS, "raw-js-msgs/s")
		b.ReportMetric(st.cmdRate/rawPG, "e2e/raw-pg")
		b.ReportMetric(st.streamRate/rawJS, "stream/raw-js")
		b.Logf("throughput: %d commands from %d clients in %s: %.0f cmds/s, %.0f events/s into the stream, %.0f into the views; "+
			"reply p50 %.1fms p99 %.1fms; commit→stream p50 %.1fms p99 %.1fms; commit→view p50 %.1fms p99 %.1fms",
			st.commands, clients, st.took.Round(time.Millisecond), st.cmdRate, st.streamRate, st.vRate,
			ms(percentile(st.reply, 0.5)), ms(percentile(st.reply, 0.99)),
			ms(percentile(st.commitStream, 0.5)), ms(percentile(st.commitStream, 0.99)),
			ms(percentile(st.commitView, 0.5)), ms(percentile(st.commitView, 0.99)))
		b.Logf("baselines: batched INSERT (100 rows/statement) %.0f rows/s → e2e is %.3f× (goal ≥ 0.15×: %s); "+
			"JetStream PublishAsync %.0f msgs/s → stream intake is %.3f×",
			rawPG, st.cmdRate/rawPG, met(st.cmdRate/rawPG >= 0.15), rawJS, st.streamRate/rawJS)
	}
}

// benchPaced offers 1,000 commands/s from 64 clients.
func benchPaced(b *testing.B, e *env, commands int) {
	const clients = 64
	for b.Loop() {
		const rate = 1000
		total := min(commands, 10000) // 10s at 1,000/s
		perClient := max(1, total/2/clients)
		l := newLoad(b, e, loadOptions{clients: clients, packages: perClient, rate: rate})
		st := measure(b, e, l, perClient*clients*2)
		p99 := percentile(st.commandView, 0.99)
		b.ReportMetric(st.cmdRate, "cmds/s")
		b.ReportMetric(ms(percentile(st.reply, 0.5)), "reply-p50-ms")
		b.ReportMetric(ms(percentile(st.reply, 0.99)), "reply-p99-ms")
		b.ReportMetric(ms(percentile(st.commandView, 0.5)), "command-view-p50-ms")
		b.ReportMetric(ms(p99), "command-view-p99-ms")
		b.ReportMetric(ms(percentile(st.commitStream, 0.99)), "commit-stream-p99-ms")
		b.ReportMetric(ms(percentile(st.commitView, 0.99)), "commit-view-p99-ms")
		b.Logf("paced %d/s: %d commands at %.0f cmds/s; reply p50 %.1fms p99 %.1fms; command→view p50 %.1fms p99 %.1fms (goal < 50ms: %s); "+
			"commit→stream p99 %.1fms; commit→view p50 %.1fms p99 %.1fms",
			rate, st.commands, st.cmdRate, ms(percentile(st.reply, 0.5)), ms(percentile(st.reply, 0.99)),
			ms(percentile(st.commandView, 0.5)), ms(p99), met(p99 < 50*time.Millisecond),
			ms(percentile(st.commitStream, 0.99)), ms(percentile(st.commitView, 0.5)), ms(percentile(st.commitView, 0.99)))
	}
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

// rawInsert copies the last n events of the log into a table of the same
// columns with multi-row INSERTs of 100 rows, on one connection, and
// returns rows/s.
func rawInsert(b *testing.B, e *env, n int) float64 {
	b.Helper()
	ctx := context.Background()
	events, err := readLog(ctx, e.db)
	if err != nil {
		b.Fatal(err)
	}
	events = events[max(0, len(events)-n):]
	conn, err := pgx.Connect(ctx, e.dbURL)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS raw_events (
		sequence bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, event_type text NOT NULL, subject_kind text NOT NULL,
		subject_id text NOT NULL, actor text NOT NULL, payload bytea NOT NULL, payload_digest bytea NOT NULL,
		created_at timestamptz NOT NULL DEFAULT clock_timestamp()); TRUNCATE raw_events`); err != nil {
		b.Fatal(err)
	}
	const per = 100
	var sql strings.Builder
	sql.WriteString("INSERT INTO raw_events (event_type, subject_kind, subject_id, actor, payload, payload_digest) VALUES ")
	for i := range per {
		if i > 0 {
			sql.WriteString(",")
		}
		fmt.Fprintf(&sql, "($%d,$%d,$%d,$%d,$%d,$%d)", i*6+1, i*6+2, i*6+3, i*6+4, i*6+5, i*6+6)
	}
	stmt := sql.String()
	args := make([]any, 0, per*6)
	start := time.Now()
	for i := 0; i+per <= len(events); i += per {
		args = args[:0]
		for _, ev := range events[i : i+per] {
			args = append(args, ev.Type, ev.SubjectKind, ev.SubjectID, ev.Actor, ev.Payload, ev.PayloadDigest[:])
		}
		if _, err := conn.Exec(ctx, stmt, args...); err != nil {
			b.Fatal(err)
		}
	}
	rows := len(events) / per * per
	return float64(rows) / time.Since(start).Seconds()
}

// rawPublish publishes the messages of the last n events of the log (same
// headers and bodies, under another subject) to a stream of their own with
// PublishAsync, and returns messages/s once every ack is in.
func rawPublish(b *testing.B, e *env, n int) float64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	events, err := readLog(ctx, e.db)
	if err != nil {
		b.Fatal(err)
	}
	events = events[max(0, len(events)-n):]
	logID, err := e.db.LogID(ctx)
	if err != nil {
		b.Fatal(err)
	}
	nc, err := nats.Connect(e.natsURL)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4000))
	if err != nil {
		b.Fatal(err)
	}
	name := fmt.Sprintf("RAW_%d", time.Now().UnixNano())
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{strings.ToLower(name) + ".>"},
		Storage: jetstream.FileStorage, Replicas: len(e.nats)}); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = js.DeleteStream(context.Background(), name) }()
	msgs := make([]*nats.Msg, len(events))
	for i, ev := range events {
		m := relay.Encode(logID, ev)
		m.Subject = strings.ToLower(name) + "." + strings.TrimPrefix(m.Subject, relay.SubjectPrefix)
		msgs[i] = m
	}
	start := time.Now()
	for _, m := range msgs {
		if _, err := js.PublishMsgAsync(m); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		b.Fatal("raw publish acks did not complete")
	}
	return float64(len(msgs)) / time.Since(start).Seconds()
}

// machine describes the host for the results table.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				model = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		mem = strings.Fields(strings.SplitN(string(b), "\n", 2)[0])[1] + " kB RAM"
	}
	return fmt.Sprintf("%s, %d cores, %s, PostgreSQL %s (fsync=off), nats-server 2.15.2, all on 127.0.0.1", model, runtime.NumCPU(), mem, pgVersion())
}

func pgVersion() string {
	out, err := exec.Command(filepath.Join(testenv.PGBinDir(), "postgres"), "--version").Output()
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(out)) // postgres (PostgreSQL) 15.20 (Debian ...)
	if len(f) < 3 {
		return "?"
	}
	return f[2]
}
