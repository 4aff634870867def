package migrations

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/artifactstore/artifactstore/store"
)

// chainVersion is the migration that gives every event its chain digest
// (DESIGN.md, "The event"). It is Go, not SQL, because neither database
// computes BLAKE3: it adds the columns, computes the chain of the events
// already in the log in order, and records the head's digest in log_head,
// all in one transaction that holds log_head (so no append interleaves).
const chainVersion = 8

// chainMigration returns the dialect's chain migration.
func chainMigration(dialect string) *goose.Migration {
	d := chainSQL[dialect]
	m := goose.NewGoMigration(chainVersion,
		&goose.GoFunc{RunTx: func(ctx context.Context, tx *sql.Tx) error { return chainUp(ctx, tx, d) }},
		&goose.GoFunc{RunTx: func(ctx context.Context, tx *sql.Tx) error { return execAll(ctx, tx, d.down) }})
	m.Source = fmt.Sprintf("%05d_chain_digest.go", chainVersion)
	return m
}

// chainStatements are one dialect's statements of the chain migration.
type chainStatements struct {
	// before adds the columns and lets the migration update events.
	before []string
	// keys reads the chained fields of up to 10000 events after $1.
	keys string
	// update writes the chain digests of a page of events.
	update func(ctx context.Context, tx *sql.Tx, page []store.Event) error
	// after restores the append-only protection and requires the column.
	after []string
	// head records the last event's chain digest in log_head.
	head string
	down []string
}

const (
	zeroDigestPG     = `'\x0000000000000000000000000000000000000000000000000000000000000000'::bytea`
	zeroDigestSQLite = `x'0000000000000000000000000000000000000000000000000000000000000000'`
	selectKeys       = `SELECT sequence, event_type, subject_kind, subject_id, actor, payload_digest, created_at
		FROM events WHERE sequence > %s ORDER BY sequence LIMIT 10000`
)

var chainSQL = map[string]chainStatements{
	Postgres: {
		// log_head first: appends take it before events, so they wait
		// here rather than deadlock.
		before: []string{
			`ALTER TABLE log_head ADD COLUMN chain_digest bytea NOT NULL DEFAULT ` + zeroDigestPG +
				` CHECK (length(chain_digest) = 32)`,
			`ALTER TABLE events ADD COLUMN chain_digest bytea`,
			`ALTER TABLE events DISABLE TRIGGER events_no_update_delete`,
		},
		keys: fmt.Sprintf(selectKeys, "$1"),
		update: func(ctx context.Context, tx *sql.Tx, page []store.Event) error {
			seqs, chains := make([]int64, len(page)), make([][]byte, len(page))
			for i := range page {
				seqs[i], chains[i] = page[i].Sequence, page[i].ChainDigest[:]
			}
			_, err := tx.ExecContext(ctx, `UPDATE events e SET chain_digest = u.c
				FROM unnest($1::bigint[], $2::bytea[]) AS u(s, c) WHERE e.sequence = u.s`, seqs, chains)
			return err
		},
		after: []string{
			`ALTER TABLE events ENABLE TRIGGER events_no_update_delete`,
			`ALTER TABLE events ALTER COLUMN chain_digest SET NOT NULL,
				ADD CONSTRAINT events_chain_digest_check CHECK (length(chain_digest) = 32)`,
		},
		head: `UPDATE log_head SET chain_digest = $1`,
		down: []string{
			`ALTER TABLE events DROP COLUMN chain_digest`,
			`ALTER TABLE log_head DROP COLUMN chain_digest`,
		},
	},
	SQLite: {
		before: []string{
			`ALTER TABLE log_head ADD COLUMN chain_digest BLOB NOT NULL DEFAULT ` + zeroDigestSQLite,
			`ALTER TABLE events ADD COLUMN chain_digest BLOB`,
			`DROP TRIGGER events_no_update`,
		},
		keys: fmt.Sprintf(selectKeys, "?"),
		update: func(ctx context.Context, tx *sql.Tx, page []store.Event) error {
			stmt, err := tx.PrepareContext(ctx, `UPDATE events SET chain_digest = ? WHERE sequence = ?`)
			if err != nil {
				return err
			}
			defer stmt.Close()
			for _, e := range page {
				if _, err := stmt.ExecContext(ctx, e.ChainDigest[:], e.Sequence); err != nil {
					return err
				}
			}
			return nil
		},
		after: []string{
			`CREATE TRIGGER events_no_update BEFORE UPDATE ON events
			BEGIN SELECT RAISE(ABORT, 'artifactstore: events is append-only (UPDATE refused)'); END`,
			// SQLite cannot add NOT NULL to an existing column.
			`CREATE TRIGGER events_chain_digest_required BEFORE INSERT ON events
			WHEN NEW.chain_digest IS NULL OR length(NEW.chain_digest) <> 32
			BEGIN SELECT RAISE(ABORT, 'artifactstore: events.chain_digest must be 32 bytes (a writer older than migration 00008?)'); END`,
		},
		head: `UPDATE log_head SET chain_digest = ?`,
		down: []string{
			`DROP TRIGGER events_chain_digest_required`,
			`ALTER TABLE events DROP COLUMN chain_digest`,
			`ALTER TABLE log_head DROP COLUMN chain_digest`,
		},
	},
}

// chainUp adds the chain columns and chains the events already logged.
func chainUp(ctx context.Context, tx *sql.Tx, d chainStatements) error {
	if err := execAll(ctx, tx, d.before); err != nil {
		return err
	}
	head, err := chainExisting(ctx, tx, d)
	if err != nil {
		return err
	}
	if err := execAll(ctx, tx, d.after); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, d.head, head[:]); err != nil {
		return fmt.Errorf("recording the chain head: %w", err)
	}
	return nil
}

// chainExisting computes and writes the chain digest of every event, page
// by page in sequence order, and returns the last one (zero for an empty
// log). Only payload_digest is read, not the payloads.
func chainExisting(ctx context.Context, tx *sql.Tx, d chainStatements) (store.Digest, error) {
	var prev store.Digest
	var after int64
	for {
		page, err := readKeys(ctx, tx, d.keys, after)
		if err != nil || len(page) == 0 {
			return prev, err
		}
		prev = store.Chain(prev, page)
		if err := d.update(ctx, tx, page); err != nil {
			return prev, fmt.Errorf("chaining events %d..%d: %w", page[0].Sequence, page[len(page)-1].Sequence, err)
		}
		after = page[len(page)-1].Sequence
	}
}

// readKeys reads the chained fields of a page of events after after.
func readKeys(ctx context.Context, tx *sql.Tx, query string, after int64) ([]store.Event, error) {
	rows, err := tx.QueryContext(ctx, query, after)
	if err != nil {
		return nil, fmt.Errorf("reading events after %d: %w", after, err)
	}
	defer rows.Close()
	var out []store.Event
	for rows.Next() {
		var e store.Event
		var digest []byte
		var at any
		if err := rows.Scan(&e.Sequence, &e.Type, &e.SubjectKind, &e.SubjectID, &e.Actor, &digest, &at); err != nil {
			return nil, err
		}
		copy(e.PayloadDigest[:], digest)
		switch v := at.(type) {
		case time.Time: // PostgreSQL's timestamptz
			e.CreatedAt = v.UTC()
		case int64: // SQLite's Unix microseconds
			e.CreatedAt = time.UnixMicro(v).UTC()
		default:
			return nil, fmt.Errorf("event %d: created_at of type %T", e.Sequence, at)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

func execAll(ctx context.Context, tx *sql.Tx, stmts []string) error {
	for _, q := range stmts {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}
