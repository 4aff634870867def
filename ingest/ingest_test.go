package ingest_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/sourcegraph/conc"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
)

func TestMain(m *testing.M) { os.Exit(testenv.MainNoLeaks(m)) }

// env is one isolated test environment: a PostgreSQL schema, a nats-server
// and running ingest services.
type env struct {
	db     store.DB
	nats   *testenv.NATSServer
	client *nats.Conn
	reg    *prometheus.Registry
}

// setup starts a nats-server and a migrated schema and runs one ingest
// service (n services when n is given) against them.
func setup(t testing.TB, cfg ingest.Config, n ...int) *env {
	t.Helper()
	return setupDB(t, testenv.Postgres(t), cfg, n...)
}

func setupDB(t testing.TB, db store.DB, cfg ingest.Config, n ...int) *env {
	t.Helper()
	e := &env{db: db, nats: testenv.NATS(t), reg: prometheus.NewRegistry()}
	instances := 1
	if len(n) > 0 {
		instances = n[0]
	}
	for i := range instances {
		c := cfg
		c.Logger = testenv.Logger(t)
		if i == 0 {
			c.Registerer = e.reg
		}
		e.start(t, c)
	}
	e.client = e.nats.Connect(t)
	testenv.Eventually(t, 10*time.Second, func() bool {
		infos := discover[micro.Ping](t, e.client, "PING")
		return len(infos) == instances
	}, "%d ingest instances answer $SRV.PING", instances)
	return e
}

// start runs one service until the test ends and checks Run's result.
func (e *env) start(t testing.TB, cfg ingest.Config) {
	t.Helper()
	s, err := ingest.New(e.db, e.nats.Connect(t), cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg conc.WaitGroup
	var runErr error
	wg.Go(func() { runErr = s.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		assert.NoError(t, runErr, "Run")
	})
}

// discover sends a micro discovery request ($SRV.<verb>.artifactstore) and
// collects every instance's answer.
func discover[T any](t testing.TB, nc *nats.Conn, verb string) []T {
	t.Helper()
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	require.NoError(t, err)
	defer sub.Unsubscribe()
	require.NoError(t, nc.PublishRequest("$SRV."+verb+"."+ingest.ServiceName, inbox, nil))
	var out []T
	for {
		msg, err := sub.NextMsg(300 * time.Millisecond)
		if err != nil {
			return out
		}
		var v T
		require.NoError(t, json.Unmarshal(msg.Data, &v))
		out = append(out, v)
	}
}

func (e *env) call(t testing.TB, subject string, req, reply any) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := ingest.Call(ctx, e.client, subject, req, reply)
	var ie *ingest.Error
	if err != nil && !errors.As(err, &ie) {
		t.Fatalf("%s: transport error: %v", subject, err)
	}
	return err
}

func (e *env) create(t testing.TB, req ingest.CreateRequest) (ingest.CommandReply, error) {
	t.Helper()
	var r ingest.CommandReply
	err := e.call(t, ingest.SubjectCreate, req, &r)
	return r, err
}

func (e *env) finalize(t testing.TB, req ingest.FinalizeRequest) (ingest.CommandReply, error) {
	t.Helper()
	var r ingest.CommandReply
	err := e.call(t, ingest.SubjectFinalize, req, &r)
	return r, err
}

// raw sends body as is and returns the reply message.
func (e *env) raw(t testing.TB, subject string, body []byte) *nats.Msg {
	t.Helper()
	msg, err := e.client.Request(subject, body, 10*time.Second)
	require.NoError(t, err, "%s: no reply", subject)
	return msg
}

// project applies the log to the views, as a projector would.
func (e *env) project(t testing.TB) {
	t.Helper()
	_, err := store.Replay(context.Background(), e.db, store.RegistryViews{}, store.ReplayOptions{})
	require.NoError(t, err)
}

// log returns every event of the log.
func (e *env) log(t testing.TB) []store.Event {
	t.Helper()
	events, err := e.db.Fetch(context.Background(), 0, 100000)
	require.NoError(t, err)
	return events
}

