package postgres_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/postgres"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// rewritingProxy forwards PostgreSQL connections (without TLS) and
// rewrites one field of the server's ErrorResponses: old becomes new.
type rewritingProxy struct {
	l     net.Listener
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func newRewritingProxy(t *testing.T, target string, old, new []byte) *rewritingProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &rewritingProxy{l: l}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); _, _ = io.Copy(s, c); s.Close(); c.Close() }()
			go func() { defer p.wg.Done(); rewriteErrors(c, s, old, new); s.Close(); c.Close() }()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// rewriteErrors copies the server's messages (each a type byte and an
// int32 length) from src to dst, replacing old by new in ErrorResponses.
func rewriteErrors(dst io.Writer, src io.Reader, old, new []byte) {
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(src, hdr[:]); err != nil {
			return
		}
		body := make([]byte, int(binary.BigEndian.Uint32(hdr[1:]))-4)
		if _, err := io.ReadFull(src, body); err != nil {
			return
		}
		if hdr[0] == 'E' {
			body = bytes.Replace(body, old, new, 1)
			binary.BigEndian.PutUint32(hdr[1:], uint32(len(body)+4))
		}
		if _, err := dst.Write(append(hdr[:], body...)); err != nil {
			return
		}
	}
}

// TestFatalDuringCommitLocalized: the backend is terminated during
// COMMIT (a deferred trigger holds it) on a server whose messages are
// localized: the severity PostgreSQL reports in the 'S' field is then
// translated ("FATALE", "ВАЖНО", ...), and only the unlocalized one says
// FATAL. The session ended during COMMIT, so the outcome must be reported
// unknown, as it is for an English-speaking server (TestAppendCommandsCommits).
func TestFatalDuringCommitLocalized(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	base, schema := testenv.Schema(t)
	// The localized severity ('S') of a server with lc_messages = 'it';
	// the unlocalized one ('V') stays FATAL.
	db := throughProxy(t, base, schema, []byte("SFATAL\x00"), []byte("SFATALE\x00"))

	c := conn(t, base, schema)
	_, err := c.Exec(ctx, `CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(60); RETURN NEW; END $$;
		CREATE CONSTRAINT TRIGGER slow AFTER UPDATE ON commands DEFERRABLE INITIALLY DEFERRED
			FOR EACH ROW WHEN (NEW.sequence IS NOT NULL) EXECUTE FUNCTION slow()`)
	require.NoError(t, err)
	killed := make(chan int, 1)
	go func() {
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			var n int
			if err := c.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE wait_event = 'PgSleep' AND query = 'commit' AND pid <> pg_backend_pid() AND datname = current_database()
				AND EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class r ON r.oid = l.relation JOIN pg_namespace s ON s.oid = r.relnamespace
					WHERE l.pid = pg_stat_activity.pid AND s.nspname = $1)`, schema).Scan(&n); err == nil && n > 0 {
				killed <- n
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		killed <- 0
	}()
	_, err = appendWithCommand(ctx, db, "c1", storetest.Created(t, storetest.PackageID(1), "n", "1", "a"))
	require.Equal(t, 1, <-killed, "terminated the backend during COMMIT")
	require.ErrorIs(t, err, store.ErrOutcomeUnknown, "the session ended during COMMIT: %v", err)
}

// throughProxy opens the log in schema through a rewritingProxy.
func throughProxy(t *testing.T, base, schema string, old, new []byte) *postgres.DB {
	u, err := url.Parse(base)
	require.NoError(t, err)
	proxy := newRewritingProxy(t, u.Host, old, new)
	u.Host = proxy.l.Addr().String()
	q := u.Query()
	q.Set("sslmode", "disable")
	u.RawQuery = q.Encode()
	return testenv.OpenPostgresConfig(t, postgres.Config{URL: u.String(), Schema: schema})
}

// TestFatalFromAProxyIsOutcomeUnknown: a FATAL that is not PostgreSQL's
// own termination of the session (here the proxy turns the terminated
// backend's 57P01 into 08P01, as a pooler reports a lost server) answers
// the statement before COMMIT: a pooler may report that for a pipeline
// the server ran to its COMMIT, so the outcome is unknown. (Straight from
// PostgreSQL, the same termination is known not to have committed:
// TestAppendCommandsCommits.)
func TestFatalFromAProxyIsOutcomeUnknown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	base, schema := testenv.Schema(t)
	db := throughProxy(t, base, schema, []byte("C57P01\x00"), []byte("C08P01\x00"))
	c := conn(t, base, schema)
	ev := storetest.Created(t, storetest.PackageID(1), "n", "1", "a")
	err := db.InTx(ctx, func(stx store.Tx) error {
		tx := stx.(store.CommandBatcher)
		if _, _, _, _, err := tx.ClaimAll(ctx, []string{"c1"}, [][]byte{{1}}, []string{ev.SubjectID}, []string{"n"}, []string{"1"}, nil); err != nil {
			return err
		}
		var n int
		require.NoError(t, c.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE state LIKE 'idle in transaction%' AND query LIKE 'SELECT sequence, created_at, chain_digest%'
			AND pid <> pg_backend_pid() AND datname = current_database()
			AND EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class r ON r.oid = l.relation JOIN pg_namespace s ON s.oid = r.relnamespace
				WHERE l.pid = pg_stat_activity.pid AND s.nspname = $1)`, schema).Scan(&n))
		require.Equal(t, 1, n, "terminated the transaction's backend")
		_, err := tx.AppendCommands(ctx, nil, []store.Event{ev}, []string{"c1"}, nil)
		return err
	})
	require.ErrorIs(t, err, store.ErrOutcomeUnknown, "%v", err)
}
