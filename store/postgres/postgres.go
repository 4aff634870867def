// Package postgres is the PostgreSQL dialect of the store, built on pgx/v5.
// pgx types never leave this package: callers see store.DB and store.Tx.
package postgres

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/sourcegraph/conc"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/internal/backoff"
	"github.com/artifactstore/artifactstore/migrations"
	"github.com/artifactstore/artifactstore/store"
)

// Config configures a PostgreSQL store.
type Config struct {
	// URL is a postgres:// connection URL (sslmode, sslrootcert and the
	// other libpq parameters work as in libpq).
	URL string
	// Schema, when set, is the schema every connection uses (search_path);
	// Migrate creates it. Tests use one schema each.
	Schema string
	// ViewSchema, when set, comes first in search_path: the view tables
	// found there are used instead of the log's (a projection version
	// being rebuilt, see VersionDB); everything else is the log's.
	ViewSchema string
	// MaxPayload bounds event payloads (store.DefaultMaxPayload when 0).
	MaxPayload int
	// MaxConns is the pool size (pgx's default when 0).
	MaxConns int32
	// ApplicationName is the application_name the connections report
	// (pg_stat_activity, the server's logs) unless the URL sets one.
	ApplicationName string
	// IdleInTransactionTimeout, when set, makes the server end a session
	// that stays idle inside a transaction longer
	// (idle_in_transaction_session_timeout) unless the URL sets it: a
	// client cut off mid-transaction then releases its row locks.
	IdleInTransactionTimeout time.Duration
	// LockTTL is how long a leader lease taken with TryLock lasts without
	// renewal (DefaultLockTTL when 0): the holder renews it every third of
	// it and gives up when a renewal fails or is late, so another process
	// takes over about LockTTL after the holder was cut off.
	LockTTL time.Duration
	// Logger receives the store's logs (no-op when nil).
	Logger *zap.Logger
}

// DB is a PostgreSQL store. It implements store.DB.
type DB struct {
	cfg     Config
	pool    *pgxpool.Pool
	log     *zap.Logger
	channel string
	// guess is what this handle knows of the log's head (guess.go).
	guess  *guesser
	signal store.Signal

	// leases is the dedicated connection of projector leases.
	leases leaseConn

	listenOnce sync.Once
	stopMu     sync.Mutex
	stop       context.CancelFunc
	wg         conc.WaitGroup
}

var _ store.DB = (*DB)(nil)

// Open connects to PostgreSQL and checks that it answers. An unreachable
// database returns an error wrapping store.ErrUnavailable.
func Open(ctx context.Context, cfg Config) (*DB, error) {
	// PostgreSQL would truncate a longer name (and two spellings of it
	// would share a schema but not a NOTIFY channel).
	for _, name := range []string{cfg.Schema, cfg.ViewSchema} {
		if len(name) > maxIdentifier {
			return nil, fmt.Errorf("postgres: schema name %q is %d bytes long; PostgreSQL's names are at most %d", name, len(name), maxIdentifier)
		}
	}
	pc, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("postgres: parsing database URL: %w", redactErr(err))
	}
	if cfg.MaxConns > 0 {
		pc.MaxConns = cfg.MaxConns
	}
	if cfg.MaxPayload <= 0 {
		cfg.MaxPayload = store.DefaultMaxPayload
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.LockTTL <= 0 {
		cfg.LockTTL = DefaultLockTTL
	}
	pc.ConnConfig.RuntimeParams["timezone"] = "UTC"
	if path := searchPath(cfg); path != "" {
		pc.ConnConfig.RuntimeParams["search_path"] = path
	}
	if cfg.ApplicationName != "" && pc.ConnConfig.RuntimeParams["application_name"] == "" {
		pc.ConnConfig.RuntimeParams["application_name"] = cfg.ApplicationName
	}
	if t := cfg.IdleInTransactionTimeout; t > 0 && pc.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] == "" {
		pc.ConnConfig.RuntimeParams["idle_in_transaction_session_timeout"] = strconv.FormatInt(t.Milliseconds(), 10)
	}
	if pc.ConnConfig.ConnectTimeout == 0 {
		pc.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", translate(err))
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: connecting: %w", translate(err))
	}
	schema := cfg.Schema
	if schema == "" {
		schema = "public"
	}
	return &DB{
		cfg:     cfg,
		pool:    pool,
		log:     cfg.Logger.Named("store"),
		channel: eventsChannel(schema),
		guess:   newGuesser(),
		stop:    func() {},
	}, nil
}