func digest() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func TestCreateFinalizeGetList(t *testing.T) {
	t.Parallel()
	e := setup(t, ingest.Config{})
	ctx := context.Background()
	start := time.Now().Add(-time.Second)

	created, err := e.create(t, ingest.CreateRequest{Actor: "alice", Name: "web-app", Version: "1.2.3",
		Retention: &store.RetentionPolicy{Policy: store.RetentionKeepDays, KeepDays: 30}})
	require.NoError(t, err)
	assert.Equal(t, int64(1), created.Sequence)
	assert.Equal(t, store.TypePackageCreated, created.EventType)
	id, err := uuid.Parse(created.PackageID)
	require.NoError(t, err, "package id is a UUID")
	assert.Equal(t, uuid.Version(7), id.Version())
	assert.True(t, store.ValidToken(created.PackageID))
	assert.True(t, created.CreatedAt.After(start), "created_at %s", created.CreatedAt)

	d := digest()
	finalized, err := e.finalize(t, ingest.FinalizeRequest{Actor: "bob", PackageID: created.PackageID, ManifestDigest: d})
	require.NoError(t, err)
	assert.Equal(t, int64(2), finalized.Sequence)
	assert.Equal(t, store.TypePackageFinalized, finalized.EventType)
	assert.Equal(t, created.PackageID, finalized.PackageID)
	assert.False(t, finalized.CreatedAt.Before(created.CreatedAt))

	// The log holds both events with canonical payloads.
	events := e.log(t)
	require.Len(t, events, 2)
	wantCreated, _ := json.Marshal(store.PackageCreated{PackageID: created.PackageID, Name: "web-app", Version: "1.2.3",
		Retention: store.RetentionPolicy{Policy: store.RetentionKeepDays, KeepDays: 30}})
	assert.Equal(t, string(wantCreated), string(events[0].Payload))
	assert.Equal(t, "alice", events[0].Actor)
	assert.Equal(t, created.PackageID, events[0].SubjectID)
	assert.Equal(t, store.SubjectKindPackage, events[0].SubjectKind)
	assert.Equal(t, created.CreatedAt, events[0].CreatedAt)
	wantFinal := fmt.Sprintf(`{"package_id":%q,"manifest_digest":%q}`, created.PackageID, d)
	assert.Equal(t, wantFinal, string(events[1].Payload))
	assert.Equal(t, "bob", events[1].Actor)

	// Queries read the views once a projector has applied the log.
	err = e.call(t, ingest.SubjectGet, ingest.GetRequest{PackageID: created.PackageID}, nil)
	require.ErrorIs(t, err, ingest.ErrNotFound, "not projected yet")
	e.project(t)
	var view store.PackageView
	require.NoError(t, e.call(t, ingest.SubjectGet, ingest.GetRequest{PackageID: created.PackageID}, &view))
	want, err := e.db.Package(ctx, created.PackageID)
	require.NoError(t, err)
	assert.Equal(t, store.StatusFinalized, view.Status)
	assert.Equal(t, d, view.ManifestDigest.String())
	assert.Equal(t, "bob", view.FinalizedBy)
	require.NotNil(t, view.Retention)
	assert.Equal(t, 30, view.Retention.KeepDays)
	wantJSON, _ := json.Marshal(want)
	gotJSON, _ := json.Marshal(view)
	assert.JSONEq(t, string(wantJSON), string(gotJSON))

	// List with filters and paging.
	var ids []string
	for i := range 5 {
		r, err := e.create(t, ingest.CreateRequest{Actor: "alice", Name: "lib", Version: fmt.Sprintf("0.%d.0", i)})
		require.NoError(t, err)
		ids = append(ids, r.PackageID)
	}
	e.project(t)
	var page ingest.ListReply
	require.NoError(t, e.call(t, ingest.SubjectList, ingest.ListRequest{Name: "lib", Limit: 2}, &page))
	var got []string
	for {
		for _, p := range page.Packages {
			assert.Equal(t, "lib", p.Name)
			got = append(got, p.ID)
		}
		if page.Next == "" {
			break
		}
		after := page.Next
		page = ingest.ListReply{}
		require.NoError(t, e.call(t, ingest.SubjectList, ingest.ListRequest{Name: "lib", Limit: 2, After: after}, &page))
	}
	assert.Equal(t, ids, got, "UUIDv7 ids page in creation order")

	require.NoError(t, e.call(t, ingest.SubjectList, ingest.ListRequest{Status: store.StatusFinalized}, &page))
	require.Len(t, page.Packages, 1)
	assert.Equal(t, created.PackageID, page.Packages[0].ID)
	assert.Empty(t, page.Next)

	msg := e.raw(t, ingest.SubjectList, nil) // an empty body lists everything
	require.NoError(t, ingest.DecodeReply(msg, &page))
	assert.Len(t, page.Packages, 6)

	require.NoError(t, e.call(t, ingest.SubjectList, ingest.ListRequest{Name: "nothing"}, &page))
	assert.NotNil(t, page.Packages)
	assert.Empty(t, page.Packages)
	assert.Contains(t, string(e.raw(t, ingest.SubjectList, []byte(`{"name":"nothing"}`)).Data), `"packages":[]`)
}

