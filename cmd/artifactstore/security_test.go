package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/internal/testenv"
)

// deployUsers returns the example deployment's NATS users and their
// plain-text passwords as docker-compose.yml gives them to the services
// (the NATS config holds their bcrypt hashes): the tests log in exactly as
// the compose services do.
func deployUsers(t *testing.T) map[string]string {
	t.Helper()
	users := map[string]string{}
	for _, s := range loadCompose(t).Services {
		if u := s.Environment["ARTIFACTSTORE_NATS_USER"]; u != "" {
			users[u] = s.Environment["ARTIFACTSTORE_NATS_PASSWORD"]
		}
	}
	for _, u := range []string{"client", "ingest", "relay", "projector", "reader"} {
		require.NotEmpty(t, users[u], "docker-compose.yml gives user %s a password", u)
	}
	return users
}

// deployNATS starts an in-process nats-server from the example deployment
// config (deploy/nats/nats-1.conf, parsed by nats-server's own parser) as
// a single node: the listen address becomes a free 127.0.0.1 port, the
// JetStream store a temp dir, and the cluster block and monitoring port are
// dropped. Accounts, users, permissions and sync_interval stay as shipped.
func deployNATS(t *testing.T) string {
	t.Helper()
	opts, err := server.ProcessConfigFile("../../deploy/nats/nats-1.conf")
	require.NoError(t, err)
	opts.Host, opts.Port = "127.0.0.1", testenv.FreePort()
	opts.HTTPHost, opts.HTTPPort = "", 0
	opts.Cluster = server.ClusterOpts{}
	opts.Routes = nil
	opts.StoreDir = t.TempDir()
	opts.NoLog, opts.NoSigs = true, true
	return startNATSServer(t, opts)
}

func startNATSServer(t *testing.T, opts *server.Options) string {
	t.Helper()
	ns, err := server.NewServer(opts)
	require.NoError(t, err)
	go ns.Start()
	require.True(t, ns.ReadyForConnections(10*time.Second), "nats-server did not start")
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return fmt.Sprintf("nats://127.0.0.1:%d", opts.Port)
}

