package e2e

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/store"
)

// rawStage is one raw stage of the pipeline, measured without
// artifactstore's code: what the machine and the servers can do at most.
type rawStage struct {
	name string
	rate float64 // items per second
	n    int     // items measured
}

// rawStageTime is how long each time-bounded raw stage runs.
const rawStageTime = 2 * time.Second

// rawLimit is the pipeline's raw limit: one command passes through every
// stage once, so its raw cost is the sum of the stages' costs per item,
// 1 / Σ(1/rate).
func rawLimit(stages []rawStage) float64 {
	var cost float64
	for _, s := range stages {
		cost += 1 / s.rate
	}
	return 1 / cost
}

// measureRawStages runs the five raw stages one after another against the
// deployment's own PostgreSQL database and nats-server (its services idle),
// with rows and messages shaped like the log's events.
func measureRawStages(b *testing.B, e *env) []rawStage {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	events, err := e.db.Fetch(ctx, 0, 5000)
	if err != nil || len(events) == 0 {
		b.Fatalf("raw stages: reading events to copy: %v (%d)", err, len(events))
	}
	insert, err := rawInsertStage(ctx, e, events)
	if err != nil {
		b.Fatalf("raw INSERT: %v", err)
	}
	publish, read, err := rawPublishAndReadStages(ctx, e)
	if err != nil {
		b.Fatalf("raw JetStream publish/read: %v", err)
	}
	request, err := rawRequestStage(ctx, e, events)
	if err != nil {
		b.Fatalf("raw request/reply: %v", err)
	}
	upsert, err := rawUpsertStage(ctx, e, events)
	if err != nil {
		b.Fatalf("raw upsert: %v", err)
	}
	// In the order a command passes them.
	return []rawStage{request, insert, publish, read, upsert}
}

// forWriters runs n writers until each returns; each adds what it did to
// done. It returns the items per second over the wall time.
func forWriters(n int, fn func(w int, done *atomic.Int64) error) (float64, int, error) {
	var done atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := time.Now()
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = fn(w, &done)
		}()
	}
	wg.Wait()
	took := time.Since(start)
	return float64(done.Load()) / took.Seconds(), int(done.Load()), errors.Join(errs...)
}

// rawInsertStage: 100-row multi-row INSERTs into a copy of events (same
// columns, constraints and indexes, no triggers) from 4 writers, each on
// its own connection, for rawStageTime.
func rawInsertStage(ctx context.Context, e *env, events []store.Event) (rawStage, error) {
	const writers, per = 4, 100
	if err := execSQL(ctx, e.dbURL, `DROP TABLE IF EXISTS raw_events;
		CREATE TABLE raw_events (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)`); err != nil {
		return rawStage{}, err
	}
	var sql strings.Builder
	// Every column an event row has, the chain digest included.
	const cols = 8
	sql.WriteString("INSERT INTO raw_events (sequence, event_type, subject_kind, subject_id, actor, payload, payload_digest, chain_digest, created_at) VALUES ")
	for i := range per {
		if i > 0 {
			sql.WriteString(",")
		}
		sql.WriteString("(")
		for c := range cols {
			fmt.Fprintf(&sql, "$%d,", i*cols+c+1)
		}
		sql.WriteString("clock_timestamp())")
	}
	var seq atomic.Int64
	rate, n, err := forWriters(writers, func(w int, done *atomic.Int64) error {
		conn, err := pgx.Connect(ctx, e.dbURL)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		args := make([]any, 0, per*cols)
		deadline := time.Now().Add(rawStageTime)
		for i := w * per; time.Now().Before(deadline); i += writers * per {
			args = args[:0]
			first := seq.Add(per) - per
			for j := range per {
				ev := events[(i+j)%len(events)]
				args = append(args, first+int64(j)+1, ev.Type, ev.SubjectKind, ev.SubjectID, ev.Actor, ev.Payload, ev.PayloadDigest[:], ev.ChainDigest[:])
			}
			if _, err := conn.Exec(ctx, sql.String(), args...); err != nil {
				return err
			}
			done.Add(per)
		}
		return nil
	})
	return rawStage{name: "pg-insert", rate: rate, n: n}, err
}

// rawPublishAndReadStages: JetStream PublishAsync of 300-byte messages,
// each with a message id, at most 1024 in flight, into a file-storage
// stream of its own (for rawStageTime and at least 20,000 messages); then
// one ordered consumer reads 20,000 of them.
func rawPublishAndReadStages(ctx context.Context, e *env) (publish, read rawStage, err error) {
	const window, reads = 1024, 20000
	nc, err := nats.Connect(e.natsURL)
	if err != nil {
		return publish, read, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(window))
	if err != nil {
		return publish, read, err
	}
	name := fmt.Sprintf("RAW_%d", time.Now().UnixNano())
	subject := strings.ToLower(name)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subject},
		Storage: jetstream.FileStorage, Replicas: len(e.nats), Duplicates: time.Minute}); err != nil {
		return publish, read, err
	}
	defer func() { _ = js.DeleteStream(context.Background(), name) }()
	body := make([]byte, 300)
	_, _ = rand.Read(body)
	start := time.Now()
	n := 0
	for ; n < reads || time.Since(start) < rawStageTime; n++ {
		m := &nats.Msg{Subject: subject, Data: body, Header: nats.Header{jetstream.MsgIDHeader: []string{fmt.Sprintf("raw-%d", n)}}}
		_, err := js.PublishMsgAsync(m)
		for errors.Is(err, jetstream.ErrTooManyStalledMsgs) { // the window stayed full for 200ms: wait on
			_, err = js.PublishMsgAsync(m)
		}
		if err != nil {
			return publish, read, err
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return publish, read, errors.New("raw publish acks did not complete")
	}
	publish = rawStage{name: "js-publish", rate: float64(n) / time.Since(start).Seconds(), n: n}

	start = time.Now()
	c, err := js.OrderedConsumer(ctx, name, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return publish, read, err
	}
	it, err := c.Messages(jetstream.PullMaxMessages(1000)) // as a projector partition pulls
	if err != nil {
		return publish, read, err
	}
	defer it.Stop()
	for range reads {
		if _, err := it.Next(); err != nil {
			return publish, read, err
		}
	}
	read = rawStage{name: "js-ordered-read", rate: reads / time.Since(start).Seconds(), n: reads}
	return publish, read, nil
}

