package e2e

import (
	"context"
	"fmt"
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
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/internal/wire"
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
		seq, err1 := strconv.ParseInt(h.Get(wire.HeaderSequence), 10, 64)
		at, err2 := time.Parse(wire.CreatedAtLayout, h.Get(wire.HeaderCreatedAt))
		if err1 != nil || err2 != nil {
			return
		}
		p := wire.Partition(h.Get(wire.HeaderSubjectID), o.partitions)
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
	o := newObserver(e.parts)
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

// waitAssigned waits until the projectors have settled their ownership:
// the partitions they own add up to the partition count, each owning some,
// for a second on end. A benchmark measures the steady state; partitions
// moving while the first commands flow show up as a rebalance, not as the
// pipeline's latency.
func waitAssigned(b testing.TB, e *env) {
	b.Helper()
	settled := func() bool {
		total := 0
		for _, p := range e.projectors {
			n, err := p.metric("artifactstore_projector_owned_partitions")
			if err != nil || n <= 0 {
				return false
			}
			total += int(n)
		}
		return total == e.parts
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
		return time.Since(since) >= time.Second // still so a few heartbeats later
	}, "the projectors to share the %d partitions", e.parts)
}

// benchConfig is one durability setting of the servers.
type benchConfig struct {
	name string
	// pgOptions are added to the throwaway cluster's settings (after its
	// fsync=off, so they win).
	pgOptions []string
	// natsSync runs nats-server with sync_interval: always.
	natsSync bool
	// publishBatch is the relay's --publish-batch.
	publishBatch int
	desc         string
}

var benchConfigs = []benchConfig{
	{name: "fast", desc: "PostgreSQL fsync=off (the test cluster's setting), JetStream default sync (flush every 2 min)"},
	{name: "durable", pgOptions: []string{"fsync=on", "synchronous_commit=on", "full_page_writes=on"}, natsSync: true,
		desc: "PostgreSQL fsync=on, synchronous_commit=on; JetStream sync_interval: always (the shipped deployment's durability)"},
	{name: "durable-batch", pgOptions: []string{"fsync=on", "synchronous_commit=on", "full_page_writes=on"}, natsSync: true,
		publishBatch: 1000, desc: "durable, and the relay publishes atomic batches of up to 1000 (--publish-batch 1000, as compose runs it)"},
}

// BenchmarkEndToEnd starts PostgreSQL, a nats-server and the services as
// processes, drives create-then-finalize commands from 64 concurrent
// clients, and reports throughput and latency next to the raw pipeline
// limit measured in the same run on the same servers: 1 / Σ(1/rate) over
// five raw stages (NATS request/reply from 64 clients, 100-row INSERTs
// into a copy of events from 4 writers, JetStream PublishAsync of 300-byte
// messages with ids and a 1024 window, one ordered consumer reading 20,000
// messages, 500-row upserts plus a checkpoint UPDATE per transaction from
// 2 writers). The paced sub-benchmark offers 1,000 commands/s and reports
// p99 command → view.
//
// It runs each configuration of benchConfigs on its own PostgreSQL
// cluster: "fast" (fsync off, JetStream's default sync) and "durable"
// (fsync on, JetStream sync_interval: always). Under "fast" it also runs
// the "replicated" deployment, ingest ×2, relay ×2 (one standby) and
// projector ×3 sharing the same cores (the shape a highly available
// deployment spreads over machines; co-located, it measures what the
// extra processes cost). The raw limit is measured with the "single"
// deployment, one process of each service.
func BenchmarkEndToEnd(b *testing.B) {
	commands := 20000
	if v, err := strconv.Atoi(os.Getenv(EnvBenchCommands)); err == nil && v > 0 {
		commands = v
	}
	b.Logf("machine: %s", machine())
	for _, cfg := range benchConfigs {
		b.Run(cfg.name, func(b *testing.B) {
			pg := newPG(b, cfg.pgOptions...)
			b.Logf("%s: %s; the cluster reports %s", cfg.name, cfg.desc, pgSettings(b, pg))
			deployments := []struct {
				name                       string
				ingest, relays, projectors int
			}{{"single", 1, 1, 1}}
			if cfg.name == "fast" {
				deployments = append(deployments, struct {
					name                       string
					ingest, relays, projectors int
				}{"replicated", 2, 2, 3})
			}
			for _, d := range deployments {
				b.Run(d.name, func(b *testing.B) {
					e := startEnv(b, pg, "bench_"+d.name, envOptions{logLevel: "warn", natsSyncAlways: cfg.natsSync,
						publishBatch: cfg.publishBatch, ingest: d.ingest, relays: d.relays, projectors: d.projectors})
					b.Logf("%s/%s: ingest ×%d, relay ×%d, projector ×%d, %d partitions", cfg.name, d.name, d.ingest, d.relays, d.projectors, e.parts)
					waitAssigned(b, e)
					b.Run("throughput", func(b *testing.B) { benchThroughput(b, e, commands, d.name == "single") })
					b.Run("paced-1000", func(b *testing.B) { benchPaced(b, e, commands) })
				})
			}
		})
	}
}

