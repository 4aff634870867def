package projection

import (
	"bytes"
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/store"
)

// runtimeTables are the runtime's own tables, created in the connection's
// current schema next to the projection's (docs/contract.md, "Downstream
// projections").
var runtimeTables = []string{
	// The log and partition count a projection was first built from.
	`CREATE TABLE IF NOT EXISTS projection_meta (
		projection  text        PRIMARY KEY,
		log_id      text        NOT NULL,
		partitions  integer     NOT NULL CHECK (partitions BETWEEN 1 AND 1024),
		stream      text        NOT NULL,
		recorded_at timestamptz NOT NULL DEFAULT now()
	)`,
	// Each applied migration statement (1-based) and its BLAKE3-256.
	`CREATE TABLE IF NOT EXISTS projection_migrations (
		projection text        NOT NULL,
		version    integer     NOT NULL,
		digest     bytea       NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now(),
		PRIMARY KEY (projection, version)
	)`,
	// Every event of the partition up to sequence is applied; written by a
	// compare-and-set in the transaction that applies the events.
	`CREATE TABLE IF NOT EXISTS projection_checkpoints (
		projection text    NOT NULL,
		partition  integer NOT NULL,
		sequence   bigint  NOT NULL DEFAULT 0,
		PRIMARY KEY (projection, partition)
	)`,
	// A partition stopped on an event; deleted by the transaction that
	// finally applies past it.
	`CREATE TABLE IF NOT EXISTS projection_parked (
		projection text        NOT NULL,
		partition  integer     NOT NULL,
		sequence   bigint      NOT NULL,
		event_type text        NOT NULL,
		reason     text        NOT NULL CHECK (reason IN ('poison', 'gap', 'invalid')),
		error      text        NOT NULL,
		worker     text        NOT NULL,
		attempts   integer     NOT NULL,
		parked_at  timestamptz NOT NULL,
		PRIMARY KEY (projection, partition)
	)`,
	// Live instances (renewed every heartbeat) and partition leases, by the
	// database's clock.
	`CREATE TABLE IF NOT EXISTS projection_members (
		projection text        NOT NULL,
		worker     text        NOT NULL,
		expires_at timestamptz NOT NULL,
		PRIMARY KEY (projection, worker)
	)`,
	`CREATE TABLE IF NOT EXISTS projection_leases (
		projection text        NOT NULL,
		partition  integer     NOT NULL,
		worker     text        NOT NULL,
		expires_at timestamptz NOT NULL,
		PRIMARY KEY (projection, partition)
	)`,
}

// Beginner starts transactions: *pgxpool.Pool, *pgx.Conn and pgx.Tx (a
// savepoint) all do.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Migrate creates the runtime's tables and applies the projection's
// migrations that are not applied yet, in one transaction, in db's
// current schema. Instances that start together take turns (a transaction
// advisory lock keyed by the schema); each statement is applied once. It
// returns the versions (1-based) it applied; ErrMigrationChanged when an
// applied statement differs from p's. Run calls it; call it yourself to
// migrate before deploying.
func Migrate(ctx context.Context, db Beginner, p Projection) ([]int, error) {
	if err := p.validate(); err != nil {
		return nil, err
	}
	var applied []int
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) (err error) {
		applied, err = migrateTx(ctx, tx, p)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("projection: migrating %s: %w", p.Name, err)
	}
	return applied, nil
}

// migrateTx is Migrate inside tx.
func migrateTx(ctx context.Context, tx pgx.Tx, p Projection) ([]int, error) {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('artifactstore.projection:' || current_schema(), 0))`); err != nil {
		return nil, err
	}
	for _, ddl := range runtimeTables {
		if _, err := tx.Exec(ctx, ddl); err != nil {
			return nil, fmt.Errorf("creating the runtime's tables: %w", err)
		}
	}
	rows, err := tx.Query(ctx, `SELECT version, digest FROM projection_migrations WHERE projection = $1 ORDER BY version`, p.Name)
	if err != nil {
		return nil, err
	}
	done := map[int][]byte{}
	var v int
	var d []byte
	if _, err := pgx.ForEachRow(rows, []any{&v, &d}, func() error { done[v] = bytes.Clone(d); return nil }); err != nil {
		return nil, err
	}
	if len(done) > len(p.Migrations) {
		return nil, fmt.Errorf("%w: the database has %d statements of %s applied, the projection lists %d (an older build?)",
			ErrMigrationChanged, len(done), p.Name, len(p.Migrations))
	}
	var applied []int
	for i, stmt := range p.Migrations {
		version, digest := i+1, store.DigestOf([]byte(stmt))
		if had, ok := done[version]; ok {
			if !bytes.Equal(had, digest[:]) {
				return nil, fmt.Errorf("%w: statement %d of %s was changed after it was applied (add a new statement instead)",
					ErrMigrationChanged, version, p.Name)
			}
			continue
		}
		if _, err := tx.Exec(ctx, stmt); err != nil {
			return nil, fmt.Errorf("statement %d: %w", version, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO projection_migrations (projection, version, digest) VALUES ($1, $2, $3)`,
			p.Name, version, digest[:]); err != nil {
			return nil, err
		}
		applied = append(applied, version)
	}
	return applied, nil
}
