// Package testenv starts the real servers artifactstore's tests run
// against: a PostgreSQL (an existing one, or a throwaway cluster made with
// initdb and pg_ctl when none answers) with one schema per test, SQLite on a
// temp file, and an in-process nats-server with JetStream on a random
// loopback port.
//
// PostgreSQL is found in this order: the URL in
// ARTIFACTSTORE_TEST_DATABASE_URL; postgres://postgres@127.0.0.1:5432/postgres;
// a throwaway cluster on a free port when the server binaries (initdb,
// pg_ctl) are on PATH or under /usr/lib/postgresql/*/bin. When none of these
// works the test fails: core tests never skip.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/artifactstore/artifactstore/store/postgres"
	"github.com/artifactstore/artifactstore/store/sqlite"
)

// EnvDatabaseURL names the environment variable with the PostgreSQL URL tests use.
const EnvDatabaseURL = "ARTIFACTSTORE_TEST_DATABASE_URL"

// DefaultDatabaseURL is tried when EnvDatabaseURL is unset.
const DefaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

var (
	pgOnce    sync.Once
	pgURL     string
	pgErr     error
	pgCleanup func()
)

// Main runs a package's tests and then stops a throwaway PostgreSQL cluster
// if one was started. Use it as TestMain's body: os.Exit(testenv.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	if pgCleanup != nil {
		pgCleanup()
	}
	return code
}

// MainNoLeaks is Main followed, when the tests passed, by a goroutine-leak
// check (goleak): every server, connection and worker the tests started must
// be gone. opts are the package's ignores (goleak.IgnoreTopFunction ...),
// none by default. Use it as TestMain's body:
// os.Exit(testenv.MainNoLeaks(m)).
func MainNoLeaks(m *testing.M, opts ...goleak.Option) int {
	code := Main(m)
	if code != 0 {
		return code
	}
	if err := goleak.Find(opts...); err != nil {
		fmt.Fprintln(os.Stderr, "goleak:", err)
		return 1
	}
	return 0
}

// Database creates a fresh PostgreSQL database for t, dropped (with its
// connections) at cleanup, and returns its URL.
func Database(t testing.TB) string {
	t.Helper()
	base := PostgresURL(t)
	name := Name("db")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("testenv: creating database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Logf("testenv: dropping database %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("testenv: dropping database %s: %v", name, err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// PostgresURL returns the URL of a PostgreSQL that answers, starting a
// throwaway cluster if needed. It fails t when none can be had.
func PostgresURL(t testing.TB) string {
	t.Helper()
	pgOnce.Do(func() { pgURL, pgErr = findPostgres() })
	if pgErr != nil {
		t.Fatalf("testenv: no PostgreSQL: %v (set %s, start one on 127.0.0.1:5432, or install the server binaries)", pgErr, EnvDatabaseURL)
	}
	return pgURL
}

func findPostgres() (string, error) {
	if u := os.Getenv(EnvDatabaseURL); u != "" {
		if err := ping(u); err != nil {
			return "", fmt.Errorf("%s=%s does not answer: %w", EnvDatabaseURL, redact(u), err)
		}
		return u, nil
	}
	if ping(DefaultDatabaseURL) == nil {
		return DefaultDatabaseURL, nil
	}
	return startCluster()
}

func redact(u string) string {
	if i := strings.Index(u, "@"); i > 0 {
		if j := strings.Index(u, "://"); j > 0 && j < i {
			return u[:j+3] + "***" + u[i:]
		}
	}
	return u
}

func ping(url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.Ping(ctx)
}

// PGBinDir returns the directory holding initdb and pg_ctl, or "".
func PGBinDir() string {
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if _, err := exec.LookPath("initdb"); err == nil {
			return filepath.Dir(p)
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d
		}
	}
	return ""
}

// Cluster is a throwaway PostgreSQL cluster run with pg_ctl.
type Cluster struct {
	Dir  string
	Port int
	// Options are extra server settings (-c name=value) used by Start.
	Options []string
	bin     string
}

// URL returns the cluster's connection URL for database postgres.
func (c *Cluster) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.Port)
}

