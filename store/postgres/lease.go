package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/sourcegraph/conc"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/store"
)

// DefaultLockTTL is Config.LockTTL's default.
const DefaultLockTTL = 3 * time.Second

// TryLock implements store.DB with a lease row in leader_leases that
// expires LockTTL after its last renewal (server time). A session advisory
// lock would not do: a holder cut off by a silent partition keeps its
// session, and so the lock, for as long as the server sees a healthy TCP
// connection, which a middlebox can keep up forever.
//
// The holder renews the lease every LockTTL/3 on pooled connections, each
// renewal bounded so that it completes before the lease could have
// expired; the first renewal that fails, finds the lease taken, or does
// not complete in time closes lost. The holder thus gives up before the
// server lets anyone else take the lease (as long as the two clocks run at
// the same rate); what a paused or slow holder still does after that must
// be fenced by the caller (the relay's expected-last-sequence). release
// ends the lease at once when it still holds it.
func (db *DB) TryLock(ctx context.Context, name string) (func(), <-chan struct{}, error) {
	ttl := db.cfg.LockTTL
	holder, err := leaseHolder()
	if err != nil {
		return nil, nil, fmt.Errorf("postgres: lock %q: %w", name, err)
	}
	key := db.lockKey() + ":" + name
	tctx, cancel := context.WithTimeout(ctx, ttl)
	defer cancel()
	sent := time.Now()
	var epoch int64
	err = db.pool.QueryRow(tctx, `INSERT INTO leader_leases AS l (name, holder, epoch, expires_at)
		VALUES ($1, $2, 1, now() + $3 * interval '1 microsecond')
		ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, epoch = l.epoch + 1, expires_at = excluded.expires_at
		WHERE l.expires_at <= now()
		RETURNING epoch`, key, holder, ttl.Microseconds()).Scan(&epoch)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, fmt.Errorf("postgres: lock %q: %w", name, store.ErrLockHeld)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("postgres: lock %q: %w", name, translate(err))
	}
	l := &lease{db: db, name: name, key: key, holder: holder, epoch: epoch, ttl: ttl, lost: make(chan struct{})}
	wctx, stop := context.WithCancel(context.Background())
	var wg conc.WaitGroup
	wg.Go(func() { l.renew(wctx, sent) })
	var once sync.Once
	release := func() {
		once.Do(func() {
			stop()
			wg.Wait()
			l.end()
		})
	}
	return release, l.lost, nil
}

// lease is one held lease.
type lease struct {
	db          *DB
	name, key   string
	holder      string
	epoch       int64
	ttl         time.Duration
	lost        chan struct{}
	closeLostMu sync.Once
}

// renew extends the lease every ttl/3 until ctx ends or a renewal does not
// succeed in time. valid is when the holder stops trusting the lease: ttl
// after the last successful renewal was sent (the server computed its
// expiry later than that).
func (l *lease) renew(ctx context.Context, sent time.Time) {
	valid := sent.Add(l.ttl)
	t := time.NewTicker(l.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Half the ttl for the renewal, and a sixth as margin before the
		// server could expire the lease, for a pause between the answer
		// and acting on it.
		deadline := time.Now().Add(l.ttl / 2)
		if late := valid.Add(-l.ttl / 6); late.Before(deadline) {
			deadline = late
		}
		sent := time.Now()
		ok, err := l.extend(ctx, deadline)
		if ctx.Err() != nil {
			return
		}
		if err != nil || !ok || time.Now().After(deadline) {
			l.db.log.Warn("leader lease lost; giving up the lock", zap.String("lock", l.name), zap.Int64("epoch", l.epoch),
				zap.Bool("taken", err == nil && !ok), zap.Error(err))
			l.closeLostMu.Do(func() { close(l.lost) })
			return
		}
		valid = sent.Add(l.ttl)
	}
}

// extend renews the lease if this holder still has it.
func (l *lease) extend(ctx context.Context, deadline time.Time) (bool, error) {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	tag, err := l.db.pool.Exec(ctx, `UPDATE leader_leases SET expires_at = now() + $3 * interval '1 microsecond'
		WHERE name = $1 AND holder = $2`, l.key, l.holder, l.ttl.Microseconds())
	if err != nil {
		return false, translate(err)
	}
	return tag.RowsAffected() == 1, nil
}

// end expires the lease now if this holder still has it, so that a
// standby need not wait for the ttl; failing that, it expires by itself.
func (l *lease) end() {
	ctx, cancel := context.WithTimeout(context.Background(), l.ttl)
	defer cancel()
	_, err := l.db.pool.Exec(ctx, "UPDATE leader_leases SET expires_at = now() WHERE name = $1 AND holder = $2", l.key, l.holder)
	if err != nil {
		l.db.log.Info("could not end the leader lease; it expires by itself", zap.String("lock", l.name), zap.Error(err))
	}
}

// leaseHolder names a lease's holder: host, process and a random part, so
// that every TryLock is a holder of its own.
func leaseHolder() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(b)), nil
}
