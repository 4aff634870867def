package ingest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/internal/testenv"
)

// hostileReplies are reply subjects a client could ask ingest to answer
// on to write where it may not: the events stream, a KV bucket, the
// JetStream API, ingest's own command subjects.
var hostileReplies = []string{
	"artifactstore.events.v1.package.created.x",
	"$KV.ARTIFACTSTORE_PROJECTORS.registry.evil",
	"$JS.API.STREAM.DELETE.X",
	"artifactstore.cmd.package.create",
}

// TestReplyOutsideInboxIsDropped: a valid request of every endpoint whose
// reply subject is outside the inbox namespace is dropped before it is
// decoded: nothing is appended, nothing is published on that subject (a
// stream capturing artifactstore.events.> stays empty, the KV bucket gets
// no key, stream X is not deleted), the drop is counted per endpoint, and
// a normal request afterwards is answered.
func TestReplyOutsideInboxIsDropped(t *testing.T) {
	t.Parallel()
	// One committer and one query slot: a request's reply goes out before
	// the next request of the endpoint is handled, so the barrier request
	// below is answered only after any reply to the hostile ones was sent.
	e := setup(t, ingest.Config{Committers: 1, QueryConcurrency: 1})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	js, err := jetstream.New(e.client)
	require.NoError(t, err)
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "CAPTURE", Subjects: []string{"artifactstore.events.>"}})
	require.NoError(t, err)
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "X", Subjects: []string{"x.>"}})
	require.NoError(t, err)
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "ARTIFACTSTORE_PROJECTORS"})
	require.NoError(t, err)

	open, err := e.create(t, ingest.CreateRequest{Actor: "a", Name: "target", Version: "1"})
	require.NoError(t, err)
	e.project(t) // so that get finds it
	head := len(e.log(t))

	// What arrives on a hostile subject is seen by the same connection that
	// receives the barrier's reply, so it would be delivered before it. The
	// connection does not see its own requests (NoEcho), so that what
	// arrives on artifactstore.cmd.package.create can only be a reply.
	attacker, err := nats.Connect(e.nats.URL(), nats.NoEcho())
	require.NoError(t, err)
	t.Cleanup(attacker.Close)
	subs := map[string]*nats.Subscription{}
	for _, r := range hostileReplies {
		sub, err := attacker.SubscribeSync(r)
		require.NoError(t, err)
		subs[r] = sub
	}

	bodies := map[string]func(i int) []byte{
		ingest.SubjectCreate: func(i int) []byte {
			return mustJSON(ingest.CreateRequest{CommandID: fmt.Sprint("hostile-", i), Actor: "a", Name: "hostile", Version: fmt.Sprint(i)})
		},
		ingest.SubjectFinalize: func(i int) []byte {
			return mustJSON(ingest.FinalizeRequest{CommandID: fmt.Sprint("hostile-fin-", i), Actor: "a", PackageID: open.PackageID, ManifestDigest: digest()})
		},
		ingest.SubjectGet:  func(int) []byte { return mustJSON(ingest.GetRequest{PackageID: open.PackageID}) },
		ingest.SubjectList: func(int) []byte { return []byte(`{}`) },
	}
	endpoints := map[string]string{ingest.SubjectCreate: "create", ingest.SubjectFinalize: "finalize",
		ingest.SubjectGet: "get", ingest.SubjectList: "list"}
	for subject, body := range bodies {
		for i, reply := range hostileReplies {
			require.NoError(t, attacker.PublishRequest(subject, reply, body(i)))
		}
		// A request without a reply subject cannot be answered either.
		require.NoError(t, attacker.Publish(subject, body(len(hostileReplies))))
		// The barrier: a normal request of the same endpoint.
		msg, err := attacker.Request(subject, body(len(hostileReplies)+1), 10*time.Second)
		require.NoError(t, err, subject)
		assert.Empty(t, msg.Header.Get("Nats-Service-Error-Code"), "%s: %s", subject, msg.Data)
	}

	for r, sub := range subs {
		n, _, err := sub.Pending()
		require.NoError(t, err)
		assert.Zero(t, n, "messages published on %s", r)
	}
	// The barrier create and finalize were appended; nothing else.
	assert.Equal(t, head+2, len(e.log(t)), "only the two normal commands were appended")
	capture, err := js.Stream(ctx, "CAPTURE")
	require.NoError(t, err)
	info, err := capture.Info(ctx)
	require.NoError(t, err)
	assert.Zero(t, info.State.Msgs, "messages in artifactstore.events.>")
	keys, err := kv.ListKeys(ctx)
	require.NoError(t, err)
	for k := range keys.Keys() {
		t.Errorf("key %q in the KV bucket", k)
	}
	_, err = js.Stream(ctx, "X")
	assert.NoError(t, err, "stream X still exists")
	for _, ep := range endpoints {
		require.EqualValues(t, len(hostileReplies), counterWith(t, e.reg, "artifactstore_ingest_rejected_replies_total",
			map[string]string{"endpoint": ep, "reason": "not_inbox"}), ep)
		require.EqualValues(t, 1, counterWith(t, e.reg, "artifactstore_ingest_rejected_replies_total",
			map[string]string{"endpoint": ep, "reason": "no_reply"}), ep)
	}
}

