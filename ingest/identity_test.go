package ingest_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/sourcegraph/conc"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/internal/testenv"
)

// identityServer starts a nats-server where ingest runs in account SVC and
// clients in account CLIENTS reach it only through a service import with
// share: true, so every command carries the requester's identity.
func identityServer(t *testing.T) string {
	t.Helper()
	port := testenv.FreePort()
	conf := fmt.Sprintf(`
listen: 127.0.0.1:%d
accounts: {
  SVC: {
    users: [{user: ingest, password: ingest-pw}]
    exports: [{service: "artifactstore.cmd.>"}, {service: "artifactstore.query.>"}]
  }
  CLIENTS: {
    users: [{user: alice, password: alice-pw}, {user: bob, password: bob-pw}]
    imports: [
      {service: {account: SVC, subject: "artifactstore.cmd.>"}, share: true}
      {service: {account: SVC, subject: "artifactstore.query.>"}}
    ]
  }
}
`, port)
	path := filepath.Join(t.TempDir(), "nats.conf")
	require.NoError(t, os.WriteFile(path, []byte(conf), 0o600))
	opts, err := server.ProcessConfigFile(path)
	require.NoError(t, err)
	opts.NoLog, opts.NoSigs = true, true
	ns, err := server.NewServer(opts)
	require.NoError(t, err)
	go ns.Start()
	require.True(t, ns.ReadyForConnections(10*time.Second))
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return fmt.Sprintf("nats://127.0.0.1:%d", port)
}

func TestActorMustBeTheAuthenticatedUser(t *testing.T) {
	t.Parallel()
	url := identityServer(t)
	db := testenv.Postgres(t)
	svcConn, err := nats.Connect(url, nats.UserInfo("ingest", "ingest-pw"))
	require.NoError(t, err)
	t.Cleanup(svcConn.Close)
	s, err := ingest.New(db, svcConn, ingest.Config{Identity: ingest.IdentityRequire, Logger: testenv.Logger(t)})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg conc.WaitGroup
	wg.Go(func() { require.NoError(t, s.Run(ctx)) })
	t.Cleanup(func() { cancel(); wg.Wait() })

	alice, err := nats.Connect(url, nats.UserInfo("alice", "alice-pw"))
	require.NoError(t, err)
	t.Cleanup(alice.Close)
	call := func(req any) (ingest.CommandReply, error) {
		var r ingest.CommandReply
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer ccancel()
		err := ingest.Call(cctx, alice, ingest.SubjectCreate, req, &r)
		return r, err
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		_, err := call(ingest.CreateRequest{Actor: "alice", Name: "warmup", Version: "1"})
		return err == nil
	}, "the service answers through the import")
	head, err := db.Head(context.Background())
	require.NoError(t, err)

	// alice claiming to be bob is refused, and nothing is written.
	_, err = call(ingest.CreateRequest{Actor: "bob", Name: "web", Version: "1.0.0"})
	require.ErrorIs(t, err, ingest.ErrPermissionDenied)
	require.Contains(t, err.Error(), `"alice"`)
	after, err := db.Head(context.Background())
	require.NoError(t, err)
	require.Equal(t, head, after, "a refused command appends nothing")

	// A forged Nats-Request-Info header is replaced by the server.
	data := []byte(`{"actor":"bob","name":"web","version":"1.0.1"}`)
	msg := &nats.Msg{Subject: ingest.SubjectCreate, Data: data, Header: nats.Header{}}
	msg.Header.Set("Nats-Request-Info", `{"acc":"CLIENTS","user":"bob"}`)
	reply, err := alice.RequestMsg(msg, 5*time.Second)
	require.NoError(t, err)
	require.ErrorIs(t, ingest.DecodeReply(reply, nil), ingest.ErrPermissionDenied)
	require.Equal(t, "403", reply.Header.Get("Nats-Service-Error-Code"))

	// Her own name goes through and is what the log records.
	r, err := call(ingest.CreateRequest{Actor: "alice", Name: "web", Version: "1.0.0"})
	require.NoError(t, err)
	events, err := db.Fetch(context.Background(), r.Sequence-1, 1)
	require.NoError(t, err)
	require.Equal(t, "alice", events[0].Actor)

	// A client inside ingest's own account carries no identity: refused in
	// require mode.
	var out ingest.CommandReply
	err = ingest.Call(context.Background(), svcConn, ingest.SubjectCreate, ingest.CreateRequest{Actor: "alice", Name: "x", Version: "1"}, &out)
	require.ErrorIs(t, err, ingest.ErrPermissionDenied)
	require.True(t, strings.Contains(err.Error(), "service import"))
}