// maxIdentifier is the length in bytes of PostgreSQL's longest name
// (NAMEDATALEN - 1).
const maxIdentifier = 63

// eventsChannel is the NOTIFY channel of the log in schema: named after
// it, or, when that name would not fit PostgreSQL's 63-byte identifiers
// (a schema name of 43 bytes or more), after a digest of it.
func eventsChannel(schema string) string {
	const prefix = "artifactstore_events_"
	if len(prefix)+len(schema) <= maxIdentifier {
		return prefix + schema
	}
	sum := store.DigestOf([]byte(schema))
	return prefix + hex.EncodeToString(sum[:12])
}

// Dialect implements store.DB.
func (db *DB) Dialect() string { return migrations.Postgres }

// Close stops the listener and closes the pool.
func (db *DB) Close() {
	db.stopMu.Lock()
	db.stop()
	db.stopMu.Unlock()
	db.wg.Wait()
	db.leases.close()
	db.pool.Close()
}

// searchPath is the connections' search_path ("" keeps the server's), the
// schemas quoted as the rest of the package quotes them.
func searchPath(cfg Config) string {
	if cfg.ViewSchema == "" {
		if cfg.Schema == "" {
			return ""
		}
		return pgx.Identifier{cfg.Schema}.Sanitize()
	}
	log := cfg.Schema
	if log == "" {
		log = "public"
	}
	return pgx.Identifier{cfg.ViewSchema}.Sanitize() + ", " + pgx.Identifier{log}.Sanitize()
}

func (db *DB) lockKey() string {
	if db.cfg.Schema == "" {
		return "public"
	}
	return db.cfg.Schema
}

func (db *DB) ensureSchema(ctx context.Context) error {
	if db.cfg.Schema == "" {
		return nil
	}
	_, err := db.pool.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{db.cfg.Schema}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return nil // a concurrent migrator created it first
	}
	if err != nil {
		return fmt.Errorf("postgres: creating schema: %w", translate(err))
	}
	return nil
}

// Migrate applies every pending migration (safe to run concurrently from
// several processes) and returns the versions applied.
func (db *DB) Migrate(ctx context.Context) ([]int64, error) {
	if err := db.ensureSchema(ctx); err != nil {
		return nil, err
	}
	sdb := stdlib.OpenDBFromPool(db.pool)
	defer sdb.Close()
	return migrations.Up(ctx, migrations.Postgres, sdb, db.lockKey())
}

// MigrationStatus lists every migration and whether it is applied.
func (db *DB) MigrationStatus(ctx context.Context) ([]migrations.Status, error) {
	sdb := stdlib.OpenDBFromPool(db.pool)
	defer sdb.Close()
	return migrations.List(ctx, migrations.Postgres, sdb, db.lockKey())
}

// Fresh drops every table the migrations created (the log included) and
// migrates again. The log gets a new log_id.
func (db *DB) Fresh(ctx context.Context) error {
	if err := db.ensureSchema(ctx); err != nil {
		return err
	}
	sdb := stdlib.OpenDBFromPool(db.pool)
	defer sdb.Close()
	if err := migrations.Down(ctx, migrations.Postgres, sdb, db.lockKey()); err != nil {
		return err
	}
	_, err := migrations.Up(ctx, migrations.Postgres, sdb, db.lockKey())
	return err
}

// InTx implements store.DB. The transaction is rolled back (within 5
// seconds, even when ctx is done) when fn fails or panics.
func (db *DB) InTx(ctx context.Context, fn func(store.Tx) error) error {
	c, err := db.pool.Acquire(ctx)
	if err != nil {
		return translate(err)
	}
	t := &tx{db: db, tx: &txConn{c: c}}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		t.tx.end(rctx)
		cancel()
		switch {
		case t.head == nil:
		case t.tx.committed:
			db.guess.ended(t.head)
		default:
			db.guess.forget(t.head)
		}
	}()
	if err := fn(t); err != nil {
		return translate(err)
	}
	if (t.tx.begun || len(t.tx.pending) > 0) && !t.tx.committed {
		if err := t.tx.commit(ctx, &pgx.Batch{}); err != nil {
			return err
		}
	}
	if t.appended {
		db.signal.Broadcast()
	}
	return nil
}

const eventColumns = "sequence, event_type, subject_kind, subject_id, actor, payload, payload_digest, created_at, chain_digest"

