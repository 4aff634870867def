package sqlite_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/sqlite"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// baseline returns plain multi-row INSERT / upsert functions over a
// separate SQLite file with the same pragmas as the store (WAL, FULL sync).
func baseline(b *testing.B) storetest.Baseline {
	ctx := context.Background()
	path := filepath.Join(b.TempDir(), "raw.db")
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_txlock=immediate")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	for _, q := range []string{
		`CREATE TABLE raw_events (sequence INTEGER PRIMARY KEY, event_type TEXT, subject_kind TEXT, subject_id TEXT,
			actor TEXT, payload BLOB, payload_digest BLOB, created_at INTEGER DEFAULT 0)`,
		`CREATE TABLE raw_packages (package_id TEXT PRIMARY KEY, name TEXT, version TEXT, status TEXT, created_by TEXT,
			created_at INTEGER, finalized_by TEXT, finalized_at INTEGER, manifest_digest BLOB, created_sequence INTEGER, last_sequence INTEGER)`,
		`CREATE INDEX raw_packages_name ON raw_packages (name, package_id)`,
		`CREATE INDEX raw_packages_status ON raw_packages (status, package_id)`,
		`CREATE TABLE raw_retention (package_id TEXT PRIMARY KEY, policy TEXT, keep_days INTEGER, expires_at INTEGER, last_sequence INTEGER)`,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
	var mu sync.Mutex
	var seq int64
	micros := func(t interface{ UnixMicro() int64 }) int64 { return t.UnixMicro() }
	return storetest.Baseline{
		Insert: func(ctx context.Context, rows []store.Event) error {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer tx.Rollback()
			mu.Lock()
			first := seq + 1
			seq += int64(len(rows))
			mu.Unlock()
			for start := 0; start < len(rows); start += 100 { // SQLite caps bound parameters
				chunk := rows[start:min(start+100, len(rows))]
				q := "INSERT INTO raw_events (sequence, event_type, subject_kind, subject_id, actor, payload, payload_digest) VALUES " +
					strings.TrimSuffix(strings.Repeat("(?,?,?,?,?,?,?),", len(chunk)), ",")
				args := make([]any, 0, 7*len(chunk))
				for i, e := range chunk {
					args = append(args, first+int64(start+i), e.Type, e.SubjectKind, e.SubjectID, e.Actor, e.Payload, e.PayloadDigest[:])
				}
				if _, err := tx.ExecContext(ctx, q, args...); err != nil {
					return err
				}
			}
			return tx.Commit()
		},
		Upsert: func(ctx context.Context, ps []store.Package, rs []store.Retention) error {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer tx.Rollback()
			for _, p := range ps {
				var d []byte
				if p.ManifestDigest != nil {
					d = p.ManifestDigest[:]
				}
				var fin any
				if p.FinalizedAt != nil {
					fin = micros(*p.FinalizedAt)
				}
				if _, err := tx.ExecContext(ctx, `INSERT INTO raw_packages VALUES (?,?,?,?,?,?,?,?,?,?,?)
					ON CONFLICT (package_id) DO UPDATE SET status = excluded.status, finalized_at = excluded.finalized_at,
					manifest_digest = excluded.manifest_digest, last_sequence = excluded.last_sequence`,
					p.ID, p.Name, p.Version, p.Status, p.CreatedBy, micros(p.CreatedAt), p.FinalizedBy, fin, d,
					p.CreatedSequence, p.LastSequence); err != nil {
					return err
				}
			}
			for _, r := range rs {
				var exp any
				if r.ExpiresAt != nil {
					exp = micros(*r.ExpiresAt)
				}
				if _, err := tx.ExecContext(ctx, `INSERT INTO raw_retention VALUES (?,?,?,?,?)
					ON CONFLICT (package_id) DO UPDATE SET expires_at = excluded.expires_at, last_sequence = excluded.last_sequence`,
					r.PackageID, r.Policy, r.KeepDays, exp, r.LastSequence); err != nil {
					return err
				}
			}
			return tx.Commit()
		},
		Reset: func(ctx context.Context) error {
			for _, q := range []string{"DELETE FROM raw_events", "DELETE FROM raw_packages", "DELETE FROM raw_retention"} {
				if _, err := db.ExecContext(ctx, q); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

func BenchmarkAppend(b *testing.B) {
	storetest.BenchAppend(b, func(b *testing.B) store.DB { return testenv.SQLite(b) }, baseline(b),
		map[int]int{1: 500, 100: 20000, 1000: 40000})
}

func BenchmarkReplay100k(b *testing.B) {
	storetest.BenchReplay(b, testenv.SQLite(b), baseline(b), 100_000)
}

func BenchmarkFetch100k(b *testing.B) {
	storetest.BenchFetch(b, testenv.SQLite(b), 100_000)
}

func BenchmarkVerify100k(b *testing.B) {
	storetest.BenchVerify(b, testenv.SQLite(b), 100_000)
}

// BenchmarkChainCost measures Append with the hash chain next to the
// Append from before it (export_test.go), in 7 interleaved rounds on one
// log; ratio = with / without (medians).
func BenchmarkChainCost(b *testing.B) {
	for i, c := range []struct {
		name       string
		perTx, txs int
	}{{"per_tx=1", 1, 1000}, {"per_tx=100", 100, 100}, {"per_tx=1000", 1000, 20}} {
		b.Run(c.name, func(b *testing.B) {
			db := testenv.SQLite(b)
			with := func(ctx context.Context, rows []store.Event) error {
				return db.InTx(ctx, func(tx store.Tx) error { _, err := tx.Append(ctx, rows...); return err })
			}
			without := func(ctx context.Context, rows []store.Event) error {
				return db.InTx(ctx, func(tx store.Tx) error { _, err := sqlite.AppendUnchained(ctx, tx, rows); return err })
			}
			storetest.BenchVersus(b, 7, 1, c.txs, c.perTx, i*10_000_000, with, without)
		})
	}
}
