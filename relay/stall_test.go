package relay_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/relay"
)

// TestBlackHoledPublishesDoNotWedge makes the server drop the relay's
// publishes without an answer while its connection stays healthy (what a
// stream without a leader does), for many sessions in a row, then lets
// them through again. Each session leaves a window of futures that no ack
// or error will ever resolve; the relay must not let them pile up in its
// JetStream context until PublishMsgAsync refuses every publish
// (ErrTooManyStalledMsgs), and must catch up once publishes get through.
func TestBlackHoledPublishesDoNotWedge(t *testing.T) {
	t.Parallel()
	const pass = "s3cret"
	users := func(relayPerms *server.Permissions) func(*server.Options) {
		return func(o *server.Options) {
			o.Users = []*server.User{
				{Username: "relay", Password: pass, Permissions: relayPerms},
				{Username: "admin", Password: pass},
			}
		}
	}
	// Publishing to the events is dropped (a permissions violation is
	// reported asynchronously; the message gets no reply).
	blackHole := &server.Permissions{Publish: &server.SubjectPermission{Deny: []string{relay.Subjects}}}
	ns := testenv.NATSWith(t, users(nil))
	db := testenv.Postgres(t)
	e := &env{db: db, ns: ns, js: ns.JetStream(t, nats.UserInfo("admin", pass)), stream: testenv.Name("EVENTS")}

	// The relay's own JetStream context, as cmd made it before the fix: no
	// publish-async timeout. Its max pending fits four windows.
	const window = 64
	nc := ns.Connect(t, nats.UserInfo("relay", pass), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4*window))
	require.NoError(t, err)
	cfg := e.config(t)
	cfg.MaxInFlight = window
	cfg.AckTimeout = 300 * time.Millisecond
	r, err := relay.New(db, js, cfg)
	require.NoError(t, err)
	in := &instance{r: r, nc: nc, done: make(chan struct{})}
	in.start(t)

	e.appendEvents(t, db, 100, 50)
	e.awaitCaughtUp(t, 20*time.Second)

	require.NoError(t, ns.Reload(users(blackHole)))
	e.appendEvents(t, db, 2000, 100)
	sessions := func() float64 { return relay.Errors(r, "timeout") + relay.Errors(r, "nats") }
	testenv.Eventually(t, 60*time.Second, func() bool { return sessions() >= 12 },
		"12 sessions whose publishes were black-holed")
	require.Equal(t, int64(100), r.Position(), "nothing got through the black hole")

	require.NoError(t, ns.Reload(users(nil)))
	e.appendEvents(t, db, 100, 10)
	e.awaitCaughtUp(t, 20*time.Second)
	e.requireStreamEqualsLog(t)
	require.NoError(t, in.stop())
	require.Zero(t, js.PublishAsyncPending(), "no future was left unresolved")
}