// Fetch implements store.DB.
func (db *DB) Fetch(ctx context.Context, after int64, limit int) ([]store.Event, error) {
	rows, err := db.pool.Query(ctx,
		"SELECT "+eventColumns+" FROM events WHERE sequence > $1 ORDER BY sequence LIMIT $2", after, limit)
	if err != nil {
		return nil, translate(err)
	}
	defer rows.Close()
	out := make([]store.Event, 0, min(limit, 1024))
	for rows.Next() {
		var e store.Event
		var digest, chain []byte
		if err := rows.Scan(&e.Sequence, &e.Type, &e.SubjectKind, &e.SubjectID, &e.Actor, &e.Payload, &digest, &e.CreatedAt, &chain); err != nil {
			return nil, translate(err)
		}
		copy(e.PayloadDigest[:], digest)
		copy(e.ChainDigest[:], chain)
		e.CreatedAt = e.CreatedAt.UTC()
		out = append(out, e)
	}
	return out, translate(rows.Err())
}

// Head implements store.DB.
func (db *DB) Head(ctx context.Context) (int64, error) {
	var head int64
	err := db.pool.QueryRow(ctx, "SELECT coalesce(max(sequence), 0) FROM events").Scan(&head)
	return head, translate(err)
}

// LogID implements store.DB.
func (db *DB) LogID(ctx context.Context) (string, error) {
	var id string
	err := db.pool.QueryRow(ctx, "SELECT log_id FROM log_meta").Scan(&id)
	return id, translate(err)
}

// ChainHead implements store.DB.
func (db *DB) ChainHead(ctx context.Context) (store.ChainHead, error) {
	var h store.ChainHead
	var chain []byte
	err := db.pool.QueryRow(ctx, "SELECT sequence, chain_digest FROM log_head").Scan(&h.Sequence, &chain)
	copy(h.Digest[:], chain)
	return h, translate(err)
}

// AppendSignal implements store.DB. The first call starts a listener on a
// dedicated connection (LISTEN), which reconnects with backoff when lost.
func (db *DB) AppendSignal() <-chan struct{} {
	db.listenOnce.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		db.stopMu.Lock()
		prev := db.stop
		db.stop = func() { cancel(); prev() }
		db.stopMu.Unlock()
		db.wg.Go(func() { db.listen(ctx) })
	})
	return db.signal.C()
}

// listenRetry is the pause before the append listener reconnects.
var listenRetry = backoff.Policy{Min: 100 * time.Millisecond, Max: 5 * time.Second}

func (db *DB) listen(ctx context.Context) {
	bo := listenRetry.Backoff()
	for ctx.Err() == nil {
		err := db.listenOnce1(ctx)
		if ctx.Err() != nil {
			return
		}
		// Wake everybody so they re-read the log while we reconnect.
		db.signal.Broadcast()
		d, _ := bo.Next()
		db.log.Warn("append listener lost its connection; reconnecting", zap.Error(err), zap.Duration("backoff", d))
		backoff.Sleep(ctx, d)
	}
}

func (db *DB) listenOnce1(ctx context.Context) error {
	conn, err := db.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	pc := conn.Hijack()
	defer pc.Close(context.Background())
	if _, err := pc.Exec(ctx, "LISTEN "+pgx.Identifier{db.channel}.Sanitize()); err != nil {
		return err
	}
	db.signal.Broadcast()
	for {
		if _, err := pc.WaitForNotification(ctx); err != nil {
			return err
		}
		db.signal.Broadcast()
	}
}

func lockID(s string) int64 {
	h := fnv.New64a()
	h.Write([]byte("artifactstore:" + s))
	return int64(h.Sum64() >> 1)
}

// Package implements store.DB.
func (db *DB) Package(ctx context.Context, id string) (store.PackageView, error) {
	rows, err := db.pool.Query(ctx, packageViewQuery+" WHERE p.package_id = $1", id)
	if err != nil {
		return store.PackageView{}, translate(err)
	}
	views, err := scanPackageViews(rows)
	if err != nil {
		return store.PackageView{}, err
	}
	if len(views) == 0 {
		return store.PackageView{}, store.ErrNotFound
	}
	return views[0], nil
}

// ListPackages implements store.DB.
func (db *DB) ListPackages(ctx context.Context, f store.PackageFilter) ([]store.PackageView, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, 1000)
	rows, err := db.pool.Query(ctx, packageViewQuery+`
		WHERE ($1 = '' OR p.name = $1) AND ($2 = '' OR p.status = $2) AND p.package_id > $3
		ORDER BY p.package_id LIMIT $4`, f.Name, f.Status, f.After, limit)
	if err != nil {
		return nil, translate(err)
	}
	return scanPackageViews(rows)
}

