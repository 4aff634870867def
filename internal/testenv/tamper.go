package testenv

import (
	"context"
	"database/sql"
	"encoding/hex"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/artifactstore/artifactstore/store"
)

// where records how to reach the database of each store this package
// opened, for Privileged.
var where sync.Map // store.DB → pgPlace or string (SQLite path)

type pgPlace struct{ url, schema string }

// Privileged runs statements against db's database the way an attacker
// with superuser rights could: the log's append-only triggers bypassed
// (session_replication_role = replica on PostgreSQL; on SQLite, which has
// no such switch, the triggers are dropped and created again around
// them). db must come from Postgres, OpenPostgres, OpenPostgresConfig or
// SQLite. Render binary values with Blob.
func Privileged(t testing.TB, db store.DB, stmts ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w, ok := where.Load(db)
	if !ok {
		t.Fatalf("testenv: Privileged: db was not opened by testenv")
	}
	switch w := w.(type) {
	case pgPlace:
		c, err := pgx.Connect(ctx, w.url)
		if err != nil {
			t.Fatalf("testenv: %v", err)
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "SET search_path = "+pgx.Identifier{w.schema}.Sanitize()+"; SET session_replication_role = replica"); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		for _, s := range stmts {
			if _, err := c.Exec(ctx, s); err != nil {
				t.Fatalf("testenv: %s: %v", s, err)
			}
		}
	case string:
		privilegedSQLite(ctx, t, w, stmts)
	}
}

func privilegedSQLite(ctx context.Context, t testing.TB, path string, stmts []string) {
	raw, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	defer raw.Close()
	tx, err := raw.BeginTx(ctx, nil)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	defer func() { _ = tx.Rollback() }()
	rows, err := tx.QueryContext(ctx, "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name IN ('events', 'log_head')")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	triggers := map[string]string{}
	for rows.Next() {
		var name, def string
		if err := rows.Scan(&name, &def); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		triggers[name] = def
	}
	rows.Close()
	exec := func(s string) {
		if _, err := tx.ExecContext(ctx, s); err != nil {
			t.Fatalf("testenv: %s: %v", s, err)
		}
	}
	for name := range triggers {
		exec("DROP TRIGGER " + name)
	}
	for _, s := range stmts {
		exec(s)
	}
	for _, def := range triggers {
		exec(def)
	}
	if err := tx.Commit(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// Blob renders b as a binary literal of db's dialect.
func Blob(db store.DB, b []byte) string {
	if db.Dialect() == "postgres" {
		return `'\x` + hex.EncodeToString(b) + `'::bytea`
	}
	return "x'" + hex.EncodeToString(b) + "'"
}

// remember records where db's database is until t's cleanup.
func remember(t testing.TB, db store.DB, w any) {
	where.Store(db, w)
	t.Cleanup(func() { where.Delete(db) })
}