// pgSettings reads the cluster's durability settings.
func pgSettings(b *testing.B, pg *pgServer) string {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.c.URL())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	var out []string
	for _, name := range []string{"fsync", "synchronous_commit", "full_page_writes", "wal_sync_method"} {
		var v string
		if err := conn.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v); err != nil {
			b.Fatal(err)
		}
		out = append(out, name+"="+v)
	}
	return strings.Join(out, " ")
}

// benchThroughput drives commands from 64 clients as fast as they are
// answered; with limit it then measures the raw stages on the same
// servers and reports e2e (command → view) against their limit.
func benchThroughput(b *testing.B, e *env, commands int, limit bool) {
	const clients = 64
	b.ReportAllocs()
	for b.Loop() {
		perClient := max(1, commands/2/clients)
		l := newLoad(b, e, loadOptions{clients: clients, packages: perClient})
		cpu0, applied0, batches0 := cpuByKind(e), projectorSum(e, "events_applied_total"), projectorSum(e, "batches_total")
		st := measure(b, e, l, perClient*clients*2)
		cpu, applied, batches := cpuByKind(e), projectorSum(e, "events_applied_total"), projectorSum(e, "batches_total")
		if batches > batches0 {
			b.ReportMetric((applied-applied0)/(batches-batches0), "events/projector-tx")
			b.Logf("projectors: %.0f events in %.0f transactions, %.1f events per transaction", applied-applied0, batches-batches0,
				(applied-applied0)/(batches-batches0))
		}
		b.ReportMetric(st.cmdRate, "cmds/s")
		b.ReportMetric(st.streamRate, "stream-events/s")
		b.ReportMetric(st.vRate, "view-events/s")
		b.ReportMetric(ms(percentile(st.reply, 0.5)), "reply-p50-ms")
		b.ReportMetric(ms(percentile(st.reply, 0.99)), "reply-p99-ms")
		b.ReportMetric(ms(percentile(st.commitStream, 0.99)), "commit-stream-p99-ms")
		b.ReportMetric(ms(percentile(st.commitView, 0.99)), "commit-view-p99-ms")
		b.Logf("throughput: %d commands from %d clients in %s: %.0f cmds/s, %.0f events/s into the stream, %.0f into the views; "+
			"reply p50 %.1fms p99 %.1fms; commit→stream p50 %.1fms p99 %.1fms; commit→view p50 %.1fms p99 %.1fms",
			st.commands, clients, st.took.Round(time.Millisecond), st.cmdRate, st.streamRate, st.vRate,
			ms(percentile(st.reply, 0.5)), ms(percentile(st.reply, 0.99)),
			ms(percentile(st.commitStream, 0.5)), ms(percentile(st.commitStream, 0.99)),
			ms(percentile(st.commitView, 0.5)), ms(percentile(st.commitView, 0.99)))
		var per []string
		for _, k := range []string{"nats-server", "postgres", "ingest", "relay", "projector"} {
			us := float64((cpu[k] - cpu0[k]).Microseconds()) / float64(st.commands)
			b.ReportMetric(us, k+"-cpu-us/cmd")
			per = append(per, fmt.Sprintf("%s %.0f", k, us))
		}
		b.Logf("CPU per command (µs, user+system, from /proc): %s; load average %s", strings.Join(per, ", "), loadAverage())
		if !limit {
			continue
		}
		stages := measureRawStages(b, e)
		lim := rawLimit(stages)
		var lines []string
		for _, s := range stages {
			b.ReportMetric(s.rate, "raw-"+s.name+"/s")
			lines = append(lines, fmt.Sprintf("%-16s %9.0f /s (%d in the run)", s.name, s.rate, s.n))
		}
		b.ReportMetric(lim, "raw-limit/s")
		b.ReportMetric(st.vRate/lim, "e2e/limit")
		b.Logf("raw stages:\n  %s\nraw pipeline limit 1/Σ(1/rate) = %.0f commands/s; e2e (command → view, 64 clients) %.0f/s = %.3f× the limit (goal ≥ 0.35×: %s)",
			strings.Join(lines, "\n  "), lim, st.vRate, st.vRate/lim, met(st.vRate/lim >= 0.35))
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

// projectorSum sums a projector counter (artifactstore_projector_<name>)
// over every partition of every projector; 0 where it cannot be read.
func projectorSum(e *env, name string) float64 {
	var sum float64
	for _, p := range e.projectors {
		if v, err := p.metric("artifactstore_projector_" + name); err == nil {
			sum += v
		}
	}
	return sum
}

// cpuByKind returns the CPU time used so far by the deployment's
// processes, summed by kind: nats-server, postgres (the postmaster, its
// live backends and the reaped ones), ingest, relay, projector.
func cpuByKind(e *env) map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, p := range e.all() {
		kind := p.name[:strings.LastIndex(p.name, "-")]
		if strings.HasPrefix(p.name, "nats-") {
			kind = "nats-server"
		}
		if pid := p.pid(); pid > 0 {
			out[kind] += cpuTime(pid, false)
		}
	}
	out["postgres"] = postgresCPU(e.pg)
	return out
}

func (p *proc) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil || isDone(p.done) {
		return 0
	}
	return p.cmd.Process.Pid
}

