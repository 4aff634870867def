package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
)

// proc is a long-running artifactstore process whose HTTP address is read
// from its own log (it is not told one).
type proc struct {
	name   string
	cmd    *exec.Cmd
	output *syncBuffer
	done   chan struct{}
}

// startProc runs `artifactstore <args>` with exactly env
// (no inherited ARTIFACTSTORE_* variables); it is stopped with SIGTERM at
// cleanup.
func startProc(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{name: args[len(args)-1], output: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(binary, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ARTIFACTSTORE_") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	p.cmd.Env = append(p.cmd.Env, env...)
	p.cmd.Stdout, p.cmd.Stderr = p.output, p.output
	require.NoError(t, p.cmd.Start())
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s output:\n%s", p.name, p.output)
		}
		select {
		case <-p.done:
			return
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// logLines returns the process's JSON log lines whose msg is msg.
func (p *proc) logLines(msg string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(p.output.String()))
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// httpAddr waits for the line the ops server logs when it serves and
// returns its address; the test fails if the process exits first.
func (p *proc) httpAddr(t *testing.T) string {
	t.Helper()
	var addr string
	testenv.Eventually(t, time.Minute, func() bool {
		if p.exited() {
			t.Fatalf("%s exited (code %d) before serving HTTP:\n%s", p.name, p.cmd.ProcessState.ExitCode(), p.output)
		}
		if l := p.logLines("serving /metrics, /healthz and /readyz"); len(l) > 0 {
			addr, _ = l[0]["addr"].(string)
			return true
		}
		return false
	}, "%s to serve HTTP; output:\n%s", p.name, p.output)
	return addr
}

func httpBody(t *testing.T, addr, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

func httpStatus(addr, path string) int {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestReadmeSequenceOnOneHost runs the README's "Running against
// PostgreSQL and a NATS cluster" sequence as written (no --http-listen) on
// one host, with two of each service: every process must come up and serve
// /healthz and /readyz, each on its subcommand's default address or, when
// that is taken, on a free port it names in its log.
func TestReadmeSequenceOnOneHost(t *testing.T) {
	t.Parallel()
	dbURL := testenv.Database(t)
	natsURL := testenv.NATS(t).URL()
	env := []string{"ARTIFACTSTORE_DATABASE_URL=" + dbURL, "ARTIFACTSTORE_NATS_URL=" + natsURL}
	r := runBinary(t, time.Minute, env, "migrate", "up")
	require.Equal(t, 0, r.code, "migrate up: %s", r.stderr)

	defaults := map[string]string{"ingest": defaultIngestHTTP, "relay": defaultRelayHTTP, "projector": defaultProjectorHTTP}
	var procs []*proc
	for _, sub := range []string{"ingest", "ingest", "relay", "relay", "projector", "projector"} {
		procs = append(procs, startProc(t, env, "--log-format", "json", sub))
	}
	seen := map[string]string{}
	fellBack := map[string]int{}
	for _, p := range procs {
		addr := p.httpAddr(t)
		require.NotContains(t, seen, addr, "%s and %s serve on one address", seen[addr], p.name)
		seen[addr] = p.name
		if addr == defaults[p.name] {
			continue
		}
		fellBack[p.name]++
		lines := p.logLines("default HTTP address in use; serving on a free port")
		require.Len(t, lines, 1, "%s serves on %s, not its default %s, without saying so:\n%s", p.name, addr, defaults[p.name], p.output)
		require.Equal(t, addr, lines[0]["addr"])
		require.Equal(t, defaults[p.name], lines[0]["default"])
	}
	for sub := range defaults {
		require.GreaterOrEqual(t, fellBack[sub], 1, "two %s processes cannot both have the default address", sub)
	}
	for addr, name := range seen {
		testenv.Eventually(t, time.Minute, func() bool {
			return httpStatus(addr, "/healthz") == http.StatusOK && httpStatus(addr, "/readyz") == http.StatusOK
		}, "%s on %s to be healthy and ready", name, addr)
		// Readiness includes the service's own check (the relay's role,
		// the projector's leases), liveness the status page's watchdog.
		require.Contains(t, httpBody(t, addr, "/readyz"), `{"name":"`+name+`","ok":true}`)
		require.Contains(t, httpBody(t, addr, "/healthz?verbose"), "[+]status-page ok")
	}
	for _, p := range procs {
		require.False(t, p.exited(), "%s exited:\n%s", p.name, p.output)
	}

	// An address given explicitly is never replaced: taken, it fails clearly.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	for _, args := range [][]string{{"ingest", "--http-listen", l.Addr().String()}, {"relay"}} {
		runEnv := env
		if len(args) == 1 {
			runEnv = append(env[:len(env):len(env)], "ARTIFACTSTORE_HTTP_LISTEN="+l.Addr().String())
		}
		r := runBinary(t, time.Minute, runEnv, args...)
		require.NotEqual(t, 0, r.code, "%v", args)
		require.Contains(t, r.stderr, l.Addr().String()+" is already in use", "%v", args)
		require.Contains(t, r.stderr, "--http-listen", "%v", args)
	}
}

// TestServiceStartFailureIsAnError: a service that binds its HTTP address
// and then cannot reach NATS exits 1 with the reason (it once panicked
// releasing the listener).
func TestServiceStartFailureIsAnError(t *testing.T) {
	t.Parallel()
	env := []string{"ARTIFACTSTORE_NATS_URL=nats://127.0.0.1:" + strconv.Itoa(testenv.FreePort()),
		"ARTIFACTSTORE_DATABASE_URL=" + filepath.Join(t.TempDir(), "x.db")}
	r := runBinary(t, time.Minute, env, "ingest", "--http-listen", "127.0.0.1:0")
	require.Equal(t, 1, r.code, r.stderr)
	require.Contains(t, r.stderr, "cannot reach NATS")
	require.NotContains(t, r.stderr, "panic")
}
