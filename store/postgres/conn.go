package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/artifactstore/artifactstore/store"
)

// txConn is a pooled connection running one transaction that begins with
// its first statement and may end with its last batch. BEGIN travels with
// the transaction's first statement instead of taking a round trip of its
// own; statements queued with later (writes whose only result is success
// or failure) travel with the next statement that needs an answer, at the
// latest with COMMIT; and commit sends COMMIT in the same pipeline as the
// transaction's last statements. A group-committing writer's batch thus
// takes two round trips (see AppendCommands), and so does a projector
// batch.
type txConn struct {
	c         *pgxpool.Conn
	begun     bool
	committed bool
	// pending are the statements queued by later, not yet sent.
	pending []*pgx.QueuedQuery
}

var errCommitted = errors.New("postgres: the transaction has been committed")

// later queues a statement to go to the server ahead of the next one. Its
// error, if any, is the error of that next statement (or of the commit);
// the transaction is then aborted as usual.
func (c *txConn) later(sql string, args ...any) error {
	if c.committed {
		return errCommitted
	}
	c.pending = append(c.pending, &pgx.QueuedQuery{SQL: sql, Arguments: args})
	return nil
}

// prefix returns what must precede the next statement (BEGIN, when not yet
// sent, and the pending statements), marking them sent.
func (c *txConn) prefix() []*pgx.QueuedQuery {
	var pre []*pgx.QueuedQuery
	if !c.begun {
		c.begun = true
		pre = append(pre, &pgx.QueuedQuery{SQL: "begin"})
	}
	pre = append(pre, c.pending...)
	c.pending = nil
	return pre
}

// owes reports whether BEGIN or pending statements wait to be sent.
func (c *txConn) owes() bool { return !c.begun || len(c.pending) > 0 }

// settle sends what the next statement must not overtake, for statements
// that cannot share a pipeline (Query, CopyFrom).
func (c *txConn) settle(ctx context.Context) error {
	if c.committed {
		return errCommitted
	}
	if !c.owes() {
		return nil
	}
	return c.SendBatch(ctx, &pgx.Batch{}).Close()
}

// Exec is pgx.Tx's Exec.
func (c *txConn) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if c.committed {
		return pgconn.CommandTag{}, errCommitted
	}
	if len(args) == 0 {
		// May hold several statements, which only the simple protocol
		// takes: it cannot share a pipeline.
		if err := c.settle(ctx); err != nil {
			return pgconn.CommandTag{}, err
		}
	}
	if !c.owes() {
		return c.c.Exec(ctx, sql, args...)
	}
	b := &pgx.Batch{}
	b.Queue(sql, args...)
	br := c.SendBatch(ctx, b)
	ct, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return ct, err
}

// Query is pgx.Tx's Query.
func (c *txConn) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := c.settle(ctx); err != nil {
		return nil, err
	}
	return c.c.Query(ctx, sql, args...)
}

// QueryRow is pgx.Tx's QueryRow.
func (c *txConn) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if c.committed {
		return errRow{errCommitted}
	}
	if !c.owes() {
		return c.c.QueryRow(ctx, sql, args...)
	}
	b := &pgx.Batch{}
	b.Queue(sql, args...)
	br := c.SendBatch(ctx, b)
	return batchRow{row: br.QueryRow(), br: br}
}

// CopyFrom is pgx.Tx's CopyFrom.
func (c *txConn) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if err := c.settle(ctx); err != nil {
		return 0, err
	}
	return c.c.CopyFrom(ctx, table, columns, src)
}

// SendBatch is pgx.Tx's SendBatch; the transaction's BEGIN (when the batch
// is its first statement) and the pending statements go first in the
// pipeline, their results hidden from the caller but their errors not.
func (c *txConn) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if c.committed {
		return errBatch{errCommitted}
	}
	pre := c.prefix()
	if len(pre) > 0 {
		b.QueuedQueries = append(pre, b.QueuedQueries...)
	}
	return &batchResults{BatchResults: c.c.SendBatch(ctx, b), skip: len(pre)}
}

