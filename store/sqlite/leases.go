package sqlite

import (
	"context"
	"database/sql"
	"slices"
	"time"

	"github.com/artifactstore/artifactstore/store"
)

// Partitions implements store.DB.
func (db *DB) Partitions(ctx context.Context) (int, error) {
	var n int
	err := db.db.QueryRowContext(ctx, "SELECT partitions FROM log_meta").Scan(&n)
	return n, translate(err)
}

// Heartbeat implements store.Leases. SQLite is one host's file, so the
// process clock is the database's.
func (db *DB) Heartbeat(ctx context.Context, projection, worker string, ttl time.Duration) ([]string, error) {
	var out []string
	err := db.rawTx(ctx, func(tx *sql.Tx) error {
		now := time.Now()
		if _, err := tx.ExecContext(ctx, `INSERT INTO projector_members (projection, worker, expires_at) VALUES (?, ?, ?)
			ON CONFLICT (projection, worker) DO UPDATE SET expires_at = excluded.expires_at`,
			projection, worker, micros(now.Add(ttl))); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM projector_members WHERE projection = ? AND expires_at < ?`,
			projection, micros(now.Add(-time.Minute))); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT worker FROM projector_members WHERE projection = ? AND expires_at > ?
			ORDER BY worker`, projection, micros(now))
		if err != nil {
			return err
		}
		out, err = collect(rows, func(r *sql.Rows) (string, error) { var s string; return s, r.Scan(&s) })
		return err
	})
	return out, err
}

// ClaimLeases implements store.Leases.
func (db *DB) ClaimLeases(ctx context.Context, projection, worker string, want []int, ttl time.Duration) ([]int, error) {
	var out []int
	err := db.rawTx(ctx, func(tx *sql.Tx) error {
		now := time.Now()
		for _, p := range want {
			var got int
			err := tx.QueryRowContext(ctx, `INSERT INTO projector_leases AS l (projection, partition, worker, expires_at)
				VALUES (?, ?, ?, ?)
				ON CONFLICT (projection, partition) DO UPDATE SET worker = excluded.worker, expires_at = excluded.expires_at
					WHERE l.worker = excluded.worker OR l.expires_at <= ?
				RETURNING partition`, projection, p, worker, micros(now.Add(ttl)), micros(now)).Scan(&got)
			if err == sql.ErrNoRows {
				continue
			}
			if err != nil {
				return err
			}
			out = append(out, got)
		}
		return nil
	})
	slices.Sort(out)
	return out, err
}

// ReleaseLeases implements store.Leases.
func (db *DB) ReleaseLeases(ctx context.Context, projection, worker string, partitions []int) error {
	return db.rawTx(ctx, func(tx *sql.Tx) error {
		for _, p := range partitions {
			if _, err := tx.ExecContext(ctx, `DELETE FROM projector_leases WHERE projection = ? AND worker = ? AND partition = ?`,
				projection, worker, p); err != nil {
				return err
			}
		}
		return nil
	})
}

// Leave implements store.Leases.
func (db *DB) Leave(ctx context.Context, projection, worker string) error {
	return db.rawTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM projector_leases WHERE projection = ? AND worker = ?`, projection, worker); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM projector_members WHERE projection = ? AND worker = ?`, projection, worker)
		return err
	})
}

// LeaseHolders implements store.Leases.
func (db *DB) LeaseHolders(ctx context.Context, projection string) (map[int]string, error) {
	rows, err := db.db.QueryContext(ctx, `SELECT partition, worker FROM projector_leases WHERE projection = ? AND expires_at > ?`,
		projection, micros(time.Now()))
	if err != nil {
		return nil, translate(err)
	}
	type holder struct {
		p int
		w string
	}
	hs, err := collect(rows, func(r *sql.Rows) (holder, error) { var h holder; return h, r.Scan(&h.p, &h.w) })
	if err != nil {
		return nil, err
	}
	out := map[int]string{}
	for _, h := range hs {
		out[h.p] = h.w
	}
	return out, nil
}

// rawTx runs fn in a write transaction of its own.
func (db *DB) rawTx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := db.db.BeginTx(ctx, nil)
	if err != nil {
		return translate(err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return translate(err)
	}
	return translate(tx.Commit())
}

// collect scans every row with scan and closes rows.
func collect[T any](rows *sql.Rows, scan func(*sql.Rows) (T, error)) ([]T, error) {
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, translate(err)
		}
		out = append(out, v)
	}
	return out, translate(rows.Err())
}

var _ store.Leases = (*DB)(nil)