func TestErrorReplies(t *testing.T) {
	t.Parallel()
	e := setup(t, ingest.Config{})
	created, err := e.create(t, ingest.CreateRequest{Actor: "a", Name: "taken", Version: "1.0.0"})
	require.NoError(t, err)
	finalized, err := e.create(t, ingest.CreateRequest{Actor: "a", Name: "taken", Version: "2.0.0"})
	require.NoError(t, err)
	_, err = e.finalize(t, ingest.FinalizeRequest{Actor: "a", PackageID: finalized.PackageID, ManifestDigest: digest()})
	require.NoError(t, err)

	d := digest()
	cases := []struct {
		name    string
		subject string
		body    string
		code    string
	}{
		{"empty body", ingest.SubjectCreate, ``, ingest.CodeInvalidArgument},
		{"not json", ingest.SubjectCreate, `hello`, ingest.CodeInvalidArgument},
		{"array", ingest.SubjectCreate, `[]`, ingest.CodeInvalidArgument},
		{"unknown field", ingest.SubjectCreate, `{"actor":"a","name":"n","version":"1","extra":1}`, ingest.CodeInvalidArgument},
		{"unknown retention field", ingest.SubjectCreate, `{"actor":"a","name":"n","version":"1","retention":{"policy":"keep_forever","x":1}}`, ingest.CodeInvalidArgument},
		{"duplicate key", ingest.SubjectCreate, `{"actor":"a","name":"n","version":"1","name":"m"}`, ingest.CodeInvalidArgument},
		{"key in other case", ingest.SubjectCreate, `{"ACTOR":"a","name":"n","version":"1"}`, ingest.CodeInvalidArgument},
		{"key folding to a field", ingest.SubjectCreate, `{"actor":"a","name":"n","ver\u017fion":"1"}`, ingest.CodeInvalidArgument},
		{"duplicate nested key", ingest.SubjectCreate, `{"actor":"a","name":"n","version":"1","retention":{"policy":"keep_days","keep_days":1,"keep_days":2}}`, ingest.CodeInvalidArgument},
		{"padded actor", ingest.SubjectCreate, `{"actor":" alice","name":"n","version":"1"}`, ingest.CodeInvalidArgument},
		{"two objects", ingest.SubjectCreate, `{"actor":"a","name":"n","version":"1"}{}`, ingest.CodeInvalidArgument},
		{"trailing garbage", ingest.SubjectCreate, `{"actor":"a","name":"n","version":"1"} x`, ingest.CodeInvalidArgument},
		{"wrong type", ingest.SubjectCreate, `{"actor":"a","name":1,"version":"1"}`, ingest.CodeInvalidArgument},
		{"missing actor", ingest.SubjectCreate, `{"name":"n","version":"1"}`, ingest.CodeInvalidArgument},
		{"blank actor", ingest.SubjectCreate, `{"actor":"  ","name":"n","version":"1"}`, ingest.CodeInvalidArgument},
		{"missing name", ingest.SubjectCreate, `{"actor":"a","version":"1"}`, ingest.CodeInvalidArgument},
		{"name with dot", ingest.SubjectCreate, `{"actor":"a","name":"a.b","version":"1"}`, ingest.CodeInvalidArgument},
		{"name with wildcard", ingest.SubjectCreate, `{"actor":"a","name":"a*","version":"1"}`, ingest.CodeInvalidArgument},
		{"name too long", ingest.SubjectCreate, `{"actor":"a","name":"` + strings.Repeat("n", 129) + `","version":"1"}`, ingest.CodeInvalidArgument},
		{"missing version", ingest.SubjectCreate, `{"actor":"a","name":"n"}`, ingest.CodeInvalidArgument},
		{"version with space", ingest.SubjectCreate, `{"actor":"a","name":"n","version":"1 0"}`, ingest.CodeInvalidArgument},
		{"version empty token", ingest.SubjectCreate, `{"actor":"a","name":"n","version":"1..0"}`, ingest.CodeInvalidArgument},
		{"bad policy", ingest.SubjectCreate, `{"actor":"a","name":"n","version":"1","retention":{"policy":"forever"}}`, ingest.CodeInvalidArgument},
		{"keep_days zero", ingest.SubjectCreate, `{"actor":"a","name":"n","version":"1","retention":{"policy":"keep_days"}}`, ingest.CodeInvalidArgument},
		{"bad command id", ingest.SubjectCreate, `{"command_id":"a b","actor":"a","name":"n","version":"1"}`, ingest.CodeInvalidArgument},
		{"too large", ingest.SubjectCreate, `{"actor":"` + strings.Repeat("a", ingest.MaxRequestBytes) + `","name":"n","version":"1"}`, ingest.CodeInvalidArgument},
		{"duplicate name version", ingest.SubjectCreate, `{"actor":"a","name":"taken","version":"1.0.0"}`, ingest.CodeConflict},
		{"finalize missing digest", ingest.SubjectFinalize, `{"actor":"a","package_id":"` + created.PackageID + `"}`, ingest.CodeInvalidArgument},
		{"finalize uppercase digest", ingest.SubjectFinalize, `{"actor":"a","package_id":"` + created.PackageID + `","manifest_digest":"` + strings.ToUpper(d) + `"}`, ingest.CodeInvalidArgument},
		{"finalize short digest", ingest.SubjectFinalize, `{"actor":"a","package_id":"` + created.PackageID + `","manifest_digest":"abc"}`, ingest.CodeInvalidArgument},
		{"finalize bad package id", ingest.SubjectFinalize, `{"actor":"a","package_id":"a.b","manifest_digest":"` + d + `"}`, ingest.CodeInvalidArgument},
		{"finalize missing actor", ingest.SubjectFinalize, `{"package_id":"` + created.PackageID + `","manifest_digest":"` + d + `"}`, ingest.CodeInvalidArgument},
		{"finalize unknown", ingest.SubjectFinalize, `{"actor":"a","package_id":"` + uuid.Must(uuid.NewV7()).String() + `","manifest_digest":"` + d + `"}`, ingest.CodeNotFound},
		{"finalize twice", ingest.SubjectFinalize, `{"actor":"a","package_id":"` + finalized.PackageID + `","manifest_digest":"` + d + `"}`, ingest.CodeConflict},
		{"get missing id", ingest.SubjectGet, `{}`, ingest.CodeInvalidArgument},
		{"get unknown", ingest.SubjectGet, `{"package_id":"nope"}`, ingest.CodeNotFound},
		{"list bad status", ingest.SubjectList, `{"status":"gone"}`, ingest.CodeInvalidArgument},
		{"list bad limit", ingest.SubjectList, `{"limit":100000}`, ingest.CodeInvalidArgument},
		{"list unknown field", ingest.SubjectList, `{"nme":"x"}`, ingest.CodeInvalidArgument},
	}
	status := map[string]string{ingest.CodeInvalidArgument: "400", ingest.CodeNotFound: "404", ingest.CodeConflict: "409"}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.log(t)
			msg := e.raw(t, tc.subject, []byte(tc.body))
			assert.Equal(t, status[tc.code], msg.Header.Get(micro.ErrorCodeHeader), "Nats-Service-Error-Code")
			assert.NotEmpty(t, msg.Header.Get(micro.ErrorHeader), "Nats-Service-Error")
			var body map[string]map[string]string
			require.NoError(t, json.Unmarshal(msg.Data, &body), "body %s", msg.Data)
			require.Len(t, body, 1)
			require.Len(t, body["error"], 2, "error has code and message: %s", msg.Data)
			assert.Equal(t, tc.code, body["error"]["code"])
			assert.NotEmpty(t, body["error"]["message"])
			err := ingest.DecodeReply(msg, nil)
			var ie *ingest.Error
			require.ErrorAs(t, err, &ie)
			assert.Equal(t, tc.code, ie.Code)
			// A rejected command appends nothing.
			assert.Equal(t, before, e.log(t), "the log is unchanged")
		})
	}
	head, err := e.db.Head(context.Background())
	require.NoError(t, err)
	assert.Equal(t, int64(3), head)
}

