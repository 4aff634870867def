package postgres

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/artifactstore/artifactstore/store"
)

// A group-committing writer's transaction (ClaimAll, AppendCommands) does
// not lock log_head in ClaimAll's round trip, which would hold the lock
// across the client turnaround to AppendCommands. AppendCommands chains
// its events to the head this handle expects after the batches it has in
// flight, and sends them in one round trip: in a savepoint, the insert
// that fails unless the head, once locked, is the expected one
// (guessedInsertOrFail), the command sequences and COMMIT. On a miss the
// insert's error skips the rest; the transaction rolls back to the
// savepoint and appends on the head it then locks and reads (three more
// round trips).
//
// So that a transaction chained to another one's expected head runs after
// it, ClaimAll marks each transaction in flight with an advisory lock on a
// random ticket, and AppendCommands first waits for the mark of the one it
// chained to: taken in that one's first round trip, it is held before that
// transaction could be chained after, until it ends. Having waited, the
// insert reads the head that transaction left without locking it first.

// claimHead is what ClaimAll does with the log's head.
type claimHead int

const (
	headUntouched claimHead = iota // nothing (the benchmarks' baseline)
	headLocked                     // lock and read it
	headGuessed                    // mark the transaction in flight
)

const (
	inFlight = `SELECT pg_advisory_xact_lock($1)`
	// Tickets are not reused: holding the shared lock to the end of the
	// transaction keeps no one waiting.
	waitInFlight = `SELECT pg_advisory_xact_lock_shared($1)`
	// guessMissed is in the error of a guessedInsertOrFail that found
	// another head.
	guessMissed = "artifactstore: log_head is not the guessed head"
)

// claimHead returns what ClaimAll does with the log's head: it leaves it
// to AppendCommands' guess, unless there is nothing to guess from or
// guesses missed lately.
func (g *guesser) claimHead() claimHead {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.head == nil {
		return headLocked
	}
	if g.skip > 0 {
		g.skip--
		return headLocked
	}
	return headGuessed
}

// speculate chains rows' events to the head expected after the appends in
// flight, and records them as the latest in flight, marked with ticket.
// It returns the base chained to, the events, the head they leave, and the
// ticket of the transaction in flight before them (0: none), or a nil
// base when there is no head to expect.
func (g *guesser) speculate(rows *eventRows, ticket int64) (base *logHead, out []store.Event, head *logHead, before int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.head == nil {
		return nil, nil, nil, 0
	}
	b := *g.head
	b.clock = g.now()
	out, head = chainAt(&b, rows)
	before = g.inFlight
	g.head, g.open, g.inFlight = head, true, ticket
	return &b, out, head, before
}

// landed records that the transaction marked with ticket ended.
func (g *guesser) landed(ticket int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.inFlight == ticket {
		g.inFlight = 0
	}
}

// appendCommandsGuessed is appendCommandsChained for a transaction ClaimAll
// marked in flight: b's statements, then the events on the expected head,
// the command sequences and COMMIT in one round trip, or after a miss on
// the head read.
func (t *tx) appendCommandsGuessed(ctx context.Context, b *pgx.Batch, events []store.Event, commandIDs []string, prep func() store.ChainPrep) ([]store.Event, error) {
	g := t.db.guess
	rows := newEventRows(events, prep)
	base, out, head, before := g.speculate(rows, t.ticket)
	if base == nil {
		return t.appendCommandsChained(ctx, b, rows, commandIDs)
	}
	defer g.landed(t.ticket)
	if before != 0 {
		b.Queue(waitInFlight, before)
	}
	b.Queue("SAVEPOINT guessed_head")
	writes := rows.insert(t, base, out, guessedOrFail)
	missed := failsOnMiss(writes[0])
	var clock time.Time
	writes[1].QueryRow(func(r pgx.Row) error { return r.Scan(&clock) })
	b.QueuedQueries = append(b.QueuedQueries, writes...)
	queueCommandSequences(b, out, commandIDs)
	err := t.tx.commit(ctx, b)
	switch {
	case err == nil:
		t.head, t.appended = head, true
		g.clockRead(clock, time.Now())
		g.hit()
		return out, nil
	case !*missed:
		g.forget(head)
		return nil, err
	}
	g.miss()
	g.forget(head)
	// On its own: pgx prepares a batch's new statements before it runs
	// any, which the aborted transaction would refuse.
	if _, err := t.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT guessed_head"); err != nil {
		return nil, translate(err)
	}
	return t.appendCommandsChained(ctx, &pgx.Batch{}, rows, commandIDs)
}

// failsOnMiss makes q, a guessedInsertOrFail, report whether it failed
// because the head was not the one guessed.
func failsOnMiss(q *pgx.QueuedQuery) *bool {
	missed := new(bool)
	q.Fn = func(br pgx.BatchResults) error {
		_, err := br.Exec()
		var pgErr *pgconn.PgError
		*missed = errors.As(err, &pgErr) && pgErr.Code == "22P02" && strings.Contains(pgErr.Message, guessMissed)
		return err
	}
	return missed
}