// pgSchemaURL creates a fresh schema and returns a database URL that uses
// it through search_path, as an operator's URL would.
func pgSchemaURL(t *testing.T) string {
	t.Helper()
	base, schema := testenv.Schema(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	require.NoError(t, err)
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "CREATE SCHEMA "+schema)
	require.NoError(t, err)
	u, err := url.Parse(base)
	require.NoError(t, err)
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// pgDatabaseURL creates a fresh database, dropped at cleanup, and returns
// its URL. Tests that run a relay use one: the relay's advisory lock is
// keyed by the schema the store was configured with, which a search_path
// in the URL does not set, so relays of different schemas in one database
// would share a single lock; advisory locks never cross databases.
func pgDatabaseURL(t *testing.T) string { return testenv.Database(t) }

// withPassword puts password into a postgres URL's user info.
func withPassword(t *testing.T, raw, password string) string {
	t.Helper()
	u, err := url.Parse(raw)
	require.NoError(t, err)
	u.User = url.UserPassword(u.User.Username(), password)
	return u.String()
}

func migrateUp(t *testing.T, dbURL string) {
	t.Helper()
	r := runBinary(t, time.Minute, []string{"ARTIFACTSTORE_DATABASE_URL=" + dbURL}, "migrate", "up")
	require.Equal(t, 0, r.code, "migrate up: %s", r.stderr)
}

// natsEnv is the environment a process uses to log in as user; ingest also
// gets the reply prefixes docker-compose.yml gives it.
func natsEnv(t *testing.T, natsURL, user string) []string {
	env := []string{"ARTIFACTSTORE_NATS_URL=" + natsURL, "ARTIFACTSTORE_NATS_USER=" + user,
		"ARTIFACTSTORE_NATS_PASSWORD=" + deployUsers(t)[user], "ARTIFACTSTORE_NATS_INBOX_PREFIX=" + inboxPrefix(user)}
	if user == "ingest" {
		env = append(env, "ARTIFACTSTORE_REPLY_PREFIXES="+deployIngestReplyPrefixes(t))
	}
	return env
}

// deployIngestReplyPrefixes returns the reply prefixes docker-compose.yml
// gives ingest.
func deployIngestReplyPrefixes(t *testing.T) string {
	t.Helper()
	for _, s := range loadCompose(t).Services {
		if s.Environment["ARTIFACTSTORE_NATS_USER"] == "ingest" {
			p := s.Environment["ARTIFACTSTORE_REPLY_PREFIXES"]
			require.NotEmpty(t, p, "docker-compose.yml gives ingest ARTIFACTSTORE_REPLY_PREFIXES")
			return p
		}
	}
	t.Fatal("docker-compose.yml has no ingest service")
	return ""
}

// inboxPrefix is the reply subject prefix user may subscribe to in the
// shipped NATS config.
func inboxPrefix(user string) string { return "_INBOX_" + user }

// syncBuffer is a bytes.Buffer safe to read while a process writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// service is a running artifactstore service process.
type service struct {
	name   string
	http   string // address of /metrics, /healthz, /readyz
	cmd    *exec.Cmd
	output *syncBuffer
	done   chan struct{}
}

// startService runs `artifactstore <args>` with env (and no inherited
// ARTIFACTSTORE_* variables), serving /readyz on a free port, and waits
// until it is ready. It is stopped with SIGTERM at cleanup.
func startService(t *testing.T, env []string, args ...string) *service {
	t.Helper()
	httpAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort())
	s := &service{name: args[0], http: httpAddr, output: &syncBuffer{}, done: make(chan struct{})}
	s.cmd = exec.Command(binary, append([]string{"--log-format", "json", "--log-level", "debug"}, args...)...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ARTIFACTSTORE_") {
			s.cmd.Env = append(s.cmd.Env, kv)
		}
	}
	s.cmd.Env = append(s.cmd.Env, env...)
	s.cmd.Env = append(s.cmd.Env, "ARTIFACTSTORE_HTTP_LISTEN="+httpAddr)
	s.cmd.Stdout, s.cmd.Stderr = s.output, s.output
	require.NoError(t, s.cmd.Start())
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s output:\n%s", s.name, s.output)
		}
		select {
		case <-s.done:
			return
		default:
		}
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(15 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.done
		}
	})
	testenv.Eventually(t, time.Minute, func() bool {
		select {
		case <-s.done:
			t.Fatalf("%s exited before it was ready (code %d):\n%s", s.name, s.cmd.ProcessState.ExitCode(), s.output)
		default:
		}
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "%s to become ready; output:\n%s", s.name, s.output)
	return s
}

// connectAs connects to NATS as a deployment user and records the server's
// asynchronous errors (permission violations arrive that way).
func connectAs(t *testing.T, natsURL, user string) (*nats.Conn, *asyncErrors) {
	t.Helper()
	errs := &asyncErrors{}
	nc, err := dialNATS(context.Background(), natsURL, []nats.Option{nats.UserInfo(user, deployUsers(t)[user]), nats.Timeout(5 * time.Second),
		nats.CustomInboxPrefix(inboxPrefix(user)),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs.add(err) })})
	require.NoError(t, err, "connecting as %s", user)
	t.Cleanup(nc.Close)
	return nc, errs
}

type asyncErrors struct {
	mu   sync.Mutex
	errs []error
}

func (a *asyncErrors) add(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.errs = append(a.errs, err)
}

// violation reports whether the server refused a publish to subject.
func (a *asyncErrors) violation(subject string) bool { return a.refused("Publish", subject) }

// refused reports whether the server refused op ("Publish" or
// "Subscription") on subject.
func (a *asyncErrors) refused(op, subject string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, err := range a.errs {
		if errors.Is(err, nats.ErrPermissionViolation) &&
			strings.Contains(err.Error(), fmt.Sprintf("%s to %q", op, subject)) {
			return true
		}
	}
	return false
}

// requireDenied publishes (or requests) subject as the connection's user
// and requires the server to refuse it with a permission violation.
func requireDenied(t *testing.T, nc *nats.Conn, errs *asyncErrors, user, subject string) {
	t.Helper()
	_, err := nc.Request(subject, []byte(`{}`), 2*time.Second)
	require.Error(t, err, "%s: a request on %s must not be answered", user, subject)
	testenv.Eventually(t, 10*time.Second, func() bool { return errs.violation(subject) },
		"the server to refuse %s publishing to %s", user, subject)
}

func streamMsgs(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, "ARTIFACTSTORE_EVENTS")
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	return info.State.Msgs
}