func TestIdempotentRetries(t *testing.T) {
	t.Parallel()
	e := setup(t, ingest.Config{})
	req := ingest.CreateRequest{CommandID: uuid.NewString(), Actor: "a", Name: "idem", Version: "1.0.0"}
	first := e.raw(t, ingest.SubjectCreate, mustJSON(req))
	require.Empty(t, first.Header.Get(micro.ErrorCodeHeader), "%s", first.Data)
	for range 3 {
		again := e.raw(t, ingest.SubjectCreate, mustJSON(req))
		assert.Equal(t, string(first.Data), string(again.Data), "a retry returns the first reply")
	}
	var created ingest.CommandReply
	require.NoError(t, json.Unmarshal(first.Data, &created))

	fin := ingest.FinalizeRequest{CommandID: "fin:" + created.PackageID, Actor: "a", PackageID: created.PackageID, ManifestDigest: digest()}
	firstFin := e.raw(t, ingest.SubjectFinalize, mustJSON(fin))
	require.Empty(t, firstFin.Header.Get(micro.ErrorCodeHeader), "%s", firstFin.Data)
	again := e.raw(t, ingest.SubjectFinalize, mustJSON(fin))
	assert.Equal(t, string(firstFin.Data), string(again.Data))
	assert.Len(t, e.log(t), 2, "retries append nothing")

	// A rejected command keeps nothing of its id: a retry is decided anew.
	missing := ingest.FinalizeRequest{CommandID: uuid.NewString(), Actor: "a", PackageID: "unknown", ManifestDigest: digest()}
	_, err := e.finalize(t, missing)
	require.ErrorIs(t, err, ingest.ErrNotFound)
	_, err = e.finalize(t, missing)
	require.ErrorIs(t, err, ingest.ErrNotFound)

	// Without a command id the same create is a conflict.
	req.CommandID = ""
	_, err = e.create(t, req)
	require.ErrorIs(t, err, ingest.ErrConflict)
	assert.Len(t, e.log(t), 2)
}

