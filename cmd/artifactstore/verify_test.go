package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/relay"
	"github.com/artifactstore/artifactstore/store"
	"github.com/artifactstore/artifactstore/store/postgres"
	"github.com/artifactstore/artifactstore/store/sqlite"
	"github.com/artifactstore/artifactstore/store/storetest"
)

// verifyEnv is a PostgreSQL log of 30 events, relayed into a stream by a
// relay that signs checkpoints with a key made by 'checkpoint keygen',
// stopped once the checkpoint of event 30 is in the bucket.
type verifyEnv struct {
	db              *postgres.DB
	env             []string
	pubKey, cpFile  string
	log             []store.Event
	natsURL, dbURL  string
	logID, keysPath string
}

func setupVerify(t *testing.T) *verifyEnv {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	v := &verifyEnv{keysPath: filepath.Join(dir, "relay.pem"), pubKey: filepath.Join(dir, "relay.pub.pem"), cpFile: filepath.Join(dir, "cp.json")}
	r := runCLI(t, nil, "checkpoint", "keygen", "--out", v.keysPath)
	require.Zero(t, r.code, r.stderr)
	require.FileExists(t, v.pubKey)
	st, err := os.Stat(v.keysPath)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "the private key is readable by its owner only")
	key, err := readPrivateKey(v.keysPath)
	require.NoError(t, err)

	base, schema := testenv.Schema(t)
	v.db = testenv.OpenPostgres(t, base, schema)
	u, err := url.Parse(base)
	require.NoError(t, err)
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	v.dbURL = u.String()
	for i := range 6 {
		var evs []store.Event
		for j := range 5 {
			n := 5*i + j
			evs = append(evs, storetest.Created(t, storetest.PackageID(n), "v", fmt.Sprint(n), "alice"))
		}
		storetest.Append(t, v.db, evs...)
	}
	v.log, err = v.db.Fetch(ctx, 0, 100)
	require.NoError(t, err)
	v.logID, err = v.db.LogID(ctx)
	require.NoError(t, err)

	ns := testenv.NATS(t)
	v.natsURL = ns.URL()
	js := ns.JetStream(t)
	rl, err := relay.New(v.db, js, relay.Config{Logger: testenv.Logger(t), CheckpointKey: key, CheckpointInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rl.Run(rctx) }()
	testenv.Eventually(t, 30*time.Second, func() bool {
		cp, err := relay.ReadCheckpoint(ctx, js, v.logID)
		return err == nil && cp.Sequence == 30
	}, "the relay's checkpoint of event 30")
	cancel()
	require.NoError(t, <-done)
	v.env = []string{"ARTIFACTSTORE_DATABASE_URL=" + v.dbURL, "ARTIFACTSTORE_NATS_URL=" + v.natsURL}
	return v
}

func (v *verifyEnv) run(t *testing.T, args ...string) result {
	t.Helper()
	return runCLI(t, v.env, append([]string{"verify"}, args...)...)
}