// TestSecurityServicesWithLeastPrivilege runs ingest, relay and projector
// as processes against the shipped NATS config, each logged in as its own
// user, and proves the pipeline works end to end with exactly those
// permissions (no permission violation is logged by any service).
func TestSecurityServicesWithLeastPrivilege(t *testing.T) {
	t.Parallel()
	natsURL := deployNATS(t)
	// The test cluster trusts local connections: the password is accepted
	// and must never show in the services' debug logs.
	const dbPassword = "svcDbPw-S3cr3t-5b7e"
	dbURL := withPassword(t, pgDatabaseURL(t), dbPassword)
	migrateUp(t, dbURL)
	dbEnv := []string{"ARTIFACTSTORE_DATABASE_URL=" + dbURL}

	// The relay signs checkpoints too: it creates the bucket and puts
	// them with its own permissions.
	keyFile := filepath.Join(t.TempDir(), "relay.pem")
	require.Zero(t, runBinary(t, time.Minute, nil, "checkpoint", "keygen", "--out", keyFile).code)
	args := map[string][]string{"relay": {"--checkpoint-key", keyFile, "--checkpoint-interval", "100ms"}}
	var procs []*service
	for _, svc := range []string{"ingest", "relay", "projector"} {
		procs = append(procs, startService(t, append(natsEnv(t, natsURL, svc), dbEnv...), append([]string{svc}, args[svc]...)...))
	}

	alive := func() bool {
		for _, p := range procs {
			select {
			case <-p.done:
				t.Fatalf("%s exited (code %d):\n%s", p.name, p.cmd.ProcessState.ExitCode(), p.output)
			default:
			}
		}
		return true
	}
	client := natsEnv(t, natsURL, "client")
	r := runBinary(t, time.Minute, client, "package", "create", "--actor", "alice", "--name", "secure", "--version", "1.0.0", "--json")
	require.Equal(t, 0, r.code, "a client creates a package with its credentials: %s", r.stderr)
	var created ingest.CommandReply
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &created))

	// The relay (its own user) publishes it; the projector (its own user)
	// applies it to the view the client reads.
	testenv.Eventually(t, time.Minute, func() bool {
		r = runBinary(t, time.Minute, client, "package", "get", created.PackageID, "--json")
		return alive() && r.code == 0
	}, "the projector to apply the event; last: %+v", &r)

	reader := append(natsEnv(t, natsURL, "reader"), dbEnv...)
	r = runBinary(t, time.Minute, reader, "events", "tail", "--limit", "1", "--json")
	require.Equal(t, 0, r.code, "a reader tails the stream: %s", r.stderr)
	require.Contains(t, r.stdout, created.PackageID)
	var st statusReport
	testenv.Eventually(t, time.Minute, func() bool {
		r = runBinary(t, time.Minute, reader, "status", "--json")
		if !alive() || r.code != 0 || json.Unmarshal([]byte(r.stdout), &st) != nil {
			return false
		}
		if st.Relay == nil || st.Relay.Lag != 0 || len(st.Projections) != 1 {
			return false
		}
		// The event's partition has applied it. (Projection lag is the
		// lowest partition checkpoint's; partitions that never saw an event
		// stay at 0, so it does not reach 0 here.)
		applied := int64(0)
		for _, p := range st.Projections[0].Partitions {
			applied = max(applied, p.Checkpoint)
		}
		return applied == st.Head
	}, "status as reader to show the relay and the projection caught up; last: %+v", &r)

	// A reader fetches the signed checkpoint and verifies the log, the
	// stream and the checkpoint with its own permissions.
	pubKey := strings.TrimSuffix(keyFile, ".pem") + ".pub.pem"
	testenv.Eventually(t, time.Minute, func() bool {
		r = runBinary(t, time.Minute, reader, "checkpoint", "get", "--checkpoint-pubkey", pubKey)
		return alive() && r.code == 0
	}, "a reader to get the relay's checkpoint; last: %+v", &r)
	r = runBinary(t, time.Minute, reader, "verify", "--stream", "--checkpoint", "kv", "--checkpoint-pubkey", pubKey)
	require.Equal(t, 0, r.code, "a reader verifies the history: %s", r.stderr)

	for _, p := range procs {
		out := p.output.String()
		require.NotContains(t, out, "Permissions Violation", "%s needs a permission the example config does not grant:\n%s", p.name, out)
		for user, pw := range deployUsers(t) {
			require.NotContains(t, out, pw, "%s logged %s's password", p.name, user)
		}
		require.NotContains(t, out, dbPassword, "%s logged the database password", p.name)
	}

	readerNC, _ := connectAs(t, natsURL, "reader")
	readerJS, err := jetstream.New(readerNC)
	require.NoError(t, err)
	require.Equal(t, uint64(1), streamMsgs(t, readerJS))

	// The denials and the failed logins run side by side; the group ends
	// when all of them have.
	t.Run("denied", func(t *testing.T) {
		t.Run("NATSPermissionClientCannotWriteEvents", func(t *testing.T) {
			t.Parallel()
			nc, errs := connectAs(t, natsURL, "client")
			require.NoError(t, nc.Publish("artifactstore.events.v1.package.created.forged", []byte(`{}`)))
			require.NoError(t, nc.Flush())
			testenv.Eventually(t, 10*time.Second, func() bool { return errs.violation("artifactstore.events.v1.package.created.forged") },
				"the server to refuse the client's publish to artifactstore.events.>")
			requireDenied(t, nc, errs, "client", "$JS.API.STREAM.PURGE.ARTIFACTSTORE_EVENTS")
			requireDenied(t, nc, errs, "client", "$JS.API.STREAM.DELETE.ARTIFACTSTORE_EVENTS")
			requireDenied(t, nc, errs, "client", "$JS.API.STREAM.INFO.ARTIFACTSTORE_EVENTS")
			requireDenied(t, nc, errs, "client", "$KV.ARTIFACTSTORE_CHECKPOINTS.forged")
			// micro's own endpoints answer any reply subject too; clients
			// cannot reach them.
			requireDenied(t, nc, errs, "client", "$SRV.PING")
		})

		t.Run("NATSPermissionReaderCannotPurgeOrDelete", func(t *testing.T) {
			t.Parallel()
			nc, errs := connectAs(t, natsURL, "reader")
			js, err := jetstream.New(nc)
			require.NoError(t, err)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			refused := func(subject string) {
				t.Helper()
				testenv.Eventually(t, 10*time.Second, func() bool { return errs.violation(subject) },
					"the server to refuse the reader publishing to %s", subject)
			}
			s, err := js.Stream(ctx, "ARTIFACTSTORE_EVENTS")
			require.NoError(t, err, "a reader may look at the stream")
			pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
			require.Error(t, s.Purge(pctx), "a reader must not purge the stream")
			pcancel()
			refused("$JS.API.STREAM.PURGE.ARTIFACTSTORE_EVENTS")
			dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
			require.Error(t, js.DeleteStream(dctx, "ARTIFACTSTORE_EVENTS"), "a reader must not delete the stream")
			dcancel()
			refused("$JS.API.STREAM.DELETE.ARTIFACTSTORE_EVENTS")
			mctx, mcancel := context.WithTimeout(ctx, 2*time.Second)
			require.Error(t, s.DeleteMsg(mctx, 1), "a reader must not delete an event")
			mcancel()
			refused("$JS.API.STREAM.MSG.DELETE.ARTIFACTSTORE_EVENTS")
			ectx, ecancel := context.WithTimeout(ctx, 2*time.Second)
			_, err = js.Publish(ectx, "artifactstore.events.v1.package.created.forged", []byte(`{}`))
			ecancel()
			require.Error(t, err, "a reader must not publish events")
			refused("artifactstore.events.v1.package.created.forged")
			kctx, kcancel := context.WithTimeout(ctx, 2*time.Second)
			_, err = js.Publish(kctx, "$KV.ARTIFACTSTORE_CHECKPOINTS.forged", []byte(`{}`))
			kcancel()
			require.Error(t, err, "a reader must not put checkpoints")
			refused("$KV.ARTIFACTSTORE_CHECKPOINTS.forged")
		})

		t.Run("NATSPermissionProjectorCannotWriteEvents", func(t *testing.T) {
			t.Parallel()
			nc, errs := connectAs(t, natsURL, "projector")
			require.NoError(t, nc.Publish("artifactstore.events.v1.package.finalized.forged", []byte(`{}`)))
			require.NoError(t, nc.Flush())
			testenv.Eventually(t, 10*time.Second, func() bool { return errs.violation("artifactstore.events.v1.package.finalized.forged") },
				"the server to refuse the projector's publish to artifactstore.events.>")
			requireDenied(t, nc, errs, "projector", "$JS.API.STREAM.PURGE.ARTIFACTSTORE_EVENTS")
			requireDenied(t, nc, errs, "projector", "$JS.API.STREAM.DELETE.ARTIFACTSTORE_EVENTS")
			requireDenied(t, nc, errs, "projector", "$JS.API.STREAM.PURGE.ARTIFACTSTORE_EVENTS_P8")
		})

		t.Run("NATSPermissionNoUserReadsAnothersReplies", func(t *testing.T) {
			t.Parallel()
			// A client listening on the shared inbox, or on another
			// user's, would see their replies: JetStream API answers and
			// the events delivered to the projectors and readers.
			nc, errs := connectAs(t, natsURL, "client")
			for _, subject := range []string{"_INBOX.>", inboxPrefix("reader") + ".>", inboxPrefix("projector") + ".>", ">"} {
				sub, err := nc.SubscribeSync(subject)
				require.NoError(t, err)
				require.NoError(t, nc.Flush())
				testenv.Eventually(t, 10*time.Second, func() bool { return errs.refused("Subscription", subject) },
					"the server to refuse the client's subscription to %s", subject)
				_ = sub.Unsubscribe()
			}
			// Its own replies still reach it, on its own prefix.
			msg, err := nc.Request(ingest.SubjectGet, []byte(`{"package_id":"`+created.PackageID+`"}`), 30*time.Second)
			require.NoError(t, err)
			require.True(t, strings.HasPrefix(msg.Subject, inboxPrefix("client")+"."), "reply on %s", msg.Subject)
			require.Contains(t, string(msg.Data), created.PackageID)
		})

		t.Run("ReplyInjectionWritesNothing", func(t *testing.T) {
			t.Parallel()
			testReplyInjection(t, natsURL, dbURL, procs[0], created.PackageID)
		})

		t.Run("NATSPermissionWrongCredentialsFailFast", func(t *testing.T) {
			t.Parallel()
			for _, svc := range []string{"ingest", "relay", "projector"} {
				env := append([]string{"ARTIFACTSTORE_NATS_URL=" + natsURL, "ARTIFACTSTORE_NATS_USER=" + svc,
					"ARTIFACTSTORE_NATS_PASSWORD=not-the-password", "ARTIFACTSTORE_HTTP_LISTEN="}, dbEnv...)
				start := time.Now()
				r := runBinary(t, 30*time.Second, env, svc)
				require.NotEqual(t, 0, r.code, "%s with a wrong password must exit", svc)
				require.Contains(t, r.stderr, "authorization violation", "%s names the problem: %s", svc, r.stderr)
				require.Contains(t, r.stderr, "--nats-user", "%s says which flags to check", svc)
				require.NotContains(t, r.stderr, "not-the-password")
				require.Less(t, time.Since(start), 20*time.Second, "%s failed fast", svc)
			}
		})
	})

	// Nothing the denied users tried reached the stream.
	require.Equal(t, uint64(1), streamMsgs(t, readerJS), "the stream still holds exactly its one event")
}