func TestIdempotentConcurrent(t *testing.T) {
	t.Parallel()
	// Two instances share the load, so copies meet in one batch, in
	// concurrent batches and in different processes' transactions.
	e := setup(t, ingest.Config{BatchDelay: 2 * time.Millisecond}, 2)
	const copies = 24
	for round := range 3 {
		req := ingest.CreateRequest{CommandID: uuid.NewString(), Actor: "a", Name: "idem", Version: fmt.Sprintf("%d.0.0", round)}
		replies := make([]string, copies)
		var wg conc.WaitGroup
		for i := range copies {
			wg.Go(func() { replies[i] = string(e.raw(t, ingest.SubjectCreate, mustJSON(req)).Data) })
		}
		wg.Wait()
		for i := range copies {
			require.Equal(t, replies[0], replies[i], "copy %d", i)
		}
		var r ingest.CommandReply
		require.NoError(t, json.Unmarshal([]byte(replies[0]), &r), replies[0])
	}
	assert.Len(t, e.log(t), 3, "one event per command id")
}

func TestConcurrentConflicts(t *testing.T) {
	t.Parallel()
	e := setup(t, ingest.Config{BatchDelay: time.Millisecond}, 2)
	const racers = 24
	for round := range 3 {
		// Creates of one (name, version): exactly one wins.
		errs := make([]error, racers)
		replies := make([]ingest.CommandReply, racers)
		var wg conc.WaitGroup
		for i := range racers {
			wg.Go(func() {
				req := ingest.CreateRequest{Actor: fmt.Sprintf("racer-%d", i), Name: "race", Version: fmt.Sprintf("%d", round)}
				if i%2 == 0 {
					req.CommandID = uuid.NewString()
				}
				replies[i], errs[i] = e.create(t, req)
			})
		}
		wg.Wait()
		winner := -1
		for i, err := range errs {
			if err == nil {
				require.Equal(t, -1, winner, "two creates won")
				winner = i
				continue
			}
			require.ErrorIs(t, err, ingest.ErrConflict)
		}
		require.NotEqual(t, -1, winner, "no create won")

		// Finalizes of one package: exactly one wins.
		id := replies[winner].PackageID
		for i := range racers {
			wg.Go(func() {
				req := ingest.FinalizeRequest{Actor: "a", PackageID: id, ManifestDigest: digest()}
				if i%2 == 0 {
					req.CommandID = uuid.NewString()
				}
				_, errs[i] = e.finalize(t, req)
			})
		}
		wg.Wait()
		wins := 0
		for _, err := range errs {
			if err == nil {
				wins++
				continue
			}
			require.ErrorIs(t, err, ingest.ErrConflict)
		}
		require.Equal(t, 1, wins, "finalizes won")
	}
	assert.Len(t, e.log(t), 6)
}

