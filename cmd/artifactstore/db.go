package main

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/migrations"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/postgres"
	"github.com/artifactstore/artifactstore/store/sqlite"
)

// migratingDB is a store that can also manage its schema.
type migratingDB interface {
	store.DB
	Migrate(ctx context.Context) ([]int64, error)
	MigrationStatus(ctx context.Context) ([]migrations.Status, error)
	Fresh(ctx context.Context) error
}

func isPostgresURL(u string) bool {
	return strings.HasPrefix(u, "postgres://") || strings.HasPrefix(u, "postgresql://")
}

// openDB opens the store the URL names: a postgres:// URL, or a SQLite file
// (optionally prefixed sqlite:// or file:).
func openDB(ctx context.Context, dbURL string, log *zap.Logger) (migratingDB, error) {
	if isPostgresURL(dbURL) {
		db, err := postgres.Open(ctx, postgres.Config{URL: dbURL, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("opening %s: %w", redactURL(dbURL), err)
		}
		return db, nil
	}
	path := strings.TrimPrefix(strings.TrimPrefix(dbURL, "sqlite://"), "file:")
	if path == "" {
		return nil, fmt.Errorf("--database-url is empty")
	}
	db, err := sqlite.Open(ctx, sqlite.Config{Path: path, Logger: log})
	if err != nil {
		return nil, err
	}
	return db, nil
}

// redactURL hides a URL's password (and any password= parameter).
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		return raw
	}
	q := u.Query()
	if q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}