// tlsFiles are PEM files of a test CA, a server and a client certificate.
type tlsFiles struct{ ca, serverCert, serverKey, clientCert, clientKey string }

func generateTLS(t *testing.T) tlsFiles {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
		return p
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		return k
	}
	serial := int64(1)
	template := func(cn string) *x509.Certificate {
		serial++
		return &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
		}
	}
	caKey := newKey()
	caTmpl := template("artifactstore test CA")
	caTmpl.IsCA, caTmpl.BasicConstraintsValid = true, true
	caTmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	ca, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)

	leaf := func(cn string, usage x509.ExtKeyUsage, name string) (string, string) {
		k := newKey()
		tmpl := template(cn)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{usage}
		if usage == x509.ExtKeyUsageServerAuth {
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		require.NoError(t, err)
		kder, err := x509.MarshalPKCS8PrivateKey(k)
		require.NoError(t, err)
		return write(name+".pem", "CERTIFICATE", der), write(name+"-key.pem", "PRIVATE KEY", kder)
	}
	f := tlsFiles{ca: write("ca.pem", "CERTIFICATE", caDER)}
	f.serverCert, f.serverKey = leaf("nats server", x509.ExtKeyUsageServerAuth, "server")
	f.clientCert, f.clientKey = leaf("artifactstore client", x509.ExtKeyUsageClientAuth, "client")
	return f
}

