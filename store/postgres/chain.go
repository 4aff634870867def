package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/store"
)

// The hash chain (store.ChainDigest) is computed here, because PostgreSQL
// has no BLAKE3, under the log_head lock that also orders the sequences.
// log_head carries the chain head, so the statement that locks it reads
// the previous digest with the last sequence: ClaimAll's round trip, or
// the first Append's. The chained rows, which move the head, travel with
// the transaction's next round trip (at the latest its COMMIT): the round
// trips an append took before the chain.

// logHead is the log_head row: the last sequence, the created_at of the
// last event and its chain digest, plus the server's clock when read.
type logHead struct {
	sequence int64
	at       time.Time
	chain    []byte
	clock    time.Time
}

// createdAt is the created_at of events appended after h, read at h.clock:
// the clock, but never below the previous event's.
func (h *logHead) createdAt() time.Time {
	if h.clock.Before(h.at) {
		return h.at
	}
	return h.clock
}

// lockHead locks and reads the head. The clock is read once the lock is
// held: a SELECT ... FOR UPDATE computes its columns before it waits for
// the lock, and again only when the row changed meanwhile, so after
// waiting for a transaction that rolled back it would read the clock from
// before the wait (and the handle's estimate of the database's clock,
// guess.go, would lag by the wait).
const lockHead = `SELECT sequence, created_at, chain_digest, clock_timestamp()
	FROM (SELECT sequence, created_at, chain_digest FROM log_head FOR UPDATE) h`

// scanHead scans lockHead's row into h.
func scanHead(h *logHead) func(pgx.Row) error {
	return func(r pgx.Row) error { return r.Scan(&h.sequence, &h.at, &h.chain, &h.clock) }
}

func (t *tx) validate(events []store.Event) error {
	for i := range events {
		if err := events[i].Validate(t.db.cfg.MaxPayload); err != nil {
			return fmt.Errorf("event %d: %w", i, err)
		}
	}
	return nil
}

// chain returns events as appended at the log's head, the statements that
// write them, and the batch to send them with: the next sequences,
// created_at (the head's clock, truncated to what the database stores) and
// their chain digests. Unless the transaction holds the head already, b's
// statements are sent with the one that locks and reads it (and the batch
// returned is a new one). The transaction's head moves past events.
func (t *tx) chain(ctx context.Context, b *pgx.Batch, rows *eventRows) ([]store.Event, []*pgx.QueuedQuery, *pgx.Batch, error) {
	if t.head == nil {
		locked := &logHead{}
		b.Queue(lockHead).QueryRow(scanHead(locked))
		if err := t.tx.SendBatch(ctx, b).Close(); err != nil {
			return nil, nil, nil, translate(err)
		}
		t.db.guess.read(locked, time.Now())
		t.head, b = locked, &pgx.Batch{}
	}
	base := t.head
	out, head := chainAt(base, rows)
	t.head, t.appended = head, true
	t.db.guess.moved(head)
	return out, rows.insert(t, base, out, underLock), b, nil
}

// chainAt returns rows' events as appended after base (their sequences,
// created_at and chain digests) and the head they leave.
func chainAt(base *logHead, rows *eventRows) ([]store.Event, *logHead) {
	at := store.DBTime(base.createdAt())
	out := make([]store.Event, len(rows.events))
	for i, e := range rows.events {
		e.Sequence = base.sequence + int64(i) + 1
		e.CreatedAt = at
		out[i] = e
	}
	var prev store.Digest
	copy(prev[:], base.chain)
	last := rows.prep().Chain(prev, out)
	return out, &logHead{sequence: out[len(out)-1].Sequence, at: at, chain: last[:], clock: at}
}

// eventRows are the insert's parameters, built before the log_head lock
// is taken: the payloads and payload digests each as one bytea (with the
// payloads' offsets), so that encoding and sending them under the lock is
// a copy, not an array of values; the chain digests, one bytea too, are
// added under the lock.
type eventRows struct {
	events                    []store.Event
	types, kinds, ids, actors []string
	payloads, digests, chains []byte
	offsets, lengths          []int32
	prep                      func() store.ChainPrep
}

// newEventRows builds the parameters of events, whose chain prefixes prep
// returns (store.StartPrepareChain).
func newEventRows(events []store.Event, prep func() store.ChainPrep) *eventRows {
	n, size := len(events), 0
	for i := range events {
		size += len(events[i].Payload)
	}
	r := &eventRows{events: events, types: make([]string, n), kinds: make([]string, n), ids: make([]string, n), actors: make([]string, n),
		payloads: make([]byte, 0, size), digests: make([]byte, 0, n*len(store.Digest{})),
		offsets: make([]int32, n), lengths: make([]int32, n), prep: prep}
	for i := range events {
		e := &events[i]
		r.types[i], r.kinds[i], r.ids[i], r.actors[i] = e.Type, e.SubjectKind, e.SubjectID, e.Actor
		r.offsets[i], r.lengths[i] = int32(len(r.payloads)+1), int32(len(e.Payload))
		r.payloads = append(r.payloads, e.Payload...)
		r.digests = append(r.digests, e.PayloadDigest[:]...)
	}
	return r
}

// insertMode is how insert's statement writes the events.
// insertMode is how insert's statement writes the events.
type insertMode int

const (
	underLock     insertMode = iota // the transaction holds the head it chained to
	guessed                         // write nothing unless the head is the one chained to
	guessedOrFail                   // fail unless the head is the one chained to
)

