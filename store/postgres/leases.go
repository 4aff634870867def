package postgres

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Partitions implements store.DB.
func (db *DB) Partitions(ctx context.Context) (int, error) {
	var n int
	err := db.pool.QueryRow(ctx, "SELECT partitions FROM log_meta").Scan(&n)
	return n, translate(err)
}

// leaseConn is a connection of its own for lease renewals, outside the
// pool: a worker's partition transactions blocked on another worker's row
// locks can hold every pooled connection, and a renewal that waits behind
// them lets the leases expire.
type leaseConn struct {
	mu   sync.Mutex
	conn *pgx.Conn
}

// run runs fn on the lease connection, connecting first when needed; after
// an error the connection is closed (a query cut short by ctx leaves it
// unusable) and the next call connects again.
func (l *leaseConn) run(ctx context.Context, pool *pgxpool.Pool, fn func(*pgx.Conn) error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil || l.conn.IsClosed() {
		c, err := pgx.ConnectConfig(ctx, pool.Config().ConnConfig.Copy())
		if err != nil {
			return translate(err)
		}
		l.conn = c
	}
	err := fn(l.conn)
	if err != nil {
		l.conn.Close(context.Background())
		l.conn = nil
	}
	return translate(err)
}

func (l *leaseConn) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn != nil {
		l.conn.Close(context.Background())
		l.conn = nil
	}
}

// Heartbeat implements store.Leases in one statement; members expired for
// a minute are deleted on the way.
func (db *DB) Heartbeat(ctx context.Context, projection, worker string, ttl time.Duration) (out []string, err error) {
	err = db.leases.run(ctx, db.pool, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, `WITH beat AS (
			INSERT INTO projector_members (projection, worker, expires_at) VALUES ($1, $2, now() + $3 * interval '1 microsecond')
			ON CONFLICT (projection, worker) DO UPDATE SET expires_at = excluded.expires_at),
		gone AS (DELETE FROM projector_members WHERE projection = $1 AND expires_at < now() - interval '1 minute')
		SELECT worker FROM projector_members WHERE projection = $1 AND worker <> $2 AND expires_at > now()
		UNION SELECT $2 ORDER BY 1`, projection, worker, ttl.Microseconds())
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	return out, err
}

// ClaimLeases implements store.Leases in one statement.
func (db *DB) ClaimLeases(ctx context.Context, projection, worker string, want []int, ttl time.Duration) (out []int, err error) {
	err = db.leases.run(ctx, db.pool, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, `INSERT INTO projector_leases AS l (projection, partition, worker, expires_at)
		SELECT $1, p, $2, now() + $4 * interval '1 microsecond' FROM unnest($3::int[]) AS p
		ON CONFLICT (projection, partition) DO UPDATE SET worker = excluded.worker, expires_at = excluded.expires_at
			WHERE l.worker = excluded.worker OR l.expires_at <= now()
		RETURNING partition`, projection, worker, want, ttl.Microseconds())
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, pgx.RowTo[int])
		return err
	})
	slices.Sort(out)
	return out, err
}

// ReleaseLeases implements store.Leases.
func (db *DB) ReleaseLeases(ctx context.Context, projection, worker string, partitions []int) error {
	return db.leases.run(ctx, db.pool, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, `DELETE FROM projector_leases WHERE projection = $1 AND worker = $2 AND partition = ANY($3)`,
			projection, worker, partitions)
		return err
	})
}

// Leave implements store.Leases.
func (db *DB) Leave(ctx context.Context, projection, worker string) error {
	_, err := db.pool.Exec(ctx, `WITH l AS (DELETE FROM projector_leases WHERE projection = $1 AND worker = $2)
		DELETE FROM projector_members WHERE projection = $1 AND worker = $2`, projection, worker)
	return translate(err)
}

// LeaseHolders implements store.Leases.
func (db *DB) LeaseHolders(ctx context.Context, projection string) (map[int]string, error) {
	rows, err := db.pool.Query(ctx, `SELECT partition, worker FROM projector_leases
		WHERE projection = $1 AND expires_at > now()`, projection)
	if err != nil {
		return nil, translate(err)
	}
	out := map[int]string{}
	var p int
	var w string
	_, err = pgx.ForEachRow(rows, []any{&p, &w}, func() error { out[p] = w; return nil })
	return out, translate(err)
}
