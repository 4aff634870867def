package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store/postgres"
)

// proc is one supervised OS process: an artifactstore service or a
// nats-server. Its stderr and stdout go to a log file kept across restarts.
type proc struct {
	name    string
	path    string
	args    []string
	env     []string
	logPath string
	// health is polled by waitReady ("" means: the process is running).
	health string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	want    bool // the supervisor keeps it running
	paused  bool // SIGSTOPped
	starts  int
	crashes int // exits nobody asked for
	ours    bool
}

func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.startLocked()
}

func (p *proc) startLocked() error {
	if p.cmd != nil && !isDone(p.done) {
		return nil
	}
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "=== start %d at %s\n", p.starts+1, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.path, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = f, f
	// Pdeathsig: a test binary that dies (a -timeout panic) takes its
	// processes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("starting %s: %w", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.want, p.paused, p.ours = cmd, done, true, false, false
	p.starts++
	go func() {
		_ = cmd.Wait()
		f.Close()
		p.mu.Lock()
		if p.cmd == cmd && !p.ours {
			p.crashes++
		}
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

func isDone(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// running reports whether the process is alive (possibly paused).
func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil && !isDone(p.done)
}

// signal sends sig to the running process (and marks the exit as ours for
// SIGKILL/SIGTERM).
func (p *proc) signal(sig syscall.Signal) (chan struct{}, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || isDone(p.done) {
		return p.done, false
	}
	if sig == syscall.SIGKILL || sig == syscall.SIGTERM {
		p.ours = true
		if p.paused {
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
			p.paused = false
		}
	}
	_ = p.cmd.Process.Signal(sig)
	return p.done, true
}

// kill takes the process out of supervision and SIGKILLs it, waiting (at
// most 10s) for it to exit.
func (p *proc) kill() error {
	p.setWant(false)
	done, ok := p.signal(syscall.SIGKILL)
	if !ok {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s did not exit within 10s of SIGKILL", p.name)
	}
}

// stop takes the process out of supervision and SIGTERMs it, waiting (at
// most timeout) for a clean exit, then SIGKILLs it.
func (p *proc) stop(timeout time.Duration) error {
	p.setWant(false)
	done, ok := p.signal(syscall.SIGTERM)
	if !ok {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
	}
	return p.kill()
}

// pause SIGSTOPs the process; resume SIGCONTs it.
func (p *proc) pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !isDone(p.done) {
		_ = p.cmd.Process.Signal(syscall.SIGSTOP)
		p.paused = true
	}
}

func (p *proc) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && p.paused {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		p.paused = false
	}
}

func (p *proc) setWant(w bool) {
	p.mu.Lock()
	p.want = w
	p.mu.Unlock()
}

// supervise restarts the process if it is wanted and has exited.
func (p *proc) supervise() (restarted bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.want || (p.cmd != nil && !isDone(p.done)) {
		return false, nil
	}
	return true, p.startLocked()
}