// commit queues COMMIT at the end of b and sends the batch: the
// transaction ends in the same round trip as its last statements. An error
// the server reported (a failed statement, which skips the rest of the
// pipeline, or a failed COMMIT) means the transaction did not commit; any
// other error, such as a lost connection or a backend terminated, is
// wrapped in store.ErrOutcomeUnknown — unless PostgreSQL itself ended the
// session (FATAL, endedByServer) before the last of b's statements
// answered: it never ran COMMIT.
func (c *txConn) commit(ctx context.Context, b *pgx.Batch) error {
	beforeCommit := answered(b)
	b.Queue("commit").Exec(func(ct pgconn.CommandTag) error {
		if ct.String() == "ROLLBACK" {
			return pgx.ErrTxCommitRollback
		}
		return nil
	})
	err := c.SendBatch(ctx, b).Close()
	if err == nil {
		c.committed = true
		return nil
	}
	var pgErr *pgconn.PgError
	if errors.Is(err, pgx.ErrTxCommitRollback) ||
		errors.As(err, &pgErr) && (!sessionEnded(pgErr) || !*beforeCommit && endedByServer(pgErr)) {
		return translate(err)
	}
	return fmt.Errorf("%w: %w", store.ErrOutcomeUnknown, translate(err))
}

// sessionEnded reports whether the server ended the session with err
// (FATAL or PANIC). The severity is read unlocalized: the 'S' field is
// translated under lc_messages ("FATALE", "ВАЖНО", ...); servers before
// 9.6, which send only that one, are read as before.
func sessionEnded(err *pgconn.PgError) bool {
	sev := err.SeverityUnlocalized
	if sev == "" {
		sev = err.Severity
	}
	return sev == "FATAL" || sev == "PANIC"
}

// endedByServer reports whether err is PostgreSQL ending the session on
// its own terms (terminated, shut down, idle in a transaction too long),
// which it only does before it runs the next message of the pipeline. A
// FATAL with another code may come from a pooler or proxy in between,
// which can report one for statements the server did run, COMMIT included.
func endedByServer(err *pgconn.PgError) bool {
	return strings.HasPrefix(err.Code, "57P") || err.Code == "25P03"
}

// answered returns a flag set once the last of b's statements has
// answered without error (at once when b has none).
func answered(b *pgx.Batch) *bool {
	done := new(bool)
	n := len(b.QueuedQueries)
	if n == 0 {
		*done = true
		return done
	}
	last := b.QueuedQueries[n-1]
	fn := last.Fn
	last.Fn = func(br pgx.BatchResults) error {
		var err error
		if fn != nil {
			err = fn(br)
		} else {
			_, err = br.Exec()
		}
		*done = err == nil
		return err
	}
	return done
}

// end rolls back what commit did not commit (pending statements are
// dropped) and returns the connection to the pool (which closes it when it
// is not idle).
func (c *txConn) end(ctx context.Context) {
	if pc := c.c.Conn().PgConn(); c.begun && !c.committed && !pc.IsClosed() && pc.TxStatus() != 'I' {
		_, _ = c.c.Exec(ctx, "rollback")
	}
	c.c.Release()
}

// batchResults hides the results of the statements SendBatch put first
// (BEGIN, pending statements); the first of their errors is the error of
// the caller's first result.
type batchResults struct {
	pgx.BatchResults
	skip int
}

func (b *batchResults) skipBegin() error {
	for b.skip > 0 {
		b.skip--
		if _, err := b.BatchResults.Exec(); err != nil {
			b.skip = 0
			return err
		}
	}
	return nil
}

func (b *batchResults) Exec() (pgconn.CommandTag, error) {
	if err := b.skipBegin(); err != nil {
		return pgconn.CommandTag{}, err
	}
	return b.BatchResults.Exec()
}

func (b *batchResults) Query() (pgx.Rows, error) {
	if err := b.skipBegin(); err != nil {
		return nil, err
	}
	return b.BatchResults.Query()
}

func (b *batchResults) QueryRow() pgx.Row {
	if err := b.skipBegin(); err != nil {
		return errRow{err}
	}
	return b.BatchResults.QueryRow()
}

// batchRow is a row read from a one-statement batch, closed once scanned.
type batchRow struct {
	row pgx.Row
	br  pgx.BatchResults
}

func (r batchRow) Scan(dest ...any) error {
	err := r.row.Scan(dest...)
	if cerr := r.br.Close(); err == nil {
		err = cerr
	}
	return err
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

type errBatch struct{ err error }

func (b errBatch) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, b.err }
func (b errBatch) Query() (pgx.Rows, error)         { return nil, b.err }
func (b errBatch) QueryRow() pgx.Row                { return errRow(b) }
func (b errBatch) Close() error                     { return b.err }
func (b errBatch) Tx() pgx.Tx                       { return nil }