// rawRequestStage: NATS request/reply from 64 clients (8 connections, as
// the load shares them) to one raw responder that answers every request
// with a fixed 200-byte reply, for rawStageTime.
func rawRequestStage(ctx context.Context, e *env, events []store.Event) (rawStage, error) {
	const clients = 64
	srv, err := nats.Connect(e.natsURL)
	if err != nil {
		return rawStage{}, err
	}
	defer srv.Close()
	reply := make([]byte, 200)
	subject := fmt.Sprintf("raw.request.%d", time.Now().UnixNano())
	sub, err := srv.Subscribe(subject, func(m *nats.Msg) { _ = m.Respond(reply) })
	if err != nil {
		return rawStage{}, err
	}
	defer sub.Unsubscribe() //nolint:errcheck
	if err := srv.Flush(); err != nil {
		return rawStage{}, err
	}
	conns := make([]*nats.Conn, clients/8)
	for i := range conns {
		if conns[i], err = nats.Connect(e.natsURL); err != nil {
			return rawStage{}, err
		}
		defer conns[i].Close()
	}
	req := []byte(fmt.Sprintf(`{"command_id":"raw-%d","actor":"bench","name":%q,"version":"1.0.0"}`, len(events), events[0].SubjectID))
	rate, n, err := forWriters(clients, func(w int, done *atomic.Int64) error {
		nc := conns[w%len(conns)]
		deadline := time.Now().Add(rawStageTime)
		for time.Now().Before(deadline) {
			if _, err := nc.RequestWithContext(ctx, subject, req); err != nil {
				return err
			}
			done.Add(1)
		}
		return nil
	})
	return rawStage{name: "nats-request", rate: rate, n: n}, err
}

// rawUpsertStage: transactions of one 500-row INSERT … ON CONFLICT DO
// UPDATE into a copy of artifact_packages (half the rows new, half
// updates of the previous transaction's rows, as creates and finalizes
// mix) and one checkpoint UPDATE, from 2 writers, for rawStageTime.
func rawUpsertStage(ctx context.Context, e *env, events []store.Event) (rawStage, error) {
	const writers, per = 2, 500
	if err := execSQL(ctx, e.dbURL, `DROP TABLE IF EXISTS raw_packages, raw_checkpoints;
		CREATE TABLE raw_packages (LIKE artifact_packages INCLUDING ALL);
		CREATE TABLE raw_checkpoints (LIKE checkpoints INCLUDING ALL);
		INSERT INTO raw_checkpoints VALUES ('raw', 0, 0), ('raw', 1, 0)`); err != nil {
		return rawStage{}, err
	}
	const cols = 11
	var sql strings.Builder
	sql.WriteString("INSERT INTO raw_packages VALUES ")
	for i := range per {
		if i > 0 {
			sql.WriteString(",")
		}
		sql.WriteString("(")
		for c := range cols {
			if c > 0 {
				sql.WriteString(",")
			}
			fmt.Fprintf(&sql, "$%d", i*cols+c+1)
		}
		sql.WriteString(")")
	}
	sql.WriteString(` ON CONFLICT (package_id) DO UPDATE SET status = excluded.status, finalized_by = excluded.finalized_by,
		finalized_at = excluded.finalized_at, manifest_digest = excluded.manifest_digest, last_sequence = excluded.last_sequence`)
	digest := store.DigestOf([]byte("manifest"))
	rate, n, err := forWriters(writers, func(w int, done *atomic.Int64) error {
		conn, err := pgx.Connect(ctx, e.dbURL)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		args := make([]any, 0, per*cols)
		deadline := time.Now().Add(rawStageTime)
		for k := 0; time.Now().Before(deadline); k++ {
			args = args[:0]
			now := time.Now().UTC()
			for j := k * per / 2; j < k*per/2+per; j++ {
				ev := events[j%len(events)]
				seq := int64(j + 1)
				if j < (k+1)*per/2 && k > 0 { // the previous transaction's row: finalize it
					args = append(args, fmt.Sprintf("w%d-%09d", w, j), ev.SubjectID, "1.0.0", store.StatusFinalized, ev.Actor, now,
						ev.Actor, now, digest[:], seq, seq+per)
					continue
				}
				args = append(args, fmt.Sprintf("w%d-%09d", w, j), ev.SubjectID, "1.0.0", store.StatusOpen, ev.Actor, now,
					nil, nil, nil, seq, seq)
			}
			err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				batch := &pgx.Batch{}
				batch.Queue(sql.String(), args...)
				batch.Queue("UPDATE raw_checkpoints SET sequence = $1 WHERE projection = 'raw' AND partition = $2", int64(k), w)
				return tx.SendBatch(ctx, batch).Close()
			})
			if err != nil {
				return err
			}
			done.Add(per)
		}
		return nil
	})
	return rawStage{name: "pg-upsert", rate: rate, n: n}, err
}

// execSQL runs statements on a connection of its own.
func execSQL(ctx context.Context, url, sql string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}
