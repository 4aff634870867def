package projection

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// leaseConn is a connection of its own for lease renewals, outside the
// pool: partition transactions waiting on another instance's row locks can
// hold every pooled connection, and a renewal waiting behind them would let
// the leases expire.
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
			return err
		}
		l.conn = c
	}
	err := fn(l.conn)
	if err != nil {
		l.conn.Close(context.Background())
		l.conn = nil
	}
	return err
}

func (l *leaseConn) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn != nil {
		l.conn.Close(context.Background())
		l.conn = nil
	}
}

// heartbeat renews this instance's member row and returns the live members
// (itself included), sorted; members expired for a minute are deleted.
func (r *Runner) heartbeat(ctx context.Context) (out []string, err error) {
	err = r.leases.run(ctx, r.pool, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, `WITH beat AS (
			INSERT INTO projection_members (projection, worker, expires_at) VALUES ($1, $2, now() + $3 * interval '1 microsecond')
			ON CONFLICT (projection, worker) DO UPDATE SET expires_at = excluded.expires_at),
		gone AS (DELETE FROM projection_members WHERE projection = $1 AND expires_at < now() - interval '1 minute')
		SELECT worker FROM projection_members WHERE projection = $1 AND worker <> $2 AND expires_at > now()
		UNION SELECT $2 ORDER BY 1`, r.p.Name, r.cfg.WorkerID, r.cfg.LeaseTTL.Microseconds())
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	return out, err
}

// claimLeases takes or renews the leases of want that are this instance's
// or expired, and returns those it holds, sorted.
func (r *Runner) claimLeases(ctx context.Context, want []int) (out []int, err error) {
	err = r.leases.run(ctx, r.pool, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, `INSERT INTO projection_leases AS l (projection, partition, worker, expires_at)
		SELECT $1, p, $2, now() + $4 * interval '1 microsecond' FROM unnest($3::int[]) AS p
		ON CONFLICT (projection, partition) DO UPDATE SET worker = excluded.worker, expires_at = excluded.expires_at
			WHERE l.worker = excluded.worker OR l.expires_at <= now()
		RETURNING partition`, r.p.Name, r.cfg.WorkerID, want, r.cfg.LeaseTTL.Microseconds())
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, pgx.RowTo[int])
		return err
	})
	slices.Sort(out)
	return out, err
}

// releaseLeases gives leases back so the next owner need not wait.
func (r *Runner) releaseLeases(ctx context.Context, partitions []int) error {
	return r.leases.run(ctx, r.pool, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, `DELETE FROM projection_leases WHERE projection = $1 AND worker = $2 AND partition = ANY($3)`,
			r.p.Name, r.cfg.WorkerID, partitions)
		return err
	})
}

// leave deletes this instance's member row and leases.
func (r *Runner) leave(ctx context.Context) error {
	_, err := r.pool.Exec(ctx, `WITH l AS (DELETE FROM projection_leases WHERE projection = $1 AND worker = $2)
		DELETE FROM projection_members WHERE projection = $1 AND worker = $2`, r.p.Name, r.cfg.WorkerID)
	return err
}

// leaseEpoch starts the instance's monotonic clock for lease validity.
var leaseEpoch = time.Now()

func sinceEpoch() int64 { return int64(time.Since(leaseEpoch)) }

// leaseValid reports whether this instance's leases are still certainly
// held: less than LeaseTTL since the start of the last successful renewal.
func (r *Runner) leaseValid() bool { return sinceEpoch() < r.validUntil.Load() }

// assign spreads partitions over the sorted members round-robin and
// returns self's share; every instance computes the same assignment.
func assign(members []string, partitions int, self string) []int {
	members = slices.Clone(members)
	slices.Sort(members)
	members = slices.Compact(members)
	i := slices.Index(members, self)
	if i < 0 {
		return nil
	}
	var out []int
	for p := i; p < partitions; p += len(members) {
		out = append(out, p)
	}
	return out
}