// insert returns the statements that write out, the events chained after
// base: the insert, which also moves log_head to the last of them, and the
// NOTIFY. A guessed base was not read under the lock (guess.go): the
// insert checks it is log_head, and that out's created_at is between the
// previous event's and the database's clock.
func (r *eventRows) insert(t *tx, base *logHead, out []store.Event, mode insertMode) []*pgx.QueuedQuery {
	n := len(out)
	r.chains = make([]byte, 0, n*len(store.Digest{}))
	for i := range out {
		r.chains = append(r.chains, out[i].ChainDigest[:]...)
	}
	// The head's digest is r.chains' copy, not out's: out is the caller's,
	// and Append's writes may travel with a later round trip.
	args := []any{base.sequence, out[0].CreatedAt, n, r.chains[len(r.chains)-len(store.Digest{}):], r.types, r.kinds, r.ids, r.actors,
		r.payloads, r.digests, r.chains, r.offsets, r.lengths}
	sql := chainedInsert
	switch mode {
	case guessed:
		sql, args = guessedInsert, append(args, base.chain)
	case guessedOrFail:
		sql, args = guessedInsertOrFail, append(args, base.chain)
	}
	// The NOTIFY also reads the database's clock, for the handle's estimate
	// of it (guess.go): guessed appends keep it fresh.
	return []*pgx.QueuedQuery{{SQL: sql, Arguments: args}, {SQL: notifyAndClock, Arguments: []any{t.db.channel}}}
}

const (
	notifyAndClock = `SELECT clock_timestamp() FROM pg_notify($1, '')`
	insertEvents   = `INSERT INTO events (` + eventColumns + `) SELECT `
	insertRow      = `, u.t, u.k, u.i, u.a, substring($9::bytea FROM u.o FOR u.l),
			substring($10::bytea FROM u.ord::integer * 32 - 31 FOR 32), $2::timestamptz,
			substring($11::bytea FROM u.ord::integer * 32 - 31 FOR 32)`
	insertUnnest = ` unnest($5::text[], $6::text[], $7::text[], $8::text[], $12::integer[], $13::integer[])
			WITH ORDINALITY AS u(t, k, i, a, o, l, ord)`
	moveHead = `UPDATE log_head SET sequence = $1::bigint + $3, created_at = $2, chain_digest = $4`
	// chainedInsert writes under the lock its transaction holds.
	chainedInsert = `WITH head AS (` + moveHead + `) ` + insertEvents + `$1::bigint + u.ord` + insertRow + ` FROM` + insertUnnest
	// The guessed inserts' UPDATE finds the head as of the statement's
	// snapshot and, when a concurrent transaction holds it, waits and
	// rechecks it as that transaction left it (READ COMMITTED): their
	// callers make sure the transaction they chained after ended first.
	guessedHead = `WITH head AS (` + moveHead + `
			WHERE sequence = $1 AND chain_digest = $14 AND created_at <= $2 AND $2 <= clock_timestamp()
			RETURNING true AS moved) `
	guessedInsert = guessedHead + insertEvents + `$1::bigint + u.ord` + insertRow + ` FROM head,` + insertUnnest
	// guessedInsertOrFail's rows, when the head is not base, have for
	// sequence a cast that fails (PostgreSQL has no raise outside
	// PL/pgSQL), of a row's value so that it is not evaluated at planning.
	guessedInsertOrFail = guessedHead + insertEvents +
		`CASE WHEN head.moved THEN $1::bigint + u.ord ELSE ('` + guessMissed + ` ' || u.ord)::bigint END` +
		insertRow + ` FROM` + insertUnnest + ` LEFT JOIN head ON true`
)

// appendCommandsChained appends rows' events, records which answered which
// command id and commits, queued after b's statements. The events are
// chained to the head the transaction holds (ClaimAll locked and read it
// with its claims) or else to the head it locks and reads first, and one
// round trip writes them, moves the head and commits. It is the path of a
// batch that did not guess the head, or guessed it wrong
// (commands_guess.go); without the in-flight wait there, guessing made the
// second of two committers' batches run first a fifth to a third of the
// time, and throughput fell to 0.7x.
func (t *tx) appendCommandsChained(ctx context.Context, b *pgx.Batch, rows *eventRows, commandIDs []string) ([]store.Event, error) {
	out, writes, b, err := t.chain(ctx, b, rows)
	if err != nil {
		return nil, err
	}
	b.QueuedQueries = append(b.QueuedQueries, writes...)
	queueCommandSequences(b, out, commandIDs)
	if err := t.tx.commit(ctx, b); err != nil {
		return nil, err
	}
	return out, nil
}

// queueCommandSequences queues the statement that records, for every
// commandIDs[i] other than "", the sequence of out[i].
func queueCommandSequences(b *pgx.Batch, out []store.Event, commandIDs []string) {
	var ids []string
	var seqs []int64
	for i, id := range commandIDs {
		if id != "" {
			ids, seqs = append(ids, id), append(seqs, out[i].Sequence)
		}
	}
	if len(ids) > 0 {
		// Every id was claimed by this transaction: each row is found
		// through the conflict on its primary key, which no plan can turn
		// into a scan, and updated, in one statement.
		b.Queue(`INSERT INTO commands (command_id, sequence)
			SELECT u.id, u.seq FROM unnest($1::text[], $2::bigint[]) AS u(id, seq)
			ON CONFLICT (command_id) DO UPDATE SET sequence = excluded.sequence WHERE commands.sequence IS NULL`, ids, seqs)
	}
}