// NewCluster initialises a cluster in a new temporary directory on a free
// port (not started).
func NewCluster() (*Cluster, error) {
	bin := PGBinDir()
	if bin == "" {
		return nil, fmt.Errorf("initdb/pg_ctl not found")
	}
	dir, err := os.MkdirTemp("", "artifactstore-pg-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, Port: FreePort(), bin: bin}
	cmd := exec.Command(filepath.Join(bin, "initdb"), "-D", filepath.Join(dir, "data"), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
	if os.Geteuid() == 0 {
		// PostgreSQL refuses to run as root: hand the directory to the postgres user.
		if err := exec.Command("chown", "-R", "postgres", dir).Run(); err != nil {
			return nil, fmt.Errorf("chown: %w", err)
		}
		cmd = exec.Command("runuser", append([]string{"-u", "postgres", "--"}, cmd.Args...)...)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %v: %s", err, out)
	}
	return c, nil
}

// WriteFile writes a file into the cluster's directory, readable only by
// the server's user, and returns its path.
func (c *Cluster) WriteFile(name string, data []byte) (string, error) {
	path := filepath.Join(c.Dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return "", err
	}
	if os.Geteuid() == 0 {
		if err := exec.Command("chown", "postgres", path).Run(); err != nil {
			return "", fmt.Errorf("chown: %w", err)
		}
	}
	return path, nil
}

func (c *Cluster) pgctl(args ...string) error {
	cmd := exec.Command(filepath.Join(c.bin, "pg_ctl"), args...)
	if os.Geteuid() == 0 {
		cmd = exec.Command("runuser", append([]string{"-u", "postgres", "--"}, cmd.Args...)...)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl %s: %v: %s", args[0], err, out)
	}
	return nil
}

// Start starts the cluster and waits until it accepts connections.
func (c *Cluster) Start() error {
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300", c.Port, c.Dir)
	for _, o := range c.Options {
		opts += " -c " + o
	}
	return c.pgctl("start", "-w", "-D", filepath.Join(c.Dir, "data"), "-l", filepath.Join(c.Dir, "log"), "-o", opts)
}

// Stop stops the cluster (fast shutdown).
func (c *Cluster) Stop() error {
	return c.pgctl("stop", "-w", "-m", "fast", "-D", filepath.Join(c.Dir, "data"))
}

// Remove stops the cluster if running and deletes its directory.
func (c *Cluster) Remove() {
	_ = c.Stop()
	os.RemoveAll(c.Dir)
}

func startCluster() (string, error) {
	c, err := NewCluster()
	if err != nil {
		return "", fmt.Errorf("127.0.0.1:5432 does not answer and no throwaway cluster could be made: %w", err)
	}
	if err := c.Start(); err != nil {
		c.Remove()
		return "", err
	}
	pgCleanup = c.Remove
	return c.URL(), nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. It
// is chosen below the kernel's ephemeral port range, from which outgoing
// connections take their local ports: a port from inside it (what
// listening on port 0 gives) can be taken by any connection made before
// the server binds it — or before a killed server restarts on it — and a
// test then fails with "address already in use". A port is not handed out
// twice by one process.
func FreePort() int {
	portsMu.Lock()
	defer portsMu.Unlock()
	const base = 10000
	if lo := ephemeralLow(); lo-base >= 1000 {
		for range 200 {
			p := base + mrand.IntN(lo-base)
			if portsGiven[p] {
				continue
			}
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				continue
			}
			_ = l.Close()
			portsGiven[p] = true
			return p
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// ephemeralLow returns the first port of the kernel's ephemeral range
// (32768 when it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	var lo, hi int
	if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil || lo <= 0 {
		return 32768
	}
	return lo
}

// Name returns a unique lower-case identifier with the given prefix, usable
// as a schema, stream or consumer name.
func Name(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + "_" + hex.EncodeToString(b)
}

// Schema creates a fresh PostgreSQL schema for t, dropped at cleanup, and
// returns its name and the server URL.
func Schema(t testing.TB) (url, schema string) {
	t.Helper()
	url = PostgresURL(t)
	schema = Name("t")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Logf("testenv: dropping schema %s: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE"); err != nil {
			t.Logf("testenv: dropping schema %s: %v", schema, err)
		}
	})
	return url, schema
}

// Logger returns a logger that writes to t's log.
func Logger(t testing.TB) *zap.Logger { return zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)) }

// Postgres returns a migrated PostgreSQL store in a schema of its own.
func Postgres(t testing.TB) *postgres.DB {
	t.Helper()
	url, schema := Schema(t)
	return OpenPostgres(t, url, schema)
}

// OpenPostgres opens and migrates a PostgreSQL store on url/schema, closed
// at cleanup.
func OpenPostgres(t testing.TB, url, schema string) *postgres.DB {
	t.Helper()
	return OpenPostgresConfig(t, postgres.Config{URL: url, Schema: schema})
}

