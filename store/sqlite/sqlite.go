// Package sqlite is the embedded dialect of the store: one SQLite file in
// WAL mode through the pure-Go modernc.org/sqlite driver. Every transaction
// is BEGIN IMMEDIATE, so writers are serialised by SQLite itself and
// sequence order is commit order. Times are stored as microseconds since
// the Unix epoch. SQLite has no NOTIFY: AppendSignal fires for appends made
// by this process, and readers in other processes poll.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	sqlite "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/artifactstore/artifactstore/migrations"
	"github.com/artifactstore/artifactstore/store"
)

// Config configures a SQLite store.
type Config struct {
	// Path is the database file; its directory is created if missing.
	Path string
	// MaxPayload bounds event payloads (store.DefaultMaxPayload when 0).
	MaxPayload int
	// Logger receives the store's logs (no-op when nil).
	Logger *zap.Logger
}

// DB is a SQLite store. It implements store.DB.
type DB struct {
	cfg    Config
	db     *sql.DB
	log    *zap.Logger
	signal store.Signal
}

var _ store.DB = (*DB)(nil)

// Open opens (creating if needed) the database file.
func Open(ctx context.Context, cfg Config) (*DB, error) {
	if cfg.Path == "" {
		return nil, errors.New("sqlite: Config.Path is empty")
	}
	if cfg.MaxPayload <= 0 {
		cfg.MaxPayload = store.DefaultMaxPayload
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o755); err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+cfg.Path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	db.SetMaxOpenConns(8)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlite: opening %s: %w", cfg.Path, translate(err))
	}
	return &DB{cfg: cfg, db: db, log: cfg.Logger.Named("store")}, nil
}

// Dialect implements store.DB.
func (db *DB) Dialect() string { return migrations.SQLite }

// Close implements store.DB.
func (db *DB) Close() { db.db.Close() }

// Migrate applies every pending migration and returns the versions applied.
func (db *DB) Migrate(ctx context.Context) ([]int64, error) {
	return migrations.Up(ctx, migrations.SQLite, db.db, db.cfg.Path)
}

// MigrationStatus lists every migration and whether it is applied.
func (db *DB) MigrationStatus(ctx context.Context) ([]migrations.Status, error) {
	return migrations.List(ctx, migrations.SQLite, db.db, db.cfg.Path)
}

// Fresh drops every table (the log included) and migrates again.
func (db *DB) Fresh(ctx context.Context) error {
	if err := migrations.Down(ctx, migrations.SQLite, db.db, db.cfg.Path); err != nil {
		return err
	}
	_, err := migrations.Up(ctx, migrations.SQLite, db.db, db.cfg.Path)
	return err
}

// InTx implements store.DB. The transaction is rolled back when fn fails
// or panics.
func (db *DB) InTx(ctx context.Context, fn func(store.Tx) error) error {
	stx, err := db.db.BeginTx(ctx, nil)
	if err != nil {
		return translate(err)
	}
	done := false
	defer func() {
		if !done {
			_ = stx.Rollback()
		}
	}()
	t := &tx{db: db, tx: stx}
	if err := fn(t); err != nil {
		return translate(err)
	}
	done = true
	if err := stx.Commit(); err != nil {
		return translate(err)
	}
	if t.appended {
		db.signal.Broadcast()
	}
	return nil
}

const eventColumns = "sequence, event_type, subject_kind, subject_id, actor, payload, payload_digest, created_at, chain_digest"

// Fetch implements store.DB.
func (db *DB) Fetch(ctx context.Context, after int64, limit int) ([]store.Event, error) {
	rows, err := db.db.QueryContext(ctx,
		"SELECT "+eventColumns+" FROM events WHERE sequence > ? ORDER BY sequence LIMIT ?", after, limit)
	if err != nil {
		return nil, translate(err)
	}
	defer rows.Close()
	out := make([]store.Event, 0, min(limit, 1024))
	for rows.Next() {
		var e store.Event
		var digest, chain []byte
		var at int64
		if err := rows.Scan(&e.Sequence, &e.Type, &e.SubjectKind, &e.SubjectID, &e.Actor, &e.Payload, &digest, &at, &chain); err != nil {
			return nil, translate(err)
		}
		copy(e.PayloadDigest[:], digest)
		copy(e.ChainDigest[:], chain)
		e.CreatedAt = fromMicros(at)
		out = append(out, e)
	}
	return out, translate(rows.Err())
}

// Head implements store.DB.
func (db *DB) Head(ctx context.Context) (int64, error) {
	var head int64
	err := db.db.QueryRowContext(ctx, "SELECT coalesce(max(sequence), 0) FROM events").Scan(&head)
	return head, translate(err)
}

// LogID implements store.DB.
func (db *DB) LogID(ctx context.Context) (string, error) {
	var id string
	err := db.db.QueryRowContext(ctx, "SELECT log_id FROM log_meta").Scan(&id)
	return id, translate(err)
}

// ChainHead implements store.DB.
func (db *DB) ChainHead(ctx context.Context) (store.ChainHead, error) {
	var h store.ChainHead
	var chain []byte
	err := db.db.QueryRowContext(ctx, "SELECT sequence, chain_digest FROM log_head").Scan(&h.Sequence, &chain)
	copy(h.Digest[:], chain)
	return h, translate(err)
}

// AppendSignal implements store.DB; it fires on this process's appends.
func (db *DB) AppendSignal() <-chan struct{} { return db.signal.C() }

var (
	fileLocksMu sync.Mutex
	fileLocks   = map[string]bool{}
)