// TestTLSMutualNATS starts nats-server with TLS and client verification
// (verify: true, from a config file) and proves that ingest and the CLI
// work with --nats-tls-ca/--nats-tls-cert/--nats-tls-key (as environment
// variables), and fail clearly without a client certificate.
func TestTLSMutualNATS(t *testing.T) {
	t.Parallel()
	certs := generateTLS(t)
	port := testenv.FreePort()
	conf := filepath.Join(t.TempDir(), "tls.conf")
	require.NoError(t, os.WriteFile(conf, []byte(fmt.Sprintf(`
listen: 127.0.0.1:%d
tls {
  cert_file: %q
  key_file: %q
  ca_file: %q
  verify: true
  timeout: 5
}
`, port, certs.serverCert, certs.serverKey, certs.ca)), 0o600))
	opts, err := server.ProcessConfigFile(conf)
	require.NoError(t, err)
	require.Equal(t, tls.RequireAndVerifyClientCert, opts.TLSConfig.ClientAuth, "verify: true")
	opts.NoLog, opts.NoSigs = true, true
	natsURL := startNATSServer(t, opts)

	tlsEnv := []string{"ARTIFACTSTORE_NATS_URL=" + natsURL, "ARTIFACTSTORE_NATS_TLS_CA=" + certs.ca,
		"ARTIFACTSTORE_NATS_TLS_CERT=" + certs.clientCert, "ARTIFACTSTORE_NATS_TLS_KEY=" + certs.clientKey}
	dbURL := pgSchemaURL(t)
	migrateUp(t, dbURL)
	startService(t, append(slices.Clone(tlsEnv), "ARTIFACTSTORE_DATABASE_URL="+dbURL), "ingest")

	r := runBinary(t, time.Minute, tlsEnv, "package", "create", "--actor", "alice", "--name", "tls", "--version", "1.0.0")
	require.Equal(t, 0, r.code, "the CLI works over mutual TLS: %s", r.stderr)
	require.Contains(t, r.stdout, "v1.package.created")

	// The same, with the flags instead of the environment.
	r = runBinary(t, time.Minute, nil, "--nats-url", natsURL, "--nats-tls-ca", certs.ca, "--nats-tls-cert", certs.clientCert,
		"--nats-tls-key", certs.clientKey, "package", "create", "--actor", "alice", "--name", "tls", "--version", "2.0.0")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "v1.package.created")

	// Without the client certificate the server refuses the handshake.
	r = runBinary(t, time.Minute, []string{"ARTIFACTSTORE_NATS_URL=" + natsURL, "ARTIFACTSTORE_NATS_TLS_CA=" + certs.ca}, "package", "list")
	require.Equal(t, exitUnavailble, r.code, r.stderr)
	require.Contains(t, r.stderr, "cannot reach NATS")
	// TLS 1.3 reports the refusal after the handshake: "certificate
	// required" or a closed connection, depending on timing.
	require.Contains(t, r.stderr, "tls", "the error says TLS failed: %s", r.stderr)
	require.Contains(t, r.stderr, "--nats-tls-cert", "the error points at the TLS flags, whatever the URL scheme: %s", r.stderr)
	require.NotContains(t, r.stderr, "goroutine")

	// A service without it fails at start, naming the problem.
	r = runBinary(t, 30*time.Second, []string{"ARTIFACTSTORE_NATS_URL=" + natsURL, "ARTIFACTSTORE_NATS_TLS_CA=" + certs.ca,
		"ARTIFACTSTORE_DATABASE_URL=" + dbURL, "ARTIFACTSTORE_HTTP_LISTEN="}, "ingest")
	require.NotEqual(t, 0, r.code)
	require.Contains(t, strings.ToLower(r.stderr), "tls", r.stderr)

	// Without TLS at all the server is not reachable either.
	r = runBinary(t, time.Minute, []string{"ARTIFACTSTORE_NATS_URL=" + natsURL}, "package", "list")
	require.Equal(t, exitUnavailble, r.code, r.stderr)
	require.Contains(t, r.stderr, "cannot reach NATS")
}