// OpenPostgresConfig is OpenPostgres with a configuration of the caller's
// (its logger is the test's).
func OpenPostgresConfig(t testing.TB, cfg postgres.Config) *postgres.DB {
	t.Helper()
	ctx := context.Background()
	cfg.Logger = Logger(t)
	db, err := postgres.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("testenv: opening postgres: %v", err)
	}
	t.Cleanup(db.Close)
	remember(t, db, pgPlace{cfg.URL, cfg.Schema})
	if _, err := db.Migrate(ctx); err != nil {
		t.Fatalf("testenv: migrating: %v", err)
	}
	return db
}

// SQLite returns a migrated SQLite store on a temp file.
func SQLite(t testing.TB) *sqlite.DB {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "log.db")
	db, err := sqlite.Open(ctx, sqlite.Config{Path: path, Logger: Logger(t)})
	if err != nil {
		t.Fatalf("testenv: opening sqlite: %v", err)
	}
	t.Cleanup(db.Close)
	remember(t, db, path)
	if _, err := db.Migrate(ctx); err != nil {
		t.Fatalf("testenv: migrating: %v", err)
	}
	return db
}

// NATSServer is an in-process nats-server with JetStream.
type NATSServer struct {
	t    testing.TB
	opts server.Options
	mu   sync.Mutex
	srv  *server.Server
}

// NATS starts an in-process nats-server with JetStream on a random
// 127.0.0.1 port, its store in a temp dir; it is shut down at cleanup.
func NATS(t testing.TB) *NATSServer {
	t.Helper()
	return NATSWith(t, nil)
}

// NATSWith is NATS with mutate (when not nil) applied to the server's
// options before it starts: users, permissions, limits.
func NATSWith(t testing.TB, mutate func(*server.Options)) *NATSServer {
	t.Helper()
	opts := server.Options{
		Host:       "127.0.0.1",
		Port:       FreePort(),
		JetStream:  true,
		StoreDir:   t.TempDir(),
		NoLog:      true,
		NoSigs:     true,
		MaxPayload: 1 << 20,
	}
	if mutate != nil {
		mutate(&opts)
	}
	s := &NATSServer{t: t, opts: opts}
	s.Start()
	t.Cleanup(s.Shutdown)
	return s
}

// Start (re)starts the server on the same port and store directory.
func (s *NATSServer) Start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	opts := s.opts
	srv, err := server.NewServer(&opts)
	if err != nil {
		s.t.Fatalf("testenv: nats-server: %v", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		s.t.Fatalf("testenv: nats-server did not start")
	}
	s.srv = srv
}

// Shutdown stops the server (if running) and waits for it.
func (s *NATSServer) Shutdown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		s.srv.Shutdown()
		s.srv.WaitForShutdown()
		s.srv = nil
	}
}

// Restart stops and starts the server, keeping its port and JetStream data.
func (s *NATSServer) Restart() {
	s.Shutdown()
	s.Start()
}

// Reload applies mutate to the server's options and reloads the running
// server with them, as a config reload does: changed users and permissions
// apply to connected clients in place, their connections stay open.
func (s *NATSServer) Reload(mutate func(*server.Options)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	mutate(&s.opts)
	if s.srv == nil {
		return nil
	}
	opts := s.opts
	return s.srv.ReloadOptions(&opts)
}

// URL returns the client URL.
func (s *NATSServer) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.opts.Port) }

// Connect returns a client connection (reconnecting forever), closed at
// cleanup; opts are added to the defaults (credentials, handlers).
func (s *NATSServer) Connect(t testing.TB, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.URL(), append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatalf("testenv: connecting to nats: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// JetStream returns a JetStream context on a new connection made with opts.
func (s *NATSServer) JetStream(t testing.TB, opts ...nats.Option) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(s.Connect(t, opts...))
	if err != nil {
		t.Fatalf("testenv: jetstream: %v", err)
	}
	return js
}

// Eventually polls cond every 10ms until it is true or timeout passes, then
// fails t with msg. It awaits a condition; it does not sleep for a fixed time.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("testenv: timed out after %s waiting for: %s", timeout, fmt.Sprintf(msg, args...))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var fqNameRe = regexp.MustCompile(`fqName: "([^"]+)"`)

// RequireMetricDefined fails the test unless one of cs describes a metric
// named name: a test that reads a misspelt metric name must fail, not read
// zero.
func RequireMetricDefined(t testing.TB, name string, cs ...prometheus.Collector) {
	t.Helper()
	var names []string
	for _, c := range cs {
		ch := make(chan *prometheus.Desc, 16)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			if m := fqNameRe.FindStringSubmatch(d.String()); m != nil {
				names = append(names, m[1])
			}
		}
	}
	if !slices.Contains(names, name) {
		t.Fatalf("metric %q is not defined; defined: %v", name, names)
	}
}