// TestGroupCommit sends many commands at once, some of them bad: they are
// committed in fewer transactions than commands, and the bad ones fail alone.
func TestGroupCommit(t *testing.T) {
	t.Parallel()
	e := setup(t, ingest.Config{BatchDelay: 20 * time.Millisecond, Committers: 1})
	taken, err := e.create(t, ingest.CreateRequest{Actor: "a", Name: "batch", Version: "0"})
	require.NoError(t, err)

	const n = 60
	errs := make([]error, n)
	replies := make([]ingest.CommandReply, n)
	var wg conc.WaitGroup
	for i := range n {
		wg.Go(func() {
			switch i % 4 {
			case 0: // conflicts with an existing package
				_, errs[i] = e.create(t, ingest.CreateRequest{Actor: "a", Name: "batch", Version: "0"})
			case 1: // unknown package
				_, errs[i] = e.finalize(t, ingest.FinalizeRequest{Actor: "a", PackageID: uuid.NewString(), ManifestDigest: digest()})
			default:
				replies[i], errs[i] = e.create(t, ingest.CreateRequest{Actor: "a", Name: "batch", Version: fmt.Sprintf("%d.0", i)})
			}
		})
	}
	// Two finalizes of one package in the same burst: one wins.
	finErrs := make([]error, 2)
	for i := range finErrs {
		wg.Go(func() {
			_, finErrs[i] = e.finalize(t, ingest.FinalizeRequest{Actor: "a", PackageID: taken.PackageID, ManifestDigest: digest()})
		})
	}
	wg.Wait()
	seqs := map[int64]bool{}
	for i, err := range errs {
		switch i % 4 {
		case 0:
			require.ErrorIs(t, err, ingest.ErrConflict, "command %d", i)
		case 1:
			require.ErrorIs(t, err, ingest.ErrNotFound, "command %d", i)
		default:
			require.NoError(t, err, "command %d", i)
			require.False(t, seqs[replies[i].Sequence], "sequence %d given twice", replies[i].Sequence)
			seqs[replies[i].Sequence] = true
		}
	}
	assert.ElementsMatch(t, []bool{true, false}, []bool{finErrs[0] == nil, finErrs[1] == nil}, "finalize errors %v", finErrs)
	assert.Len(t, e.log(t), 1+n/2+1)

	// Fewer transactions than commands.
	h := histogram(t, e.reg, "artifactstore_ingest_batch_size")
	assert.Less(t, h.GetSampleCount(), uint64(n/2), "batches")
	assert.EqualValues(t, 1+n+2, h.GetSampleSum(), "commands in batches")
	assert.EqualValues(t, n/2+2, counter(t, e.reg, "artifactstore_ingest_events_appended_total"))
	// The first batch read the head; later ones chained to the one expected.
	right := counterWith(t, e.reg, "artifactstore_ingest_head_guesses_total", map[string]string{"outcome": "right"})
	wrong := counterWith(t, e.reg, "artifactstore_ingest_head_guesses_total", map[string]string{"outcome": "wrong"})
	assert.Positive(t, right, "head guesses right")
	assert.Less(t, right+wrong, float64(h.GetSampleCount()), "a guess per batch but the first")
}

func histogram(t testing.TB, reg *prometheus.Registry, name string) *dto.Histogram {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetHistogram()
		}
	}
	t.Fatalf("metric %s not found", name)
	return nil
}

