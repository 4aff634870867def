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

// rawInsert inserts b.N event rows of the shape ingest appends into a copy
// of the events table, 100 rows per INSERT over 4 connections, and returns
// the rows/s it reached.
func rawInsert(b *testing.B, url, schema string) float64 {
	ctx := context.Background()
	const perStmt = 100
	pool := rawConns(b, url, schema)
	table := fmt.Sprintf("raw_events_%d", time.Now().UnixNano())
	if _, err := pool[0].Exec(ctx, "CREATE TABLE "+table+" (LIKE events INCLUDING ALL)"); err != nil {
		b.Fatal(err)
	}
	// Build the rows before timing: the same events a create appends.
	// Whole statements only: b.N rounded up to a multiple of 100.
	events := make([]store.Event, (b.N+perStmt-1)/perStmt*perStmt)
	for i := range events {
		id := uuid.Must(uuid.NewV7()).String()
		payload, _ := json.Marshal(store.PackageCreated{PackageID: id, Name: "raw", Version: fmt.Sprint(i),
			Retention: store.RetentionPolicy{Policy: store.RetentionKeepForever}})
		var err error
		if events[i], err = store.NewEvent(store.TypePackageCreated, store.SubjectKindPackage, id, "bench", payload); err != nil {
			b.Fatal(err)
		}
	}
	var stmt strings.Builder
	stmt.WriteString("INSERT INTO " + table + " (sequence, event_type, subject_kind, subject_id, actor, payload, payload_digest, created_at) VALUES ")
	for r := range perStmt {
		if r > 0 {
			stmt.WriteString(", ")
		}
		fmt.Fprintf(&stmt, "($%d, $%d, $%d, $%d, $%d, $%d, $%d, now())", r*7+1, r*7+2, r*7+3, r*7+4, r*7+5, r*7+6, r*7+7)
	}
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg conc.WaitGroup
	for _, conn := range pool {
		wg.Go(func() {
			args := make([]any, 0, perStmt*7)
			for {
				from := next.Add(perStmt) - perStmt
				if from >= int64(len(events)) {
					return
				}
				to := from + perStmt
				args = args[:0]
				for i := from; i < to; i++ {
					ev := events[i]
					args = append(args, i+1, ev.Type, ev.SubjectKind, ev.SubjectID, ev.Actor, ev.Payload, ev.PayloadDigest[:])
				}
				if _, err := conn.Exec(ctx, stmt.String(), args...); err != nil {
					b.Errorf("raw insert: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	rate := float64(len(events)) / elapsed.Seconds()
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
	ctx := context.Background()
	const perTx = 100
	pool := rawConns(b, url, schema)
	suffix := fmt.Sprintf("_%d", time.Now().UnixNano())
	for _, t := range []string{"events", "commands", "package_index"} {
		if _, err := pool[0].Exec(ctx, "CREATE TABLE raw_"+t+suffix+" (LIKE "+t+" INCLUDING ALL)"); err != nil {
			b.Fatal(err)
		}
	}
	type row struct {
		ev        store.Event
		commandID string
		version   string
	}
	rows := make([]row, (b.N+perTx-1)/perTx*perTx)
	for i := range rows {
		id := uuid.Must(uuid.NewV7()).String()
		r := row{commandID: uuid.NewString(), version: fmt.Sprint(i)}
		payload, _ := json.Marshal(store.PackageCreated{PackageID: id, Name: "raw", Version: r.version,
			Retention: store.RetentionPolicy{Policy: store.RetentionKeepForever}})
		var err error
		if r.ev, err = store.NewEvent(store.TypePackageCreated, store.SubjectKindPackage, id, "bench", payload); err != nil {
			b.Fatal(err)
		}
		rows[i] = r
	}
	values := func(cols, perRow int, extra string) string {
		var sb strings.Builder
		for r := range perTx {
			if r > 0 {
				sb.WriteString(", ")
			}
			sb.WriteString("(")
			for c := range perRow {
				if c > 0 {
					sb.WriteString(", ")
				}
				fmt.Fprintf(&sb, "$%d", r*perRow+c+1)
			}
			sb.WriteString(extra + ")")
		}
		return sb.String()
	}
	insEvents := "INSERT INTO raw_events" + suffix + " (sequence, event_type, subject_kind, subject_id, actor, payload, payload_digest, created_at) VALUES " + values(7, 7, ", now()")
	insCommands := "INSERT INTO raw_commands" + suffix + " (command_id, sequence) VALUES " + values(2, 2, "")
	insIndex := "INSERT INTO raw_package_index" + suffix + " (package_id, name, version, status) VALUES " + values(3, 3, ", 'open'")
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg conc.WaitGroup
	for _, conn := range pool {
		wg.Go(func() {
			for {
				from := next.Add(perTx) - perTx
				if from >= int64(len(rows)) {
					return
				}
				var ev, cmd, idx []any
				for i := from; i < from+perTx; i++ {
					r := rows[i]
					ev = append(ev, i+1, r.ev.Type, r.ev.SubjectKind, r.ev.SubjectID, r.ev.Actor, r.ev.Payload, r.ev.PayloadDigest[:])
					cmd = append(cmd, r.commandID, i+1)
					idx = append(idx, r.ev.SubjectID, "raw", r.version)
				}
				batch := &pgx.Batch{}
				batch.Queue("begin")
				batch.Queue(insCommands, cmd...)
				batch.Queue(insIndex, idx...)
				batch.Queue(insEvents, ev...)
				batch.Queue("commit")
				if err := conn.SendBatch(ctx, batch).Close(); err != nil {
					b.Errorf("raw insert: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	rate := float64(len(rows)) / elapsed.Seconds()
	b.ReportMetric(rate, "cmds/s")
	return rate
}
