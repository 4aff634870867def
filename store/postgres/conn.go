package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/artifactstore/artifactstore/store"
)

// txConn is a pooled connection running one transaction that begins with
// its first statement and may end with its last batch. BEGIN travels in
// the first batch instead of taking a round trip of its own, and commit
// sends COMMIT in the same pipeline as the transaction's last statements:
// a group-committing writer holds the log_head lock for one round trip
// instead of three (see ingest's AppendCommands).
type txConn struct {
	c         *pgxpool.Conn
	begun     bool
	committed bool
}

var errCommitted = errors.New("postgres: the transaction has been committed")

func (c *txConn) begin(ctx context.Context) error {
	if c.committed {
		return errCommitted
	}
	if c.begun {
		return nil
	}
	c.begun = true
	_, err := c.c.Exec(ctx, "begin")
	return err
}

// Exec is pgx.Tx's Exec.
func (c *txConn) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := c.begin(ctx); err != nil {
		return pgconn.CommandTag{}, err
	}
	return c.c.Exec(ctx, sql, args...)
}

// Query is pgx.Tx's Query.
func (c *txConn) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := c.begin(ctx); err != nil {
		return nil, err
	}
	return c.c.Query(ctx, sql, args...)
}

// QueryRow is pgx.Tx's QueryRow.
func (c *txConn) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := c.begin(ctx); err != nil {
		return errRow{err}
	}
	return c.c.QueryRow(ctx, sql, args...)
}

// CopyFrom is pgx.Tx's CopyFrom.
func (c *txConn) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if err := c.begin(ctx); err != nil {
		return 0, err
	}
	return c.c.CopyFrom(ctx, table, columns, src)
}

// SendBatch is pgx.Tx's SendBatch; the transaction's BEGIN goes first in
// the pipeline when the batch is its first statement.
func (c *txConn) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if c.committed {
		return errBatch{errCommitted}
	}
	skip := false
	if !c.begun {
		c.begun, skip = true, true
		b.QueuedQueries = append([]*pgx.QueuedQuery{{SQL: "begin"}}, b.QueuedQueries...)
	}
	return &batchResults{BatchResults: c.c.SendBatch(ctx, b), skip: skip}
}

// commit queues COMMIT at the end of b and sends the batch: the
// transaction ends in the same round trip as its last statements. An error
// the server reported (a failed statement, which skips the rest of the
// pipeline, or a failed COMMIT) means the transaction did not commit; any
// other error, such as a lost connection or a backend terminated, is
// wrapped in store.ErrOutcomeUnknown.
func (c *txConn) commit(ctx context.Context, b *pgx.Batch) error {
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
		errors.As(err, &pgErr) && pgErr.Severity != "FATAL" && pgErr.Severity != "PANIC" {
		return translate(err)
	}
	return fmt.Errorf("%w: %w", store.ErrOutcomeUnknown, translate(err))
}

// end rolls back what commit did not commit and returns the connection to
// the pool (which closes it when it is not idle).
func (c *txConn) end(ctx context.Context) {
	if pc := c.c.Conn().PgConn(); c.begun && !c.committed && !pc.IsClosed() && pc.TxStatus() != 'I' {
		_, _ = c.c.Exec(ctx, "rollback")
	}
	c.c.Release()
}

// batchResults hides the result of the BEGIN that SendBatch put first.
type batchResults struct {
	pgx.BatchResults
	skip bool
}

func (b *batchResults) skipBegin() error {
	if !b.skip {
		return nil
	}
	b.skip = false
	_, err := b.BatchResults.Exec()
	return err
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

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

type errBatch struct{ err error }

func (b errBatch) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, b.err }
func (b errBatch) Query() (pgx.Rows, error)         { return nil, b.err }
func (b errBatch) QueryRow() pgx.Row                { return errRow(b) }
func (b errBatch) Close() error                     { return b.err }
func (b errBatch) Tx() pgx.Tx                       { return nil }
