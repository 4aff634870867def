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
// requesters, and at an offered load of 1,000 commands/s, next to a raw
// batched INSERT of the same event rows (100 rows per statement, 4
// connections) measured in the same run. Every create carries a command_id,
// as an idempotent client's would.
//
//	go test -run '^$' -bench . ./ingest/
func BenchmarkIngest(b *testing.B) {
	url, schema := testenv.Schema(b)
	db := testenv.OpenPostgres(b, url, schema)
	e := setupDB(b, db, ingest.Config{})
	var rawRate float64
	var run atomic.Int64 // keeps names unique across the benchmark's runs

	b.Run("raw-insert-100x4", func(b *testing.B) {
		rawRate = rawInsert(b, url, schema)
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

// rawInsert inserts b.N event rows of the shape ingest appends into a copy
// of the events table, 100 rows per INSERT over 4 connections, and returns
// the rows/s it reached.
func rawInsert(b *testing.B, url, schema string) float64 {
	ctx := context.Background()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		b.Fatal(err)
	}
	cfg.RuntimeParams["search_path"] = schema
	const conns, perStmt = 4, 100
	pool := make([]*pgx.Conn, conns)
	for i := range pool {
		if pool[i], err = pgx.ConnectConfig(ctx, cfg); err != nil {
			b.Fatal(err)
		}
		defer pool[i].Close(ctx)
	}
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
