package ingest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/sourcegraph/conc"

	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
)

// BenchmarkIngest measures end-to-end create commands (NATS request →
// decide → group commit on PostgreSQL → reply) with 1, 16 and 64 concurrent
// requesters, and at an offered load of 1,000 commands/s, next to two raw
// baselines measured in the same run: batched INSERTs of the same event
// rows (100 rows per statement, 4 connections; x-raw), and of every row the
// same creates commit — event, command record, package index entry — 100
// commands per transaction on 4 connections (x-raw-cmd-rows). Every create
// carries a command_id, as an idempotent client's would.
//
//	go test -run '^$' -bench . ./ingest/
func BenchmarkIngest(b *testing.B) {
	url, schema := testenv.Schema(b)
	db := testenv.OpenPostgres(b, url, schema)
	e := setupDB(b, db, ingest.Config{})
	var rawRate, rawAllRate float64
	var run atomic.Int64 // keeps names unique across the benchmark's runs

	b.Run("raw-insert-100x4", func(b *testing.B) {
		rawRate = rawInsert(b, url, schema)
	})
	b.Run("raw-command-rows-100x4", func(b *testing.B) {
		rawAllRate = rawCommandRows(b, url, schema)
	})

	for _, requesters := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("requesters=%d", requesters), func(b *testing.B) {
			prefix := fmt.Sprintf("bench-%d", run.Add(1))
			var next atomic.Int64
			lat := make([][]time.Duration, requesters)
			batches0 := histogram(b, e.reg, "artifactstore_ingest_batch_size")
			commits0 := histogram(b, e.reg, "artifactstore_ingest_commit_seconds")
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			var wg conc.WaitGroup
			for w := range requesters {
				wg.Go(func() {
					ctx := context.Background()
					for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
						t0 := time.Now()
						var r ingest.CommandReply
						err := ingest.Call(ctx, e.client, ingest.SubjectCreate, ingest.CreateRequest{
							CommandID: uuid.NewString(), Actor: "bench", Name: prefix, Version: fmt.Sprint(i),
						}, &r)
						if err != nil {
							b.Errorf("create: %v", err)
							return
						}
						lat[w] = append(lat[w], time.Since(t0))
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			rate := float64(b.N) / elapsed.Seconds()
			b.ReportMetric(rate, "cmds/s")
			reportLatency(b, slices.Concat(lat...))
			batches := histogram(b, e.reg, "artifactstore_ingest_batch_size")
			commits := histogram(b, e.reg, "artifactstore_ingest_commit_seconds")
			if n := batches.GetSampleCount() - batches0.GetSampleCount(); n > 0 {
				b.ReportMetric((batches.GetSampleSum()-batches0.GetSampleSum())/float64(n), "cmds/batch")
				b.ReportMetric(1000*(commits.GetSampleSum()-commits0.GetSampleSum())/float64(n), "commit-ms")
			}
			if rawRate > 0 {
				b.ReportMetric(rawRate, "raw-rows/s")
				b.ReportMetric(rate/rawRate, "x-raw")
			}
			if rawAllRate > 0 {
				b.ReportMetric(rate/rawAllRate, "x-raw-cmd-rows")
			}
		})
	}

	b.Run("offered=1000/s", func(b *testing.B) {
		prefix := fmt.Sprintf("bench-%d", run.Add(1))
		const interval = time.Millisecond
		var mu sync.Mutex
		var lat []time.Duration
		var wg conc.WaitGroup
		b.ResetTimer()
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for i := range b.N {
			<-tick.C
			wg.Go(func() {
				t0 := time.Now()
				err := ingest.Call(context.Background(), e.client, ingest.SubjectCreate, ingest.CreateRequest{
					CommandID: uuid.NewString(), Actor: "bench", Name: prefix, Version: fmt.Sprint(i),
				}, nil)
				d := time.Since(t0)
				if err != nil {
					b.Errorf("create: %v", err)
					return
				}
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			})
		}
		wg.Wait()
		b.StopTimer()
		reportLatency(b, lat)
	})
}

func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	q := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}

// rawConns opens the raw baselines' 4 connections to schema, closed when
// the benchmark ends.
func rawConns(b *testing.B, url, schema string) []*pgx.Conn {
	ctx := context.Background()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		b.Fatal(err)
	}
	cfg.RuntimeParams["search_path"] = schema
	pool := make([]*pgx.Conn, 4)
	for i := range pool {
		if pool[i], err = pgx.ConnectConfig(ctx, cfg); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { pool[i].Close(ctx) })
	}
	return pool
}

// rawPerTx is the rows (commands) the raw baselines write per statement
// (transaction).
const rawPerTx = 100

// rawCreates returns n create events of the shape ingest appends, n
// rounded up to whole statements, built before timing; event i is version
// i of package "raw".
func rawCreates(b *testing.B, n int) []store.Event {
	events := make([]store.Event, (n+rawPerTx-1)/rawPerTx*rawPerTx)
	for i := range events {
		id := uuid.Must(uuid.NewV7()).String()
		payload, _ := json.Marshal(store.PackageCreated{PackageID: id, Name: "raw", Version: fmt.Sprint(i),
			Retention: store.RetentionPolicy{Policy: store.RetentionKeepForever}})
		var err error
		if events[i], err = store.NewEvent(store.TypePackageCreated, store.SubjectKindPackage, id, "bench", payload); err != nil {
			b.Fatal(err)
		}
	}
	return events
}