func counter(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

// TestDatabaseStopped stops a PostgreSQL cluster of the test's own under a
// running service: commands are answered unavailable within the request
// timeout, and the service recovers by itself when the database returns.
func TestDatabaseStopped(t *testing.T) {
	t.Parallel()
	cluster, err := testenv.NewCluster()
	require.NoError(t, err)
	t.Cleanup(cluster.Remove)
	require.NoError(t, cluster.Start())
	db := testenv.OpenPostgres(t, cluster.URL(), "ingest")
	const timeout = time.Second
	e := setupDB(t, db, ingest.Config{RequestTimeout: timeout})

	_, err = e.create(t, ingest.CreateRequest{Actor: "a", Name: "before", Version: "1"})
	require.NoError(t, err)

	require.NoError(t, cluster.Stop())
	for i := range 3 {
		start := time.Now()
		_, err = e.create(t, ingest.CreateRequest{CommandID: fmt.Sprintf("down-%d", i), Actor: "a", Name: "down", Version: fmt.Sprint(i)})
		require.ErrorIs(t, err, ingest.ErrUnavailable)
		assert.Less(t, time.Since(start), timeout+500*time.Millisecond, "answered within the request timeout")
		err = e.call(t, ingest.SubjectGet, ingest.GetRequest{PackageID: "x"}, nil)
		require.ErrorIs(t, err, ingest.ErrUnavailable)
	}

	require.NoError(t, cluster.Start())
	var reply ingest.CommandReply
	testenv.Eventually(t, 30*time.Second, func() bool {
		reply, err = e.create(t, ingest.CreateRequest{CommandID: "after", Actor: "a", Name: "after", Version: "1"})
		return err == nil
	}, "a create succeeds after the database returns (last error %v)", err)
	assert.Equal(t, int64(2), reply.Sequence, "the failed commands appended nothing")
	events := e.log(t)
	require.Len(t, events, 2)

	// Run checks its dependencies at start.
	require.NoError(t, cluster.Stop())
	s, err := ingest.New(db, e.client, ingest.Config{RequestTimeout: 200 * time.Millisecond, Logger: testenv.Logger(t)})
	require.NoError(t, err)
	require.ErrorIs(t, s.Run(context.Background()), store.ErrUnavailable)
}

func TestDiscovery(t *testing.T) {
	t.Parallel()
	e := setup(t, ingest.Config{QueueGroup: "ingest-test"}, 2)
	_, err := e.create(t, ingest.CreateRequest{Actor: "a", Name: "disc", Version: "1"})
	require.NoError(t, err)
	_, err = e.create(t, ingest.CreateRequest{Actor: "a", Name: "disc", Version: "1"})
	require.ErrorIs(t, err, ingest.ErrConflict)

	pings := discover[micro.Ping](t, e.client, "PING")
	require.Len(t, pings, 2)
	assert.NotEqual(t, pings[0].ID, pings[1].ID)
	assert.Equal(t, micro.PingResponseType, pings[0].Type)

	infos := discover[micro.Info](t, e.client, "INFO")
	require.Len(t, infos, 2)
	for _, info := range infos {
		assert.Equal(t, ingest.ServiceName, info.Name)
		assert.Equal(t, ingest.ServiceVersion, info.Version)
		assert.Equal(t, "postgres", info.Metadata["dialect"])
		subjects := map[string]string{}
		for _, ep := range info.Endpoints {
			subjects[ep.Name] = ep.Subject
			assert.Equal(t, "ingest-test", ep.QueueGroup)
		}
		assert.Equal(t, map[string]string{
			"create":   ingest.SubjectCreate,
			"finalize": ingest.SubjectFinalize,
			"get":      ingest.SubjectGet,
			"list":     ingest.SubjectList,
		}, subjects)
	}

	stats := discover[micro.Stats](t, e.client, "STATS")
	require.Len(t, stats, 2)
	requests := 0
	for _, s := range stats {
		assert.Equal(t, micro.StatsResponseType, s.Type)
		for _, ep := range s.Endpoints {
			if ep.Name == "create" {
				requests += ep.NumRequests
			}
		}
	}
	assert.Equal(t, 2, requests, "create requests over both instances")

	// The single-instance form of the subjects works too.
	msg, err := e.client.Request("$SRV.INFO."+ingest.ServiceName+"."+infos[0].ID, nil, 5*time.Second)
	require.NoError(t, err)
	var one micro.Info
	require.NoError(t, json.Unmarshal(msg.Data, &one))
	assert.Equal(t, infos[0].ID, one.ID)
}

// TestShutdownDrains cancels a service with commands in flight: every
// request is answered, and every success is in the log.
func TestShutdownDrains(t *testing.T) {
	t.Parallel()
	db := testenv.Postgres(t)
	ns := testenv.NATS(t)
	s, err := ingest.New(db, ns.Connect(t), ingest.Config{Logger: testenv.Logger(t), BatchDelay: 5 * time.Millisecond})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var run conc.WaitGroup
	var runErr error
	run.Go(func() { runErr = s.Run(ctx) })
	client := ns.Connect(t)
	testenv.Eventually(t, 10*time.Second, func() bool { return len(discover[micro.Ping](t, client, "PING")) == 1 }, "service up")

	const n = 200
	var mu sync.Mutex
	var ok []int64
	var replies conc.WaitGroup
	started := make(chan struct{}, n)
	for i := range n {
		replies.Go(func() {
			started <- struct{}{}
			var r ingest.CommandReply
			err := ingest.Call(context.Background(), client, ingest.SubjectCreate,
				ingest.CreateRequest{Actor: "a", Name: "drain", Version: fmt.Sprint(i)}, &r)
			if err == nil {
				mu.Lock()
				ok = append(ok, r.Sequence)
				mu.Unlock()
				return
			}
			// Requests after the stop find the service gone or stopping.
			if !errors.Is(err, ingest.ErrUnavailable) && !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("create %d: %v", i, err)
			}
		})
	}
	for range n / 2 {
		<-started
	}
	cancel()
	run.Wait()
	require.NoError(t, runErr)
	replies.Wait()
	events, err := db.Fetch(context.Background(), 0, 1000)
	require.NoError(t, err)
	inLog := map[int64]bool{}
	for _, e := range events {
		inLog[e.Sequence] = true
	}
	for _, seq := range ok {
		assert.True(t, inLog[seq], "acknowledged sequence %d is in the log", seq)
	}
	assert.Len(t, events, len(ok), "nothing appended that was not acknowledged")
}