// counterWith returns the value of the counter name with exactly labels,
// failing when the metric family is not registered (a typo must not read
// as zero). A registered family without that series is 0.
func counterWith(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue series
				}
			}
			return m.GetCounter().GetValue()
		}
		return 0
	}
	t.Fatalf("metric %s is not registered", name)
	return 0
}

// TestReplyPrefixesConfigured: with ReplyPrefixes set to a per-user inbox
// prefix, replies go to that prefix only; the default prefix is no longer
// answered.
func TestReplyPrefixesConfigured(t *testing.T) {
	t.Parallel()
	// One query slot: the barrier below is answered after the first
	// request's reply (if any) was sent.
	e := setup(t, ingest.Config{ReplyPrefixes: []string{"_INBOX_client."}, QueryConcurrency: 1})
	nc, err := nats.Connect(e.nats.URL(), nats.CustomInboxPrefix("_INBOX_client"))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	sub, err := nc.SubscribeSync("_INBOX.default")
	require.NoError(t, err)
	require.NoError(t, nc.PublishRequest(ingest.SubjectList, "_INBOX.default", []byte(`{}`)))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var reply ingest.ListReply
	require.NoError(t, ingest.Call(ctx, nc, ingest.SubjectList, ingest.ListRequest{}, &reply), "the per-user inbox is answered")
	n, _, err := sub.Pending()
	require.NoError(t, err)
	require.Zero(t, n, "_INBOX. is not answered any more")
	require.EqualValues(t, 1, counterWith(t, e.reg, "artifactstore_ingest_rejected_replies_total",
		map[string]string{"endpoint": "list", "reason": "not_inbox"}))
}

func TestReplyPrefixesValidated(t *testing.T) {
	t.Parallel()
	db := testenv.SQLite(t)
	nc := testenv.NATS(t).Connect(t)
	for _, p := range []string{"_INBOX", "_INBOX_client", "_INBOX.*.", "_INBOX.>.", "a..", ".", "",
		"my inbox.", "$JS.", "$KV.ARTIFACTSTORE_PROJECTORS.", "$SYS.", "artifactstore.", "artifactstore.events."} {
		_, err := ingest.New(db, nc, ingest.Config{ReplyPrefixes: []string{ingest.DefaultReplyPrefix, p}})
		require.Error(t, err, "prefix %q", p)
		assert.Contains(t, err.Error(), "ReplyPrefixes", "prefix %q", p)
	}
	for _, p := range []string{"_INBOX.", "_INBOX_client.", "_R_.", "inbox.team-a."} {
		_, err := ingest.New(db, nc, ingest.Config{ReplyPrefixes: []string{p}})
		require.NoError(t, err, "prefix %q", p)
	}
}