// clockTick is Linux's USER_HZ, the unit of /proc/<pid>/stat times.
const clockTick = 10 * time.Millisecond

// cpuTime reads a process's user+system time from /proc (with children:
// also that of its reaped children); 0 when it cannot.
func cpuTime(pid int, children bool) time.Duration {
	f := procStat(pid)
	if len(f) < 15 {
		return 0
	}
	idx := []int{11, 12} // utime, stime (fields 14, 15; f[0] is field 3)
	if children {
		idx = append(idx, 13, 14) // cutime, cstime
	}
	var ticks int64
	for _, i := range idx {
		n, _ := strconv.ParseInt(f[i], 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * clockTick
}

// procStat returns the fields of /proc/<pid>/stat after the command name.
func procStat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

// postgresCPU sums the cluster's postmaster (with its reaped children)
// and its live children.
func postgresCPU(pg *pgServer) time.Duration {
	b, err := os.ReadFile(filepath.Join(pg.c.Dir, "data", "postmaster.pid"))
	if err != nil {
		return 0
	}
	pm, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		return 0
	}
	total := cpuTime(pm, true)
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if f := procStat(pid); len(f) > 1 && f[1] == strconv.Itoa(pm) {
			total += cpuTime(pid, false)
		}
	}
	return total
}

// loadAverage is /proc/loadavg's 1, 5 and 15 minute figures: the machine
// is shared, and a busy one explains a slow run.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
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
	return fmt.Sprintf("%s, %d cores, %s, PostgreSQL %s, nats-server 2.15.2, all on 127.0.0.1", model, runtime.NumCPU(), mem, pgVersion())
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