// rawTables creates copies of tables named raw_<table>_<suffix> and
// returns the suffix.
func rawTables(b *testing.B, conn *pgx.Conn, tables ...string) string {
	suffix := fmt.Sprintf("_%d", time.Now().UnixNano())
	for _, t := range tables {
		if _, err := conn.Exec(context.Background(), "CREATE TABLE raw_"+t+suffix+" (LIKE "+t+" INCLUDING ALL)"); err != nil {
			b.Fatal(err)
		}
	}
	return suffix
}

// rawValues is the VALUES list of a rawPerTx-row INSERT of columns
// parameters per row, each row ending with extra.
func rawValues(columns int, extra string) string {
	var sb strings.Builder
	for r := range rawPerTx {
		if r > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString("(")
		for c := range columns {
			if c > 0 {
				sb.WriteString(", ")
			}
			fmt.Fprintf(&sb, "$%d", r*columns+c+1)
		}
		sb.WriteString(extra + ")")
	}
	return sb.String()
}

const rawEventColumns = "(sequence, event_type, subject_kind, subject_id, actor, payload, payload_digest, created_at)"

// rawEventArgs appends event e's parameters at sequence seq.
func rawEventArgs(args []any, seq int64, e store.Event) []any {
	return append(args, seq, e.Type, e.SubjectKind, e.SubjectID, e.Actor, e.Payload, e.PayloadDigest[:])
}

// runRaw times write over [0, n) in chunks of rawPerTx spread over the
// connections, and returns the items per second.
func runRaw(b *testing.B, pool []*pgx.Conn, n int, write func(ctx context.Context, conn *pgx.Conn, from, to int64) error) float64 {
	ctx := context.Background()
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg conc.WaitGroup
	for _, conn := range pool {
		wg.Go(func() {
			for {
				from := next.Add(rawPerTx) - rawPerTx
				if from >= int64(n) {
					return
				}
				if err := write(ctx, conn, from, from+rawPerTx); err != nil {
					b.Errorf("raw insert: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	return float64(n) / elapsed.Seconds()
}

// rawInsert inserts b.N event rows of the shape ingest appends into a copy
// of the events table, 100 rows per INSERT over 4 connections, and returns
// the rows/s it reached.
func rawInsert(b *testing.B, url, schema string) float64 {
	pool := rawConns(b, url, schema)
	suffix := rawTables(b, pool[0], "events")
	events := rawCreates(b, b.N)
	stmt := "INSERT INTO raw_events" + suffix + " " + rawEventColumns + " VALUES " + rawValues(7, ", now()")
	rate := runRaw(b, pool, len(events), func(ctx context.Context, conn *pgx.Conn, from, to int64) error {
		args := make([]any, 0, rawPerTx*7)
		for i := from; i < to; i++ {
			args = rawEventArgs(args, i+1, events[i])
		}
		_, err := conn.Exec(ctx, stmt, args...)
		return err
	})
	b.ReportMetric(rate, "rows/s")
	return rate
}

// rawCommandRows inserts, for b.N commands, every row a create commits —
// its event, its command record (id and sequence) and its package index
// entry — into copies of those tables: 100 commands per transaction (one
// 100-row INSERT per table) over 4 connections, and returns the
// commands/s it reached. It is the "same rows" baseline for what one
// accepted create writes, where rawInsert counts the event rows alone.
func rawCommandRows(b *testing.B, url, schema string) float64 {
	pool := rawConns(b, url, schema)
	suffix := rawTables(b, pool[0], "events", "commands", "package_index")
	events := rawCreates(b, b.N)
	commandIDs := make([]string, len(events))
	for i := range commandIDs {
		commandIDs[i] = uuid.NewString()
	}
	insEvents := "INSERT INTO raw_events" + suffix + " " + rawEventColumns + " VALUES " + rawValues(7, ", now()")
	insCommands := "INSERT INTO raw_commands" + suffix + " (command_id, sequence) VALUES " + rawValues(2, "")
	insIndex := "INSERT INTO raw_package_index" + suffix + " (package_id, name, version, status) VALUES " + rawValues(3, ", 'open'")
	rate := runRaw(b, pool, len(events), func(ctx context.Context, conn *pgx.Conn, from, to int64) error {
		var ev, cmd, idx []any
		for i := from; i < to; i++ {
			ev = rawEventArgs(ev, i+1, events[i])
			cmd = append(cmd, commandIDs[i], i+1)
			idx = append(idx, events[i].SubjectID, "raw", fmt.Sprint(i))
		}
		batch := &pgx.Batch{}
		batch.Queue("begin")
		batch.Queue(insCommands, cmd...)
		batch.Queue(insIndex, idx...)
		batch.Queue(insEvents, ev...)
		batch.Queue("commit")
		return conn.SendBatch(ctx, batch).Close()
	})
	b.ReportMetric(rate, "cmds/s")
	return rate
}