// requireBroken checks exit code 8 and that the message names seq.
func requireBroken(t *testing.T, r result, seq int64) {
	t.Helper()
	require.Equal(t, exitBroken, r.code, "stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	require.Contains(t, r.stderr, fmt.Sprintf("history broken at event %d:", seq))
}

// TestVerifyExitCodes: an intact log, stream and checkpoint verify (exit
// 0); a privileged rewrite of one event (payload and digest changed
// together, the triggers bypassed) makes verify and verify --stream exit 8
// naming that sequence; bad flags are usage errors and an unreachable
// database is unavailable.
func TestVerifyExitCodes(t *testing.T) {
	t.Parallel()
	v := setupVerify(t)
	r := v.run(t)
	require.Zero(t, r.code, r.stderr)
	require.Contains(t, r.stdout, "events 1..30 verified")
	require.Contains(t, r.stdout, "chain head: event 30, "+v.log[29].ChainDigest.String())
	require.Contains(t, r.stdout, "intact")
	r = v.run(t, "--stream")
	require.Zero(t, r.code, r.stderr)
	require.Contains(t, r.stdout, "30 messages compared with the log (events 1..30)")

	g := runCLI(t, v.env, "checkpoint", "get", "--out", v.cpFile, "--checkpoint-pubkey", v.pubKey)
	require.Zero(t, g.code, g.stderr)
	data, err := os.ReadFile(v.cpFile)
	require.NoError(t, err)
	cp, err := wire.DecodeCheckpoint(data)
	require.NoError(t, err)
	require.Equal(t, int64(30), cp.Sequence)
	for _, from := range []string{v.cpFile, "kv"} {
		r = v.run(t, "--checkpoint", from, "--checkpoint-pubkey", v.pubKey)
		require.Zero(t, r.code, r.stderr)
		require.Contains(t, r.stdout, "checkpoint: event 30")
	}
	r = v.run(t, "--checkpoint", v.cpFile)
	require.Equal(t, exitInvalid, r.code, "a checkpoint without the key to check it")
	other := filepath.Join(t.TempDir(), "other.pem")
	require.Zero(t, runCLI(t, nil, "checkpoint", "keygen", "--out", other).code)
	r = v.run(t, "--checkpoint", v.cpFile, "--checkpoint-pubkey", filepath.Join(filepath.Dir(other), "other.pub.pem"))
	require.Equal(t, exitBroken, r.code, "signed by another key")
	require.Contains(t, r.stderr, "signature does not verify")

	forged := []byte(`{"package_id":"pkg-000011","name":"v","version":"11","retention":{"policy":"keep_forever"}}`)
	digest := store.DigestOf(forged)
	testenv.Privileged(t, v.db, fmt.Sprintf("UPDATE events SET payload = %s, payload_digest = %s WHERE sequence = 12",
		testenv.Blob(v.db, forged), testenv.Blob(v.db, digest[:])))
	requireBroken(t, v.run(t), 12)
	requireBroken(t, v.run(t, "--stream"), 12)
	r = v.run(t, "--json")
	require.Equal(t, exitBroken, r.code)
	var rep verifyReport
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep))
	require.Equal(t, int64(12), rep.Broken.Sequence)
	require.Equal(t, int64(11), rep.To, "verified up to the event before")
	r = v.run(t, "--from", "13", "--stream")
	require.Zero(t, r.code, "from 13 on, the log's chain digest of event 12 is trusted: %s", r.stderr)

	r = runCLI(t, []string{"ARTIFACTSTORE_DATABASE_URL=postgres://postgres@127.0.0.1:1/none?connect_timeout=2"}, "verify")
	require.Equal(t, exitUnavailble, r.code, r.stderr)
}

// TestVerifyCheckpointCatchesDroppedTail: the newest events deleted and
// the head row set back to match — a chain alone cannot tell, the
// checkpoint and the stream can.
func TestVerifyCheckpointCatchesDroppedTail(t *testing.T) {
	t.Parallel()
	v := setupVerify(t)
	require.Zero(t, runCLI(t, v.env, "checkpoint", "get", "--out", v.cpFile).code)
	testenv.Privileged(t, v.db, "DELETE FROM events WHERE sequence > 25",
		fmt.Sprintf("UPDATE log_head SET sequence = 25, chain_digest = %s", testenv.Blob(v.db, v.log[24].ChainDigest[:])))
	r := v.run(t)
	require.Zero(t, r.code, "the chain of what is left holds: %s", r.stderr)
	requireBroken(t, v.run(t, "--checkpoint", v.cpFile, "--checkpoint-pubkey", v.pubKey), 26)
	requireBroken(t, v.run(t, "--checkpoint", "kv", "--checkpoint-pubkey", v.pubKey), 26)
	r = v.run(t, "--stream")
	requireBroken(t, r, 26)
	require.Contains(t, r.stderr, "the log lost events the stream has")
}

// TestVerifySQLite: the same on the embedded dialect, whose triggers the
// rewrite drops and recreates.
func TestVerifySQLite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "log.db")
	db, err := sqlite.Open(ctx, sqlite.Config{Path: path})
	require.NoError(t, err)
	defer db.Close()
	_, err = db.Migrate(ctx)
	require.NoError(t, err)
	for i := range 10 {
		storetest.Append(t, db, storetest.Created(t, storetest.PackageID(i), "s", fmt.Sprint(i), "bob"))
	}
	env := []string{"ARTIFACTSTORE_DATABASE_URL=" + path}
	r := runCLI(t, env, "verify")
	require.Zero(t, r.code, r.stderr)
	require.Contains(t, r.stdout, "events 1..10 verified")

	raw, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	require.NoError(t, err)
	defer raw.Close()
	forged := []byte(`{"forged":1}`)
	digest := store.DigestOf(forged)
	for _, s := range []string{"DROP TRIGGER events_no_update",
		fmt.Sprintf("UPDATE events SET payload = x'%x', payload_digest = x'%x' WHERE sequence = 4", forged, digest[:]),
		"CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN SELECT RAISE(ABORT, 'append-only'); END"} {
		_, err := raw.ExecContext(ctx, s)
		require.NoError(t, err, s)
	}
	requireBroken(t, runCLI(t, env, "verify"), 4)
}