// waitReady awaits the process's health URL (or that it runs), bounded.
func (p *proc) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: time.Second}
	for {
		if p.running() {
			if p.health == "" {
				return nil
			}
			resp, err := client.Get(p.health)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready within %s; log tail:\n%s", p.name, timeout, p.tail(2000))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tail returns the last n bytes of the process's log.
func (p *proc) tail(n int) string {
	b, _ := os.ReadFile(p.logPath)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// notable returns the last n warn/error lines of a service's JSON log,
// leaving out the NATS client's disconnect/reconnect chatter, and every
// start marker.
func (p *proc) notable(n int) string {
	b, _ := os.ReadFile(p.logPath)
	var keep []string
	for _, l := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(l, "=== start"):
			keep = append(keep, l)
		case strings.Contains(l, `"logger":"nats"`):
		case strings.Contains(l, `"level":"warn"`) || strings.Contains(l, `"level":"error"`):
			if i := strings.Index(l, `,"stacktrace"`); i > 0 {
				l = l[:i] + "}"
			}
			keep = append(keep, l)
		}
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return strings.Join(keep, "\n")
}

// natsNode is one nats-server process of the environment.
type natsNode struct {
	*proc
	serverName string
	port       int
}

func (n *natsNode) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

// envOptions configures an environment.
type envOptions struct {
	// natsNodes is 1 (a single server) or 3 (a JetStream cluster, R3 stream).
	natsNodes  int
	ingest     int
	relays     int
	projectors int
	// dupWindow is the relay's --duplicate-window.
	dupWindow string
	// leaseTTL is the projectors' --lease-ttl ("": the binary's default, 2s).
	leaseTTL string
	// natsSyncAlways makes JetStream sync every write to disk
	// (sync_interval: always, as the shipped deployment runs it).
	natsSyncAlways bool
	// publishBatch is the relays' --publish-batch (0: per event).
	publishBatch int
	// allowStreamDeletes runs the relays with --allow-stream-deletes, for
	// tests that delete stream messages on purpose.
	allowStreamDeletes bool
	// binary overrides the artifactstore binary.
	binary   string
	logLevel string
}

func (o *envOptions) defaults() {
	if o.natsNodes == 0 {
		o.natsNodes = 1
	}
	if o.ingest == 0 {
		o.ingest = 2
	}
	if o.relays == 0 {
		o.relays = 2
	}
	if o.projectors == 0 {
		o.projectors = 3
	}
	if o.dupWindow == "" {
		o.dupWindow = "1s"
	}
	if o.binary == "" {
		o.binary = binary
	}
	if o.logLevel == "" {
		o.logLevel = "info"
	}
}

// pgServer is the suite's own PostgreSQL cluster (so it can be restarted).
type pgServer struct {
	c *testenv.Cluster
}

// newPG starts a throwaway cluster (fsync off, as every test cluster runs;
// options such as "fsync=on" are added after and take precedence).
func newPG(t testing.TB, options ...string) *pgServer {
	t.Helper()
	c, err := testenv.NewCluster()
	if err != nil {
		t.Fatalf("e2e: PostgreSQL cluster: %v", err)
	}
	c.Options = options
	t.Cleanup(c.Remove)
	if err := c.Start(); err != nil {
		t.Fatalf("e2e: starting PostgreSQL: %v", err)
	}
	return &pgServer{c: c}
}

// database creates a fresh database and returns its URL.
func (s *pgServer) database(t testing.TB, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.c.URL())
	if err != nil {
		t.Fatalf("e2e: connecting to PostgreSQL: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("e2e: creating database %s: %v", name, err)
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.c.Port, name)
}

// restart stops PostgreSQL (fast shutdown: every session is cut) and
// starts it again after down.
func (s *pgServer) restart(down time.Duration) error {
	if err := s.c.Stop(); err != nil {
		return err
	}
	time.Sleep(down) // fault timing: how long the database is away
	return s.c.Start()
}

// env is one running deployment: PostgreSQL database, NATS, services.
type env struct {
	t    testing.TB
	opts envOptions
	dir  string
	pg   *pgServer

	dbURL   string
	db      *postgres.DB
	nats    []*natsNode
	natsURL string
	// parts is the log's partition count (recorded at migration).
	parts int
	env   []string

	ingest     []*proc
	relays     []*proc
	projectors []*proc

	// procsMu guards the process lists (a projector may join while the
	// supervisor walks them).
	procsMu sync.Mutex

	stopSupervisor context.CancelFunc
	supervisorDone chan struct{}
	restartsMu     sync.Mutex
	restarts       map[string]int
}

// services returns every artifactstore process.
func (e *env) services() []*proc {
	e.procsMu.Lock()
	defer e.procsMu.Unlock()
	var ps []*proc
	ps = append(ps, e.ingest...)
	ps = append(ps, e.relays...)
	return append(ps, e.projectors...)
}

func (e *env) all() []*proc {
	ps := e.services()
	for _, n := range e.nats {
		ps = append(ps, n.proc)
	}
	return ps
}

// startEnv starts NATS, migrates a fresh database on pg and starts the
// services; everything is killed at cleanup.
func startEnv(t testing.TB, pg *pgServer, dbName string, opts envOptions) *env {
	t.Helper()
	opts.defaults()
	e := &env{t: t, opts: opts, dir: t.TempDir(), pg: pg, restarts: map[string]int{}}
	t.Cleanup(e.teardown)

	e.dbURL = pg.database(t, dbName)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := postgres.Open(ctx, postgres.Config{URL: e.dbURL})
	if err != nil {
		t.Fatalf("e2e: opening the database: %v", err)
	}
	t.Cleanup(db.Close)
	if _, err := db.Migrate(ctx); err != nil {
		t.Fatalf("e2e: migrating: %v", err)
	}
	e.db = db

	if e.parts, err = db.Partitions(ctx); err != nil {
		t.Fatalf("e2e: reading the partition count: %v", err)
	}

	e.startNATS(t)
	e.env = []string{
		"ARTIFACTSTORE_DATABASE_URL=" + e.dbURL,
		"ARTIFACTSTORE_NATS_URL=" + e.natsURL,
	}
	for i := range opts.ingest {
		e.ingest = append(e.ingest, e.service("ingest", i+1))
	}
	relayArgs := []string{"--replicas", fmt.Sprint(opts.natsNodes), "--duplicate-window", opts.dupWindow,
		"--publish-batch", fmt.Sprint(opts.publishBatch)}
	if opts.allowStreamDeletes {
		relayArgs = append(relayArgs, "--allow-stream-deletes")
	}
	for i := range opts.relays {
		e.relays = append(e.relays, e.service("relay", i+1, relayArgs...))
	}
	for i := range opts.projectors {
		e.projectors = append(e.projectors, e.newProjector(i+1))
	}
	// Relays first (they create the stream), then projectors, then ingest.
	for _, group := range [][]*proc{e.relays, e.projectors, e.ingest} {
		for _, p := range group {
			if err := p.start(); err != nil {
				t.Fatalf("e2e: %v", err)
			}
		}
		for _, p := range group {
			if err := p.waitReady(60 * time.Second); err != nil {
				t.Fatalf("e2e: %v", err)
			}
		}
	}
	e.awaitStream(t, 60*time.Second)

	sctx, scancel := context.WithCancel(context.Background())
	e.stopSupervisor, e.supervisorDone = scancel, make(chan struct{})
	go e.supervise(sctx)
	return e
}

// service returns the (not started) process of an artifactstore service.
func (e *env) service(kind string, i int, extra ...string) *proc {
	port := testenv.FreePort()
	name := fmt.Sprintf("%s-%d", kind, i)
	args := append([]string{"--log-format", "json", "--log-level", e.opts.logLevel, kind,
		"--http-listen", fmt.Sprintf("127.0.0.1:%d", port)}, extra...)
	return &proc{name: name, path: e.opts.binary, args: args, env: e.env,
		logPath: filepath.Join(e.dir, name+".log"), health: fmt.Sprintf("http://127.0.0.1:%d/readyz", port)}
}

// newProjector returns projector i (not started). --partitions states the
// log's count, so a projector started against another log refuses to run.
func (e *env) newProjector(i int) *proc {
	args := []string{"--partitions", fmt.Sprint(e.parts), "--worker-id", fmt.Sprintf("projector-%d", i)}
	if e.opts.leaseTTL != "" {
		args = append(args, "--lease-ttl", e.opts.leaseTTL)
	}
	return e.service("projector", i, args...)
}

// joinProjector adds one more projector to the deployment, not started
// (the caller starts it and times what follows).
func (e *env) joinProjector() *proc {
	e.procsMu.Lock()
	defer e.procsMu.Unlock()
	p := e.newProjector(len(e.projectors) + 1)
	e.projectors = append(e.projectors, p)
	return p
}

// metric returns the sum of a service's /metrics samples named name
// whose labels contain every one of labels ("key=\"value\"" pieces).
// An unknown metric is an error, never zero.
func (p *proc) metric(name string, labels ...string) (float64, error) {
	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(strings.TrimSuffix(p.health, "/readyz") + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	var sum float64
	found := false
lines:
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(line, l) {
				continue lines
			}
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %q: %w", p.name, line, err)
		}
		sum, found = sum+v, true
	}
	if !found {
		return 0, fmt.Errorf("%s: no metric %s%v", p.name, name, labels)
	}
	return sum, nil
}

// startNATS starts one nats-server or a 3-node cluster.
func (e *env) startNATS(t testing.TB) {
	t.Helper()
	n := e.opts.natsNodes
	ports, routes, mon := make([]int, n), make([]int, n), make([]int, n)
	for i := range n {
		ports[i], routes[i], mon[i] = testenv.FreePort(), testenv.FreePort(), testenv.FreePort()
	}
	var urls []string
	for i := range n {
		name := fmt.Sprintf("nats-%d", i+1)
		var conf bytes.Buffer
		fmt.Fprintf(&conf, "server_name: %s\nlisten: 127.0.0.1:%d\nhttp: 127.0.0.1:%d\nmax_payload: 1MB\n", name, ports[i], mon[i])
		sync := ""
		if e.opts.natsSyncAlways {
			sync = "  sync_interval: always\n"
		}
		fmt.Fprintf(&conf, "jetstream {\n  store_dir: %q\n  max_memory_store: 256MB\n  max_file_store: 8GB\n%s}\n",
			filepath.Join(e.dir, name+"-store"), sync)
		if n > 1 {
			var rs []string
			for j := range n {
				rs = append(rs, fmt.Sprintf("nats-route://127.0.0.1:%d", routes[j]))
			}
			fmt.Fprintf(&conf, "cluster {\n  name: e2e\n  listen: 127.0.0.1:%d\n  routes: [%s]\n}\n", routes[i], strings.Join(rs, ", "))
		}
		path := filepath.Join(e.dir, name+".conf")
		if err := os.WriteFile(path, conf.Bytes(), 0o644); err != nil {
			t.Fatalf("e2e: %v", err)
		}
		node := &natsNode{proc: &proc{name: name, path: natsBinary, args: []string{"-c", path},
			logPath: filepath.Join(e.dir, name+".log"),
			health:  fmt.Sprintf("http://127.0.0.1:%d/healthz", mon[i])}, serverName: name, port: ports[i]}
		e.nats = append(e.nats, node)
		urls = append(urls, node.url())
	}
	e.natsURL = strings.Join(urls, ",")
	for _, node := range e.nats {
		if err := node.start(); err != nil {
			t.Fatalf("e2e: %v", err)
		}
	}
	for _, node := range e.nats {
		if err := node.waitReady(60 * time.Second); err != nil {
			t.Fatalf("e2e: %v", err)
		}
	}
}

// awaitStream waits until the relay has created the events stream.
func (e *env) awaitStream(t testing.TB, timeout time.Duration) {
	t.Helper()
	nc, js := e.connect(t)
	defer nc.Close()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := js.Stream(ctx, "ARTIFACTSTORE_EVENTS")
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("e2e: the events stream was not created within %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// connect returns a new NATS connection (reconnecting for ever) and its
// JetStream context; the caller closes it.
func (e *env) connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(e.natsURL, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond),
		nats.Timeout(5*time.Second), nats.ReconnectBufSize(64<<20))
	if err != nil {
		t.Fatalf("e2e: connecting to NATS: %v", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("e2e: jetstream: %v", err)
	}
	return nc, js
}

// supervise restarts wanted processes that exited, like an orchestrator.
func (e *env) supervise(ctx context.Context) {
	defer close(e.supervisorDone)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, p := range e.all() {
			restarted, err := p.supervise()
			if err != nil {
				e.t.Logf("e2e: supervisor: %v", err)
			}
			if restarted {
				e.restartsMu.Lock()
				e.restarts[p.name]++
				e.restartsMu.Unlock()
			}
		}
	}
}

// healAll resumes paused processes and hands every process back to the
// supervisor, then waits until all of them are ready.
func (e *env) healAll(timeout time.Duration) error {
	for _, p := range e.all() {
		p.resume()
		p.setWant(true)
	}
	for _, n := range e.nats {
		if err := n.waitReady(timeout); err != nil {
			return err
		}
	}
	for _, p := range e.services() {
		if err := p.waitReady(timeout); err != nil {
			return err
		}
	}
	return nil
}

// crashes sums the exits of services nobody asked for.
func (e *env) crashes() map[string]int {
	out := map[string]int{}
	for _, p := range e.all() {
		p.mu.Lock()
		if p.crashes > 0 {
			out[p.name] = p.crashes
		}
		p.mu.Unlock()
	}
	return out
}

func (e *env) teardown() {
	if e.stopSupervisor != nil {
		e.stopSupervisor()
		<-e.supervisorDone
	}
	for _, p := range e.all() {
		if err := p.kill(); err != nil {
			e.t.Logf("e2e: %v", err)
		}
	}
	if e.t.Failed() {
		for _, p := range e.all() {
			e.t.Logf("--- %s log tail:\n%s", p.name, p.tail(3000))
		}
		for _, p := range e.services() {
			e.t.Logf("--- %s warnings and errors (without NATS reconnects):\n%s", p.name, p.notable(30))
		}
	}
}

// leader returns the nats node leading the events stream (cluster only).
func (e *env) leader(ctx context.Context, js jetstream.JetStream) (*natsNode, error) {
	s, err := js.Stream(ctx, "ARTIFACTSTORE_EVENTS")
	if err != nil {
		return nil, err
	}
	info := s.CachedInfo()
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return nil, errors.New("the stream has no leader")
	}
	for _, n := range e.nats {
		if n.serverName == info.Cluster.Leader {
			return n, nil
		}
	}
	return nil, fmt.Errorf("unknown leader %q", info.Cluster.Leader)
}