// TestSecretsNeverInOutput runs status and the services with passwords in
// the database URL (user info and password= parameter) and in the NATS
// credentials, failing in every way they can at start, and requires that
// no password appears in their stdout, stderr or logs (debug level).
func TestSecretsNeverInOutput(t *testing.T) {
	t.Parallel()
	const dbPw, natsPw, natsToken = "dbPw-S3cr3t-7f2c", "natsPw-S3cr3t-91ad", "natsTok-S3cr3t-44e1"
	secrets := []string{dbPw, natsPw, natsToken}
	natsURL := deployNATS(t)
	goodDB := pgSchemaURL(t)
	migrateUp(t, goodDB)
	// The test cluster trusts local connections, so a password in the URL
	// is accepted and the command gets as far as it can.
	goodDBWithPw := withPassword(t, goodDB, dbPw)
	deadPort := testenv.FreePort()
	deadDB := fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/x?sslmode=disable", dbPw, deadPort)
	deadDBParam := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/x?sslmode=disable&password=%s", deadPort, dbPw)
	badDB := fmt.Sprintf("postgres://postgres:%s@127.0.0.1:notaport/x", dbPw)
	deadNATS := fmt.Sprintf("nats://ingest:%s@127.0.0.1:%d", natsPw, testenv.FreePort())

	cases := []struct {
		name string
		env  []string
		args []string
	}{
		{"status, unreachable database", []string{"ARTIFACTSTORE_DATABASE_URL=" + deadDB}, []string{"status"}},
		{"status, password parameter", []string{"ARTIFACTSTORE_DATABASE_URL=" + deadDBParam}, []string{"status", "--json"}},
		{"status, malformed URL", []string{"ARTIFACTSTORE_DATABASE_URL=" + badDB}, []string{"status"}},
		{"status, NATS password in URL", []string{"ARTIFACTSTORE_DATABASE_URL=" + goodDBWithPw, "ARTIFACTSTORE_NATS_URL=" + deadNATS}, []string{"status"}},
		{"status --json, wrong NATS password", []string{"ARTIFACTSTORE_DATABASE_URL=" + goodDBWithPw, "ARTIFACTSTORE_NATS_URL=" + natsURL,
			"ARTIFACTSTORE_NATS_USER=reader", "ARTIFACTSTORE_NATS_PASSWORD=" + natsPw}, []string{"status", "--json"}},
		{"status, NATS token", []string{"ARTIFACTSTORE_DATABASE_URL=" + goodDBWithPw, "ARTIFACTSTORE_NATS_URL=" + natsURL,
			"ARTIFACTSTORE_NATS_TOKEN=" + natsToken}, []string{"status"}},
		{"ingest, unreachable database", []string{"ARTIFACTSTORE_DATABASE_URL=" + deadDB}, []string{"ingest"}},
		{"relay, password parameter", []string{"ARTIFACTSTORE_DATABASE_URL=" + deadDBParam}, []string{"relay"}},
		{"projector, malformed URL", []string{"ARTIFACTSTORE_DATABASE_URL=" + badDB}, []string{"projector"}},
		{"migrate, unreachable database", []string{"ARTIFACTSTORE_DATABASE_URL=" + deadDB}, []string{"migrate", "up"}},
		{"ingest, wrong NATS password", []string{"ARTIFACTSTORE_DATABASE_URL=" + goodDBWithPw, "ARTIFACTSTORE_NATS_URL=" + natsURL,
			"ARTIFACTSTORE_NATS_USER=ingest", "ARTIFACTSTORE_NATS_PASSWORD=" + natsPw}, []string{"ingest"}},
		{"relay, NATS password in URL", []string{"ARTIFACTSTORE_DATABASE_URL=" + goodDBWithPw, "ARTIFACTSTORE_NATS_URL=" + deadNATS}, []string{"relay"}},
		{"package list, wrong NATS token", []string{"ARTIFACTSTORE_NATS_URL=" + natsURL, "ARTIFACTSTORE_NATS_TOKEN=" + natsToken}, []string{"package", "list"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := append(slices.Clone(tc.env), "ARTIFACTSTORE_LOG_LEVEL=debug", "ARTIFACTSTORE_LOG_FORMAT=json", "ARTIFACTSTORE_HTTP_LISTEN=")
			r := runBinary(t, 30*time.Second, env, tc.args...)
			out := r.stdout + r.stderr
			require.NotEmpty(t, out)
			for _, s := range secrets {
				require.NotContains(t, out, s, "a secret leaked (exit %d):\n%s", r.code, out)
			}
		})
	}
}

