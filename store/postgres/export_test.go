package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/store"
)

// The append of the log without its hash chain, for BenchmarkChainCost's
// baseline: what Append and AppendCommands would send if there were no
// chain to compute. With no digest to wait for, the counter update, the
// insert (sequences and created_at taken from log_head on the server) and
// the NOTIFY go in one pipeline, and the command side ends its transaction
// in one round trip, holding the log_head lock for that round trip only.
// The parameters are encoded as the chained insert's are (eventRows); the
// events get the zero chain digest. Like Append and AppendCommands, it
// returns the events as appended (sequence and created_at set).

const unchainedInsert = `INSERT INTO events (` + eventColumns + `)
	SELECT h.sequence - $1 + u.ord, u.t, u.k, u.i, u.a, substring($6::bytea FROM u.o FOR u.l),
		substring($7::bytea FROM u.ord::integer * 32 - 31 FOR 32), h.created_at, $10::bytea
	FROM log_head h, unnest($2::text[], $3::text[], $4::text[], $5::text[], $8::integer[], $9::integer[])
		WITH ORDINALITY AS u(t, k, i, a, o, l, ord)`

func (t *tx) queueUnchained(b *pgx.Batch, events []store.Event) (appended func() []store.Event, err error) {
	if err := t.validate(events); err != nil {
		return nil, err
	}
	n := len(events)
	r := newEventRows(events, nil)
	var last int64
	var at time.Time
	b.Queue(`UPDATE log_head SET sequence = sequence + $1, created_at = greatest(clock_timestamp(), created_at)
		RETURNING sequence, created_at`, n).QueryRow(func(row pgx.Row) error { return row.Scan(&last, &at) })
	b.Queue(unchainedInsert, n, r.types, r.kinds, r.ids, r.actors, r.payloads, r.digests, r.offsets, r.lengths, make([]byte, 32))
	b.Queue(`SELECT pg_notify($1, '')`, t.db.channel)
	t.appended = true
	return func() []store.Event {
		out := make([]store.Event, n)
		for i, e := range events {
			e.Sequence, e.CreatedAt = last-int64(n-1-i), store.DBTime(at)
			out[i] = e
		}
		return out
	}, nil
}

// AppendUnchained is Append without the chain.
func AppendUnchained(ctx context.Context, stx store.Tx, events []store.Event) ([]store.Event, error) {
	t := stx.(*tx)
	b := &pgx.Batch{}
	appended, err := t.queueUnchained(b, events)
	if err != nil {
		return nil, err
	}
	if err := t.tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, translate(err)
	}
	return appended(), nil
}

// ClaimAllUnlocked is ClaimAll without the chain: it does not lock the
// log's head.
func ClaimAllUnlocked(ctx context.Context, stx store.Tx, commandIDs []string, fingerprints [][]byte, createIDs, names, versions, finalIDs []string) error {
	_, _, _, _, err := stx.(*tx).claimAll(ctx, headUntouched, commandIDs, fingerprints, createIDs, names, versions, finalIDs)
	return err
}

// AppendCommandsUnchained is AppendCommands without the chain.
func AppendCommandsUnchained(ctx context.Context, stx store.Tx, events []store.Event, commandIDs []string) ([]store.Event, error) {
	t := stx.(*tx)
	b := &pgx.Batch{}
	appended, err := t.queueUnchained(b, events)
	if err != nil {
		return nil, err
	}
	n := len(events)
	var ids []string
	var offsets []int32
	for i, id := range commandIDs {
		if id != "" {
			ids, offsets = append(ids, id), append(offsets, int32(n-1-i))
		}
	}
	if len(ids) > 0 {
		b.Queue(`INSERT INTO commands (command_id, sequence)
			SELECT u.id, h.sequence - u.off FROM log_head h, unnest($1::text[], $2::int[]) AS u(id, off)
			ON CONFLICT (command_id) DO UPDATE SET sequence = excluded.sequence WHERE commands.sequence IS NULL`, ids, offsets)
	}
	if err := t.tx.commit(ctx, b); err != nil {
		return nil, fmt.Errorf("appending %d events: %w", n, err)
	}
	return appended(), nil
}

// BackendPID returns the process id of the server backend running stx.
func BackendPID(ctx context.Context, stx store.Tx) (int, error) {
	var pid int
	err := stx.(*tx).tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid)
	return pid, err
}

// Channel returns the NOTIFY channel of db's log.
func Channel(db *DB) string { return db.channel }

// PlantGuess makes db expect the head to be seq with chain digest chain and
// created_at at, left by a transaction that may still be open, and the
// database's clock to be offset ahead of this host's.
func PlantGuess(db *DB, seq int64, chain store.Digest, at time.Time, open bool, offset time.Duration) {
	db.guess.mu.Lock()
	defer db.guess.mu.Unlock()
	db.guess.head = &logHead{sequence: seq, chain: chain[:], at: at, clock: at}
	db.guess.open = open
	db.guess.clock, db.guess.readAt, db.guess.skip = time.Now().Add(offset), time.Now(), 0
}
