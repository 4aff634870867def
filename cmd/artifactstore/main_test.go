package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/internal/testenv"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "artifactstore-bin-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "artifactstore")
	out, err := exec.Command("go", "build", "-race", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building the binary: %v\n%s", err, out)
		os.Exit(1)
	}
	code := testenv.Main(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is one finished CLI run.
type result struct {
	stdout, stderr string
	code           int
}

// runCLI runs the binary to completion (at most a minute).
func runCLI(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running %v: %v", args, err)
	}
	return result{stdout.String(), stderr.String(), code}
}

// devProcess is a running `artifactstore dev`.
type devProcess struct {
	cmd               *exec.Cmd
	natsURL, httpAddr string
	stderr            *bytes.Buffer
	done              chan error
}

func startDev(t *testing.T, dataDir string, natsPort, httpPort int, extra ...string) *devProcess {
	t.Helper()
	p := &devProcess{
		natsURL:  fmt.Sprintf("nats://127.0.0.1:%d", natsPort),
		httpAddr: fmt.Sprintf("127.0.0.1:%d", httpPort),
		stderr:   &bytes.Buffer{},
		done:     make(chan error, 1),
	}
	args := append([]string{"--log-format", "json", "dev", "--data-dir", dataDir,
		"--nats-listen", fmt.Sprintf("127.0.0.1:%d", natsPort), "--http-listen", p.httpAddr}, extra...)
	p.cmd = exec.Command(binary, args...)
	p.cmd.Stderr = p.stderr
	require.NoError(t, p.cmd.Start())
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	testenv.Eventually(t, 60*time.Second, func() bool {
		resp, err := http.Get("http://" + p.httpAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "dev to become ready; stderr:\n%s", p.stderr)
	return p
}

// stop sends SIGTERM and returns the exit code.
func (p *devProcess) stop(t *testing.T) int {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("dev did not stop within 30s of SIGTERM; stderr:\n%s", p.stderr)
	}
	return p.cmd.ProcessState.ExitCode()
}

func streamCount(t *testing.T, natsURL string) (uint64, uint64) {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	s, err := js.Stream(context.Background(), "ARTIFACTSTORE_EVENTS")
	require.NoError(t, err)
	info, err := s.Info(context.Background())
	require.NoError(t, err)
	return info.State.Msgs, info.State.LastSeq
}

func TestDevProcessEndToEnd(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	natsPort, httpPort := testenv.FreePort(), testenv.FreePort()
	dev := startDev(t, dataDir, natsPort, httpPort)
	env := []string{"ARTIFACTSTORE_NATS_URL=" + dev.natsURL}

	r := runCLI(t, env, "package", "create", "--actor", "alice", "--name", "web", "--version", "1.0.0", "--json")
	require.Equal(t, 0, r.code, r.stderr)
	var created ingest.CommandReply
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &created))
	require.Equal(t, "v1.package.created", created.EventType)
	require.Equal(t, int64(1), created.Sequence)

	r = runCLI(t, env, "package", "create", "--actor", "alice", "--name", "web", "--version", "1.0.0")
	require.Equal(t, exitConflict, r.code)
	require.Contains(t, r.stderr, "conflict")
	require.NotContains(t, r.stderr, "goroutine", "no stack traces")

	digest := strings.Repeat("ab", 32)
	r = runCLI(t, env, "package", "finalize", created.PackageID, "--actor", "bob", "--manifest-digest", digest)
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "v1.package.finalized")

	r = runCLI(t, env, "package", "finalize", created.PackageID, "--actor", "bob", "--manifest-digest", "XYZ")
	require.Equal(t, exitInvalid, r.code)
	require.Contains(t, r.stderr, "invalid_argument")

	r = runCLI(t, env, "events", "tail", "--json", "--limit", "2")
	require.Equal(t, 0, r.code, r.stderr)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	require.Len(t, lines, 2)
	var ev tailedEvent
	require.NoError(t, json.Unmarshal([]byte(lines[1]), &ev))
	require.Equal(t, int64(2), ev.Sequence)
	require.Equal(t, "bob", ev.Actor)

	r = runCLI(t, env, "events", "tail", "--since", "1", "--limit", "1")
	require.Equal(t, 0, r.code, r.stderr)
	require.True(t, strings.HasPrefix(r.stdout, "2\t"), r.stdout)

	dbEnv := append(env, "ARTIFACTSTORE_DATABASE_URL="+filepath.Join(dataDir, "artifactstore.db"))
	var st statusReport
	testenv.Eventually(t, 30*time.Second, func() bool {
		r = runCLI(t, dbEnv, "status", "--json")
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &st) != nil {
			return false
		}
		return st.Relay != nil && st.Relay.Lag == 0 && st.Head == 2 && len(st.Projections) == 1 && st.Projections[0].Lag == 0
	}, "status to report zero lag at every stage: %s %s", r.stdout, r.stderr)
	require.Equal(t, 16, st.Partitions, "status shows the log's partition count")
	require.Equal(t, 16, st.Projections[0].LogPartitions)
	require.Len(t, st.Projections[0].Partitions, 16)
	for _, p := range st.Projections[0].Partitions {
		require.NotEmpty(t, p.Worker, "partition %d is leased by dev's projector", p.Partition)
	}
	r = runCLI(t, dbEnv, "status")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "partitions 16")

	// The view was updated by the projector running inside dev.
	r = runCLI(t, env, "package", "get", created.PackageID, "--json")
	require.Equal(t, 0, r.code, r.stderr)
	var view struct {
		Status         string `json:"status"`
		ManifestDigest string `json:"manifest_digest"`
		FinalizedBy    string `json:"finalized_by"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &view))
	require.Equal(t, "finalized", view.Status)
	require.Equal(t, digest, view.ManifestDigest)
	require.Equal(t, "bob", view.FinalizedBy)
	r = runCLI(t, env, "package", "get", created.PackageID)
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "finalized")
	r = runCLI(t, env, "package", "list", "--name", "web")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, created.PackageID)
	r = runCLI(t, env, "package", "get", "no-such-package")
	require.Equal(t, exitNotFound, r.code)
	require.Contains(t, r.stderr, "not_found")

	// replay --reset rebuilds the same views.
	r = runCLI(t, dbEnv, "replay", "--reset")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "2\n", r.stdout, "replay prints the highest sequence applied")

	require.Equal(t, 0, dev.stop(t), "a clean stop exits 0; stderr:\n%s", dev.stderr)

	// Restart on the same data: nothing is published again.
	dev = startDev(t, dataDir, natsPort, httpPort)
	r = runCLI(t, env, "package", "create", "--actor", "alice", "--name", "web", "--version", "2.0.0", "--command-id", "once", "--json")
	require.Equal(t, 0, r.code, r.stderr)
	// The command id reused for another command is refused with its own
	// exit code (and appends nothing: the stream count below).
	r = runCLI(t, env, "package", "create", "--actor", "alice", "--name", "web", "--version", "3.0.0", "--command-id", "once")
	require.Equal(t, exitReused, r.code, r.stderr)
	require.Contains(t, r.stderr, "command_id_reused")
	testenv.Eventually(t, 30*time.Second, func() bool {
		msgs, _ := streamCount(t, dev.natsURL)
		return msgs >= 3
	}, "the new event reaches the stream")
	msgs, last := streamCount(t, dev.natsURL)
	require.Equal(t, uint64(3), msgs, "3 events, 3 messages: nothing re-published after the restart")
	require.Equal(t, uint64(3), last)
	require.Equal(t, 0, dev.stop(t))
}

func TestDevRefusesBusyNATSPort(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	port := strings.TrimPrefix(srv.URL(), "nats://127.0.0.1:")
	r := runCLI(t, nil, "dev", "--data-dir", t.TempDir(), "--nats-listen", "127.0.0.1:"+port, "--http-listen", "")
	require.NotEqual(t, 0, r.code)
	require.Contains(t, r.stderr, "already in use")
	require.Contains(t, r.stderr, "--nats-listen")
}

func TestClientErrorsAreClear(t *testing.T) {
	t.Parallel()
	env := []string{fmt.Sprintf("ARTIFACTSTORE_NATS_URL=nats://127.0.0.1:%d", testenv.FreePort())}
	r := runCLI(t, env, "package", "get", "x")
	require.Equal(t, exitUnavailble, r.code)
	require.Contains(t, r.stderr, "cannot reach NATS")
	require.NotContains(t, r.stderr, "goroutine")

	srv := testenv.NATS(t) // a server with no artifactstore service
	r = runCLI(t, []string{"ARTIFACTSTORE_NATS_URL=" + srv.URL()}, "package", "list")
	require.Equal(t, exitUnavailble, r.code)
	require.Contains(t, r.stderr, "no artifactstore ingest service")
}

func TestRedactURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"postgres://u:secret@h:5432/db?sslmode=require": "postgres://u:xxxxx@h:5432/db?sslmode=require",
		"postgres://h/db?password=secret":               "postgres://h/db?password=xxxxx",
		"nats://user:pw@127.0.0.1:4222":                 "nats://user:xxxxx@127.0.0.1:4222",
		"./data/artifactstore.db":                       "./data/artifactstore.db",
		"postgres://u:PW@host:notaport/x":               "postgres://u:xxxxx@host:notaport/x",
		"postgres://host:bad/x?sslmode=a&password=PW":   "postgres://host:bad/x?sslmode=a&password=xxxxx",
		// NATS server lists: every URL's password.
		"nats://a:pw1@n1:4222,nats://b:pw2@n2:4222":         "nats://a:xxxxx@n1:4222,nats://b:xxxxx@n2:4222",
		"nats://n1:4222,nats://b:pw2@n2:4222":               "nats://n1:4222,nats://b:xxxxx@n2:4222",
		"nats://a:pw1@n1:4222, tls://b:pw2@n2:4222":         "nats://a:xxxxx@n1:4222, tls://b:xxxxx@n2:4222",
		"nats://a:pw1@n1:4222,nats://b:pw2@n2:bad,n3":       "nats://a:xxxxx@n1:4222,nats://b:xxxxx@n2:bad,n3",
		"nats://n1:4222,nats://n2:4222,nats://n3:4222":      "nats://n1:4222,nats://n2:4222,nats://n3:4222",
		"nats://a:p,w@n1:4222,nats://b:p,w2@n2:4222":        "nats://a:xxxxx@n1:4222,nats://b:xxxxx@n2:4222",
		"postgres://u:pw@h1:5432,h2:5432/db?sslmode=verify": "postgres://u:xxxxx@h1:5432,h2:5432/db?sslmode=verify",
	} {
		require.Equal(t, want, redactURL(in), in)
		for _, secret := range []string{"pw1", "pw2", "PW", "secret", "p,w"} {
			require.NotContains(t, redactURL(in), secret, in)
		}
	}
}

func TestSchemaOf(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"postgres://h/db?search_path=tenant_a":          "tenant_a",
		"postgres://h/db?search_path=a,public":          "",
		"postgres://h/db":                               "",
		"postgres://h/db?sslmode=disable&search_path=x": "x",
		// As PostgreSQL reads a search_path: unquoted names fold to lower
		// case, quoted ones are taken as they are.
		"postgres://h/db?search_path=Tenant_A":       "tenant_a",
		"postgres://h/db?search_path=%22Tenant_A%22": "Tenant_A",
	} {
		require.Equal(t, want, schemaOf(in), in)
	}
}

func TestNATSCredentials(t *testing.T) {
	t.Parallel()
	opts := &server.Options{Host: "127.0.0.1", Port: testenv.FreePort(), Username: "svc", Password: "s3cret-pw", NoLog: true, NoSigs: true}
	ns, err := server.NewServer(opts)
	require.NoError(t, err)
	go ns.Start()
	require.True(t, ns.ReadyForConnections(10*time.Second))
	t.Cleanup(ns.Shutdown)
	url := fmt.Sprintf("nats://127.0.0.1:%d", opts.Port)

	r := runCLI(t, []string{"ARTIFACTSTORE_NATS_URL=" + url, "ARTIFACTSTORE_NATS_USER=svc", "ARTIFACTSTORE_NATS_PASSWORD=wrong-pw"}, "package", "list")
	require.Equal(t, exitUnavailble, r.code)
	require.Contains(t, r.stderr, "authorization violation", "wrong credentials name the problem")
	require.NotContains(t, r.stderr, "wrong-pw")

	r = runCLI(t, []string{"ARTIFACTSTORE_NATS_URL=" + url, "ARTIFACTSTORE_NATS_USER=svc", "ARTIFACTSTORE_NATS_PASSWORD=s3cret-pw"}, "package", "list")
	require.Contains(t, r.stderr, "no artifactstore ingest service", "with the right credentials the client connects")

	r = runCLI(t, []string{"ARTIFACTSTORE_NATS_URL=nats://svc:s3cret-pw@127.0.0.1:1"}, "package", "list")
	require.NotContains(t, r.stderr, "s3cret-pw", "a password in the URL is never printed")
}

// TestGCPercent: without GOGC the binary collects at defaultGCPercent; a
// GOGC the operator set is left to the runtime.
func TestGCPercent(t *testing.T) {
	prev := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(prev) })
	if v, ok := os.LookupEnv("GOGC"); ok {
		t.Cleanup(func() { os.Setenv("GOGC", v) })
		os.Unsetenv("GOGC")
	}
	setGCPercent()
	if got := debug.SetGCPercent(100); got != defaultGCPercent {
		t.Fatalf("GC percent without GOGC: %d, want %d", got, defaultGCPercent)
	}
	t.Setenv("GOGC", "150")
	setGCPercent()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("GC percent with GOGC set: %d, want it untouched (100)", got)
	}
}

// TestDevBannerRedactsNATSPassword: dev on an external NATS given with a
// password prints the URL without it.
func TestDevBannerRedactsNATSPassword(t *testing.T) {
	t.Parallel()
	srv := testenv.NATS(t)
	authURL := strings.Replace(srv.URL(), "nats://", "nats://dev:s3cr3t-pw@", 1)
	dev := startDev(t, t.TempDir(), testenv.FreePort(), testenv.FreePort(), "--nats-url", authURL)
	require.Equal(t, 0, dev.stop(t))
	require.Contains(t, dev.stderr.String(), "artifactstore dev is running")
	require.Contains(t, dev.stderr.String(), redactURL(authURL))
	require.NotContains(t, dev.stderr.String(), "s3cr3t-pw")
}