// TestNATSInboxPrefixRejectsWildcards: a prefix that could not be a reply
// subject's first tokens is refused before connecting, naming the flag.
func TestNATSInboxPrefixRejectsWildcards(t *testing.T) {
	t.Parallel()
	for _, prefix := range []string{"_INBOX_x.*", "_INBOX_x.>", "_INBOX_x.", " _INBOX_x"} {
		r := runBinary(t, 30*time.Second, []string{"ARTIFACTSTORE_NATS_URL=nats://127.0.0.1:1", "ARTIFACTSTORE_NATS_INBOX_PREFIX=" + prefix},
			"package", "get", "some-id")
		require.NotEqual(t, 0, r.code, "prefix %q", prefix)
		require.Contains(t, r.stderr, "--nats-inbox-prefix", "prefix %q: %s", prefix, r.stderr)
	}
}

// testReplyInjection: a client with the shipped credentials sends valid
// requests to every ingest endpoint naming, as their reply subject, the
// events stream, the projectors' KV bucket, the JetStream API and ingest's
// own command subject. The shipped config lets ingest answer any request
// (allow_responses), so only ingest can refuse: nothing is appended to the
// log, no key appears in the KV bucket (and the caller checks the stream
// still holds its one event), and ingest counts every drop. A normal
// request is answered afterwards.
func testReplyInjection(t *testing.T, natsURL, dbURL string, ingestProc *service, packageID string) {
	hostile := []string{"artifactstore.events.v1.package.created.x", "$KV.ARTIFACTSTORE_PROJECTORS.registry.evil",
		"$JS.API.STREAM.DELETE.ARTIFACTSTORE_EVENTS", "artifactstore.cmd.package.create"}
	requests := []struct{ endpoint, subject, body, barrier string }{
		// The barriers are answered with an error and append nothing.
		{"create", ingest.SubjectCreate, `{"actor":"mallory","name":"evil","version":"1"}`, `{"actor":""}`},
		{"finalize", ingest.SubjectFinalize, `{"actor":"mallory","package_id":"` + packageID + `","manifest_digest":"` + strings.Repeat("ab", 32) + `"}`,
			`{"actor":"mallory","package_id":"unknown","manifest_digest":"` + strings.Repeat("ab", 32) + `"}`},
		{"get", ingest.SubjectGet, `{"package_id":"` + packageID + `"}`, `{"package_id":"unknown"}`},
		{"list", ingest.SubjectList, `{}`, `{"limit":-1}`},
	}
	head := func() int64 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, dbURL)
		require.NoError(t, err)
		defer conn.Close(ctx)
		var n int64
		require.NoError(t, conn.QueryRow(ctx, "SELECT coalesce(max(sequence), 0) FROM events").Scan(&n))
		return n
	}
	before := head()

	nc, errs := connectAs(t, natsURL, "client")
	for _, r := range requests {
		for _, reply := range hostile {
			require.NoError(t, nc.PublishRequest(r.subject, reply, []byte(r.body)))
		}
		msg, err := nc.Request(r.subject, []byte(r.barrier), 30*time.Second)
		require.NoError(t, err, "%s: the barrier is answered", r.endpoint)
		require.NotEmpty(t, msg.Header.Get("Nats-Service-Error-Code"), "%s: the barrier is an error: %s", r.endpoint, msg.Data)
	}
	require.Equal(t, before, head(), "the log head moved")
	for _, r := range requests {
		series := fmt.Sprintf(`artifactstore_ingest_rejected_replies_total{endpoint=%q,reason="not_inbox"}`, r.endpoint)
		require.EqualValues(t, len(hostile), scrapeMetric(t, ingestProc.http, series), series)
	}
	for _, reply := range hostile {
		require.False(t, errs.violation(reply), "the client itself never published to %s", reply)
	}

	// A normal request still works.
	msg, err := nc.Request(ingest.SubjectGet, []byte(`{"package_id":"`+packageID+`"}`), 30*time.Second)
	require.NoError(t, err)
	require.Empty(t, msg.Header.Get("Nats-Service-Error-Code"), "%s", msg.Data)
	require.Contains(t, string(msg.Data), packageID)
}

// scrapeMetric reads one series (name{labels} as the text format prints
// it) from a process's /metrics, failing when it is not there.
func scrapeMetric(t *testing.T, addr, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			require.NoError(t, err, line)
			return f
		}
	}
	t.Fatalf("series %s not in %s/metrics", series, addr)
	return 0
}
