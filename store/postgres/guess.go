package postgres

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/artifactstore/artifactstore/store"
)

// A transaction's first Append would lock and read log_head and only then
// send its rows, holding the lock across a client turnaround. Instead it
// chains its events to the head this handle expects (the one it last
// appended or read) and sends them at once, in an insert that writes
// nothing unless the head, as the last holder of the lock left it, is the
// expected one (guessedInsert); when the transaction that left that head
// may still hold it, the same round trip first locks and reads the head,
// waiting for it. On a miss the transaction chains to the head it read (or
// then reads), as it would have without the guess. The database thus
// checks every sequence and chain link. A handle's first appends take turns, each sent once the
// one before it was answered (its transaction then holds the head until it
// ends), so that in one process they expect the right head; a transaction
// that has sent statements (and may hold locks) takes only a free turn.

// guesser is a handle's knowledge of the log's head.
type guesser struct {
	turn chan struct{}

	mu   sync.Mutex
	head *logHead // the latest head this handle appended or read; nil: none
	// open: the transaction that left head may not have ended.
	open bool
	// clock is the database's clock as of the latest read, which this
	// host received at readAt (its monotonic reading): clock plus the time
	// since readAt is at most the database's clock now, as the answer
	// travelled, whatever this host's wall clock does.
	clock, readAt time.Time
	// misses in a row; after them, the next 2^(misses-1)-1 first appends
	// lock and read the head without guessing (processes appending in
	// turn would otherwise send every batch twice).
	misses, skip int
	// hits and missed count the guesses (for the tests and benchmarks).
	hits, missed int64
	// inFlight is the ticket of the transaction that last guessed in
	// AppendCommands, 0 once it ended.
	inFlight int64
}

func newGuesser() *guesser { return &guesser{turn: make(chan struct{}, 1)} }

var _ store.HeadGuesser = (*DB)(nil)

// HeadGuesses implements store.HeadGuesser.
func (db *DB) HeadGuesses() (right, wrong int64) {
	db.guess.mu.Lock()
	defer db.guess.mu.Unlock()
	return db.guess.hits, db.guess.missed
}

// take waits for the handle's turn to begin an append; release ends it.
// Unless wait, it only takes a free turn (nil release when there is none):
// a transaction that may hold locks must not wait in the process for a
// turn whose holder may wait in the database for one of them, a deadlock
// the database would not detect.
func (g *guesser) take(ctx context.Context, wait bool) (release func(), err error) {
	if !wait {
		select {
		case g.turn <- struct{}{}:
			return func() { <-g.turn }, nil
		default:
			return nil, nil
		}
	}
	select {
	case g.turn <- struct{}{}:
		return func() { <-g.turn }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// guess returns the head to chain to, with the database's clock as this
// host estimates it, and whether the transaction that left it may still
// hold it; or nil to lock and read it.
func (g *guesser) guess() (h *logHead, open bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.head == nil {
		return nil, false
	}
	if g.skip > 0 {
		g.skip--
		return nil, false
	}
	c := *g.head
	c.clock = g.now()
	return &c, g.open
}

// read records h, read under the lock and answered at local.
func (g *guesser) read(h *logHead, local time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.head, g.open = h, true
	g.clock, g.readAt = h.clock, local
}

// now estimates the database's clock; the caller holds g.mu.
func (g *guesser) now() time.Time { return g.clock.Add(time.Since(g.readAt)) }

// clockRead records the database's clock, received at local.
func (g *guesser) clockRead(clock, local time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.clock, g.readAt = clock, local
}

// ended records that the transaction that left h committed.
func (g *guesser) ended(h *logHead) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.head == h {
		g.open = false
	}
}

// forget drops h, the head of a transaction that did not commit, unless a
// later one replaced it.
func (g *guesser) forget(h *logHead) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.head == h {
		g.head = nil
	}
}

// moved records that an append moved the head to h.
func (g *guesser) moved(h *logHead) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.head, g.open = h, true
}

// hit and miss record a guess's outcome.
func (g *guesser) hit() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.misses = 0
	g.hits++
}

func (g *guesser) miss() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.missed++
	g.misses = min(g.misses+1, 7)
	g.skip = 1<<(g.misses-1) - 1
}

// appendGuessed appends rows' events on the guessed head, written only if
// it is the head. Unless the transaction that left the guessed head ended,
// the round trip first locks and reads the head, waiting for it. It
// returns the events, or none when there was no guess or it was wrong: the
// transaction then holds the head if it read it, and the caller chains to
// the head (reading it if need be). It runs in the handle's turn.
func (t *tx) appendGuessed(ctx context.Context, rows *eventRows) ([]store.Event, error) {
	g := t.db.guess
	base, open := g.guess()
	if base == nil {
		return nil, nil
	}
	out, head := chainAt(base, rows)
	var locked *logHead
	b := &pgx.Batch{}
	if open {
		locked = &logHead{}
		b.Queue(lockHead).QueryRow(scanHead(locked))
	}
	writes := rows.insert(t, base, out, guessed)
	var tag pgconn.CommandTag
	var clock time.Time
	writes[0].Exec(func(ct pgconn.CommandTag) error { tag = ct; return nil })
	writes[1].QueryRow(func(r pgx.Row) error { return r.Scan(&clock) })
	b.QueuedQueries = append(b.QueuedQueries, writes...)
	if err := t.tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, translate(err)
	}
	if locked != nil {
		g.read(locked, time.Now())
	}
	switch n := tag.RowsAffected(); {
	case n == 0:
		t.head = locked
		g.miss()
		return nil, nil
	case n != int64(len(out)):
		return nil, fmt.Errorf("postgres: a guessed append wrote %d of %d events", n, len(out))
	}
	t.head, t.appended = head, true
	g.moved(head)
	g.clockRead(clock, time.Now())
	g.hit()
	return out, nil
}