const packageViewQuery = `SELECT p.package_id, p.name, p.version, p.status, p.created_by, p.created_at,
	coalesce(p.finalized_by, ''), p.finalized_at, p.manifest_digest, p.created_sequence, p.last_sequence,
	r.policy, r.keep_days, r.expires_at, r.last_sequence
	FROM artifact_packages p LEFT JOIN retention_state r ON r.package_id = p.package_id`

func scanPackageViews(rows pgx.Rows) ([]store.PackageView, error) {
	defer rows.Close()
	var out []store.PackageView
	for rows.Next() {
		var v store.PackageView
		var digest []byte
		var policy *string
		var keepDays *int
		var expires *time.Time
		var rseq *int64
		if err := rows.Scan(&v.ID, &v.Name, &v.Version, &v.Status, &v.CreatedBy, &v.CreatedAt,
			&v.FinalizedBy, &v.FinalizedAt, &digest, &v.CreatedSequence, &v.LastSequence,
			&policy, &keepDays, &expires, &rseq); err != nil {
			return nil, translate(err)
		}
		normalisePackage(&v.Package, digest)
		if policy != nil {
			r := &store.Retention{PackageID: v.ID, Policy: *policy, KeepDays: *keepDays, ExpiresAt: utcPtr(expires), LastSequence: *rseq}
			v.Retention = r
		}
		out = append(out, v)
	}
	return out, translate(rows.Err())
}

func normalisePackage(p *store.Package, digest []byte) {
	p.CreatedAt = p.CreatedAt.UTC()
	p.FinalizedAt = utcPtr(p.FinalizedAt)
	if len(digest) == 32 {
		var d store.Digest
		copy(d[:], digest)
		p.ManifestDigest = &d
	}
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// Checkpoints implements store.DB.
func (db *DB) Checkpoints(ctx context.Context) ([]store.Checkpoint, error) {
	rows, err := db.pool.Query(ctx, "SELECT projection, partition, sequence FROM checkpoints ORDER BY projection, partition")
	if err != nil {
		return nil, translate(err)
	}
	cps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.Checkpoint, error) {
		var c store.Checkpoint
		err := r.Scan(&c.Projection, &c.Partition, &c.Sequence)
		return c, err
	})
	return cps, translate(err)
}

// DumpViews implements store.DB: each row rendered by PostgreSQL's own
// record-to-text conversion, so every column and byte takes part.
func (db *DB) DumpViews(ctx context.Context) (string, error) {
	var b strings.Builder
	for _, q := range []string{
		"SELECT 'artifact_packages ' || t::text FROM artifact_packages t ORDER BY package_id",
		"SELECT 'retention_state ' || t::text FROM retention_state t ORDER BY package_id",
	} {
		rows, err := db.pool.Query(ctx, q)
		if err != nil {
			return "", translate(err)
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return "", translate(err)
		}
		for _, l := range lines {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	return b.String(), nil
}

// translate maps pgx and network errors onto the store's sentinels: no rows
// → store.ErrNotFound; connection failures, shutdowns, serialization
// failures and deadlocks → store.ErrUnavailable; integrity constraint
// violations → store.ErrConflict.
func translate(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return store.ErrNotFound
	}
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrUnavailable) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "40001", pgErr.Code == "40P01", // serialization failure, deadlock
			strings.HasPrefix(pgErr.Code, "08"),                                 // connection exception
			pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03", // shutdown, cannot connect now
			pgErr.Code == "53300", // too many connections
			pgErr.Code == "55P03": // lock_timeout: the lock was not available in time
			return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
		case strings.HasPrefix(pgErr.Code, "23"): // integrity constraint violation
			return fmt.Errorf("%w: %w", store.ErrConflict, err)
		}
		return err
	}
	var netErr net.Error
	var connErr *pgconn.ConnectError
	if errors.As(err, &netErr) || errors.As(err, &connErr) || pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, redactErr(err))
	}
	return err
}

// redactErr keeps connection errors from echoing a password.
func redactErr(err error) error {
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		return err // pgconn.ConnectError already omits the password
	}
	var parseErr *pgconn.ParseConfigError
	if errors.As(err, &parseErr) {
		return errors.New("invalid database URL")
	}
	return err
}
