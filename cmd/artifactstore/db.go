package main

import (
	"context"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

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

// projectorAppName is the projector's application_name.
const projectorAppName = "artifactstore-projector"

func isPostgresURL(u string) bool {
	return strings.HasPrefix(u, "postgres://") || strings.HasPrefix(u, "postgresql://")
}

// openDB opens the store the URL names: a postgres:// URL, or a SQLite file
// (optionally prefixed sqlite:// or file:). On PostgreSQL the connections
// report name as application_name (pg_stat_activity, server
// logs) unless the URL names one.
func openDB(ctx context.Context, dbURL, name string, log *zap.Logger) (migratingDB, error) {
	if isPostgresURL(dbURL) {
		// A search_path in the URL names the schema: the store then also keys
		// its advisory locks and NOTIFY channel by it, so deployments in
		// different schemas of one database never share a relay lock.
		cfg := postgres.Config{URL: dbURL, Schema: schemaOf(dbURL), ApplicationName: name, Logger: log}
		if name == projectorAppName {
			// A projector cut off mid-batch must not hold its partition's
			// checkpoint row locked past the lease's expiry.
			cfg.IdleInTransactionTimeout = 2 * time.Second
		}
		db, err := postgres.Open(ctx, cfg)
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

// userinfoPassword matches the password of a URL's user info, for URLs
// that net/url cannot parse.
var userinfoPassword = regexp.MustCompile(`(://[^:/@]*:)[^@]*@`)

// passwordParam matches a password= query parameter.
var passwordParam = regexp.MustCompile(`(?i)(password=)[^&]*`)

// schemaOf returns the single schema a postgres URL's search_path names, or
// "" (the server's default search_path). Like PostgreSQL it folds an
// unquoted name to lower case (the store quotes the name it is given).
func schemaOf(dbURL string) string {
	u, err := url.Parse(dbURL)
	if err != nil {
		return ""
	}
	sp := strings.TrimSpace(u.Query().Get("search_path"))
	if sp == "" || strings.ContainsAny(sp, ", ") {
		return ""
	}
	if len(sp) > 1 && strings.HasPrefix(sp, `"`) && strings.HasSuffix(sp, `"`) {
		return sp[1 : len(sp)-1]
	}
	return strings.ToLower(sp)
}

// redactURL hides a URL's password (and any password= parameter), also in
// URLs that do not parse, and in every URL of a comma-separated list (NATS
// server lists).
func redactURL(raw string) string {
	urls := splitURLs(raw)
	for i, u := range urls {
		trimmed := strings.TrimLeft(u, " \t")
		urls[i] = u[:len(u)-len(trimmed)] + redactOneURL(trimmed)
	}
	return strings.Join(urls, ",")
}

// urlStart matches the scheme that begins a URL.
var urlStart = regexp.MustCompile(`^\s*[A-Za-z][A-Za-z0-9+.-]*://`)

// splitURLs splits a comma-separated list of URLs. A comma not followed by
// a scheme stays in its URL: it belongs to a password or to a multi-host
// PostgreSQL URL.
func splitURLs(raw string) []string {
	var urls []string
	for _, part := range strings.Split(raw, ",") {
		if len(urls) == 0 || urlStart.MatchString(part) {
			urls = append(urls, part)
		} else {
			urls[len(urls)-1] += "," + part
		}
	}
	return urls
}

func redactOneURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		return passwordParam.ReplaceAllString(userinfoPassword.ReplaceAllString(raw, "${1}xxxxx@"), "${1}xxxxx")
	}
	q := u.Query()
	if q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}