func TestSQLite(t *testing.T) {
	t.Parallel()
	e := setupDB(t, testenv.SQLite(t), ingest.Config{})
	created, err := e.create(t, ingest.CreateRequest{CommandID: "c1", Actor: "a", Name: "lite", Version: "1.0"})
	require.NoError(t, err)
	again, err := e.create(t, ingest.CreateRequest{CommandID: "c1", Actor: "a", Name: "lite", Version: "1.0"})
	require.NoError(t, err)
	assert.Equal(t, created, again)
	_, err = e.create(t, ingest.CreateRequest{Actor: "a", Name: "lite", Version: "1.0"})
	require.ErrorIs(t, err, ingest.ErrConflict)
	_, err = e.finalize(t, ingest.FinalizeRequest{Actor: "a", PackageID: created.PackageID, ManifestDigest: digest()})
	require.NoError(t, err)
	_, err = e.finalize(t, ingest.FinalizeRequest{Actor: "a", PackageID: created.PackageID, ManifestDigest: digest()})
	require.ErrorIs(t, err, ingest.ErrConflict)
	_, err = e.finalize(t, ingest.FinalizeRequest{Actor: "a", PackageID: "nope", ManifestDigest: digest()})
	require.ErrorIs(t, err, ingest.ErrNotFound)
	assert.Len(t, e.log(t), 2)
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	db := testenv.SQLite(t)
	nc := testenv.NATS(t).Connect(t)
	for field, cfg := range map[string]ingest.Config{
		"QueueGroup":       {QueueGroup: "a b"},
		"RequestTimeout":   {RequestTimeout: time.Millisecond},
		"MaxBatch":         {MaxBatch: 100000},
		"BatchDelay":       {BatchDelay: time.Second},
		"Committers":       {Committers: 65},
		"MaxPending":       {MaxPending: -1},
		"MaxRetries":       {MaxRetries: 101},
		"QueryConcurrency": {QueryConcurrency: -1},
	} {
		_, err := ingest.New(db, nc, cfg)
		require.Error(t, err, field)
		assert.Contains(t, err.Error(), field)
	}
	reg := prometheus.NewRegistry()
	_, err := ingest.New(db, nc, ingest.Config{Registerer: reg})
	require.NoError(t, err)
	_, err = ingest.New(db, nc, ingest.Config{Registerer: reg})
	require.Error(t, err, "metrics registered twice")
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// TestNATSRestart restarts the nats-server under a running service: it
// answers again once its connection is back, without a restart of its own.
func TestNATSRestart(t *testing.T) {
	t.Parallel()
	e := setup(t, ingest.Config{})
	_, err := e.create(t, ingest.CreateRequest{Actor: "a", Name: "restart", Version: "1"})
	require.NoError(t, err)
	e.nats.Restart()
	testenv.Eventually(t, 20*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		err = ingest.Call(ctx, e.client, ingest.SubjectCreate, ingest.CreateRequest{CommandID: "after-restart", Actor: "a", Name: "restart", Version: "2"}, nil)
		return err == nil
	}, "a create succeeds after the restart (last error %v)", err)
	assert.Len(t, e.log(t), 2)
}