// TryLock implements store.DB with an flock(2) on a file next to the
// database, so it also excludes other processes.
func (db *DB) TryLock(ctx context.Context, name string) (func(), <-chan struct{}, error) {
	path := db.cfg.Path + "." + name + ".lock"
	fileLocksMu.Lock()
	defer fileLocksMu.Unlock()
	if fileLocks[path] { // flock is per open file description: check this process too
		return nil, nil, fmt.Errorf("sqlite: lock %q: %w", name, store.ErrLockHeld)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("sqlite: lock %q: %w", name, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("sqlite: lock %q: %w", name, store.ErrLockHeld)
	}
	fileLocks[path] = true
	var once sync.Once
	return func() {
		once.Do(func() {
			fileLocksMu.Lock()
			defer fileLocksMu.Unlock()
			delete(fileLocks, path)
			f.Close() // releases the flock
		})
	}, make(chan struct{}), nil
}

// Package implements store.DB.
func (db *DB) Package(ctx context.Context, id string) (store.PackageView, error) {
	views, err := db.queryViews(ctx, packageViewQuery+" WHERE p.package_id = ?", id)
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
	return db.queryViews(ctx, packageViewQuery+`
		WHERE (?1 = '' OR p.name = ?1) AND (?2 = '' OR p.status = ?2) AND p.package_id > ?3
		ORDER BY p.package_id LIMIT ?4`, f.Name, f.Status, f.After, limit)
}

const packageViewQuery = `SELECT p.package_id, p.name, p.version, p.status, p.created_by, p.created_at,
	coalesce(p.finalized_by, ''), p.finalized_at, p.manifest_digest, p.created_sequence, p.last_sequence,
	r.policy, r.keep_days, r.expires_at, r.last_sequence
	FROM artifact_packages p LEFT JOIN retention_state r ON r.package_id = p.package_id`

func (db *DB) queryViews(ctx context.Context, q string, args ...any) ([]store.PackageView, error) {
	rows, err := db.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, translate(err)
	}
	defer rows.Close()
	var out []store.PackageView
	for rows.Next() {
		var v store.PackageView
		var digest []byte
		var created int64
		var finalized, expires, keepDays, rseq sql.NullInt64
		var policy sql.NullString
		if err := rows.Scan(&v.ID, &v.Name, &v.Version, &v.Status, &v.CreatedBy, &created,
			&v.FinalizedBy, &finalized, &digest, &v.CreatedSequence, &v.LastSequence,
			&policy, &keepDays, &expires, &rseq); err != nil {
			return nil, translate(err)
		}
		fillPackage(&v.Package, created, finalized, digest)
		if policy.Valid {
			v.Retention = &store.Retention{PackageID: v.ID, Policy: policy.String, KeepDays: int(keepDays.Int64),
				ExpiresAt: nullTime(expires), LastSequence: rseq.Int64}
		}
		out = append(out, v)
	}
	return out, translate(rows.Err())
}

func fillPackage(p *store.Package, created int64, finalized sql.NullInt64, digest []byte) {
	p.CreatedAt = fromMicros(created)
	p.FinalizedAt = nullTime(finalized)
	if len(digest) == 32 {
		var d store.Digest
		copy(d[:], digest)
		p.ManifestDigest = &d
	}
}

// Checkpoints implements store.DB.
func (db *DB) Checkpoints(ctx context.Context) ([]store.Checkpoint, error) {
	rows, err := db.db.QueryContext(ctx, "SELECT projection, partition, sequence FROM checkpoints ORDER BY projection, partition")
	if err != nil {
		return nil, translate(err)
	}
	defer rows.Close()
	var out []store.Checkpoint
	for rows.Next() {
		var c store.Checkpoint
		if err := rows.Scan(&c.Projection, &c.Partition, &c.Sequence); err != nil {
			return nil, translate(err)
		}
		out = append(out, c)
	}
	return out, translate(rows.Err())
}

// DumpViews implements store.DB: every column of every row through
// SQLite's quote(), which renders BLOBs as hex literals.
func (db *DB) DumpViews(ctx context.Context) (string, error) {
	var b strings.Builder
	for _, q := range []string{
		`SELECT 'artifact_packages (' || quote(package_id) || ',' || quote(name) || ',' || quote(version) || ',' ||
			quote(status) || ',' || quote(created_by) || ',' || quote(created_at) || ',' || quote(finalized_by) || ',' ||
			quote(finalized_at) || ',' || quote(manifest_digest) || ',' || quote(created_sequence) || ',' ||
			quote(last_sequence) || ')' FROM artifact_packages ORDER BY package_id`,
		`SELECT 'retention_state (' || quote(package_id) || ',' || quote(policy) || ',' || quote(keep_days) || ',' ||
			quote(expires_at) || ',' || quote(last_sequence) || ')' FROM retention_state ORDER BY package_id`,
	} {
		rows, err := db.db.QueryContext(ctx, q)
		if err != nil {
			return "", translate(err)
		}
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				rows.Close()
				return "", translate(err)
			}
			b.WriteString(line)
			b.WriteByte('\n')
		}
		if err := rows.Close(); err != nil {
			return "", translate(err)
		}
	}
	return b.String(), nil
}

func micros(t time.Time) int64 { return t.UnixMicro() }

func fromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }

func nullTime(v sql.NullInt64) *time.Time {
	if !v.Valid {
		return nil
	}
	t := fromMicros(v.Int64)
	return &t
}

func nullMicros(t *time.Time) sql.NullInt64 {
	if t == nil {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: micros(*t), Valid: true}
}

// translate maps driver errors onto the store's sentinels.
func translate(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, sql.ErrNoRows) {
		return store.ErrNotFound
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_FULL:
			return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
		case sqlite3.SQLITE_CONSTRAINT:
			return fmt.Errorf("%w: %w", store.ErrConflict, err)
		}
	}
	return err
}
