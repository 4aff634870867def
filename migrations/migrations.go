// Package migrations holds artifactstore's versioned SQL schema, one
// numbered file per change and per dialect, embedded into the binary and
// applied with goose. On PostgreSQL an advisory lock (keyed by the schema)
// makes concurrent migrators safe: one applies, the others wait and then
// find nothing to do.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"hash/fnv"
	"io/fs"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed postgres/*.sql sqlite/*.sql
var files embed.FS

// Dialects supported by this package.
const (
	Postgres = "postgres"
	SQLite   = "sqlite"
)

// Status is one migration's state.
type Status struct {
	Version int64  `json:"version"`
	Name    string `json:"name"`
	Applied bool   `json:"applied"`
}

// Provider returns a goose provider for dialect over db. lockKey scopes the
// PostgreSQL advisory lock (use the schema name).
func provider(dialect string, db *sql.DB, lockKey string) (*goose.Provider, error) {
	sub, err := fs.Sub(files, dialect)
	if err != nil {
		return nil, err
	}
	var opts []goose.ProviderOption
	var gd goose.Dialect
	switch dialect {
	case Postgres:
		gd = goose.DialectPostgres
		h := fnv.New64a()
		h.Write([]byte("artifactstore-migrate:" + lockKey))
		locker, err := lock.NewPostgresSessionLocker(
			lock.WithLockID(int64(h.Sum64()>>1)),
			lock.WithLockTimeout(1, 600),
		)
		if err != nil {
			return nil, err
		}
		opts = append(opts, goose.WithSessionLocker(locker))
	case SQLite:
		gd = goose.DialectSQLite3
	default:
		return nil, fmt.Errorf("migrations: unknown dialect %q", dialect)
	}
	opts = append(opts, goose.WithDisableGlobalRegistry(true), goose.WithGoMigrations(chainMigration(dialect)))
	return goose.NewProvider(gd, db, sub, opts...)
}

// Up applies every pending migration and returns the versions it applied.
func Up(ctx context.Context, dialect string, db *sql.DB, lockKey string) ([]int64, error) {
	p, err := provider(dialect, db, lockKey)
	if err != nil {
		return nil, err
	}
	res, err := p.Up(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrations: up: %w", err)
	}
	out := make([]int64, 0, len(res))
	for _, r := range res {
		out = append(out, r.Source.Version)
	}
	return out, nil
}

// UpTo applies the pending migrations up to and including version (tests
// use it to build a log as an older binary left it).
func UpTo(ctx context.Context, dialect string, db *sql.DB, lockKey string, version int64) error {
	p, err := provider(dialect, db, lockKey)
	if err != nil {
		return err
	}
	if _, err := p.UpTo(ctx, version); err != nil {
		return fmt.Errorf("migrations: up to %d: %w", version, err)
	}
	return nil
}

// Down rolls back every applied migration (used by migrate fresh).
func Down(ctx context.Context, dialect string, db *sql.DB, lockKey string) error {
	p, err := provider(dialect, db, lockKey)
	if err != nil {
		return err
	}
	if _, err := p.DownTo(ctx, 0); err != nil {
		return fmt.Errorf("migrations: down: %w", err)
	}
	return nil
}

// List returns every known migration and whether it is applied.
func List(ctx context.Context, dialect string, db *sql.DB, lockKey string) ([]Status, error) {
	p, err := provider(dialect, db, lockKey)
	if err != nil {
		return nil, err
	}
	st, err := p.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrations: status: %w", err)
	}
	out := make([]Status, 0, len(st))
	for _, s := range st {
		out = append(out, Status{Version: s.Source.Version, Name: s.Source.Path, Applied: s.State == goose.StateApplied})
	}
	return out, nil
}
