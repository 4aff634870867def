package ingest_test

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/sourcegraph/conc"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store"
)

// requireReused requires msg to be the command_id_reused error reply.
func requireReused(t *testing.T, msg *nats.Msg, what string) {
	t.Helper()
	require.Equal(t, "422", msg.Header.Get(micro.ErrorCodeHeader), "%s: %s", what, msg.Data)
	err := ingest.DecodeReply(msg, nil)
	require.ErrorIs(t, err, ingest.ErrCommandIDReused, what)
	var ie *ingest.Error
	require.ErrorAs(t, err, &ie)
	assert.Equal(t, ingest.CodeCommandIDReused, ie.Code)
}

// TestReusedCommandID: a command_id already used with other parameters
// (another name, actor, retention, package, digest or command) is refused
// with command_id_reused and changes nothing; with the same parameters it
// returns the first reply. On both dialects.
func TestReusedCommandID(t *testing.T) {
	t.Parallel()
	for name, db := range map[string]func(testing.TB) store.DB{
		"postgres": func(t testing.TB) store.DB { return testenv.Postgres(t) },
		"sqlite":   func(t testing.TB) store.DB { return testenv.SQLite(t) },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setupDB(t, db(t), ingest.Config{})
			id := uuid.NewString()
			req := ingest.CreateRequest{CommandID: id, Actor: "a", Name: "reused", Version: "1"}
			first := e.raw(t, ingest.SubjectCreate, mustJSON(req))
			require.Empty(t, first.Header.Get(micro.ErrorCodeHeader), "%s", first.Data)
			head := len(e.log(t))

			// The same parameters, also spelled differently: the first reply.
			again := e.raw(t, ingest.SubjectCreate, mustJSON(req))
			assert.Equal(t, string(first.Data), string(again.Data), "the same command")
			spelled := e.raw(t, ingest.SubjectCreate, []byte(`{"version":"1","name":"reused","retention":{"policy":"keep_forever"},"actor":"a","command_id":"`+id+`"}`))
			assert.Equal(t, string(first.Data), string(spelled.Data), "the same command, the default retention spelled out")

			for what, body := range map[string][]byte{
				"another name":      mustJSON(ingest.CreateRequest{CommandID: id, Actor: "a", Name: "other", Version: "1"}),
				"another version":   mustJSON(ingest.CreateRequest{CommandID: id, Actor: "a", Name: "reused", Version: "2"}),
				"another actor":     mustJSON(ingest.CreateRequest{CommandID: id, Actor: "b", Name: "reused", Version: "1"}),
				"another retention": mustJSON(ingest.CreateRequest{CommandID: id, Actor: "a", Name: "reused", Version: "1", Retention: &store.RetentionPolicy{Policy: store.RetentionKeepDays, KeepDays: 3}}),
			} {
				requireReused(t, e.raw(t, ingest.SubjectCreate, body), what)
			}
			var created ingest.CommandReply
			require.NoError(t, ingest.DecodeReply(first, &created))
			requireReused(t, e.raw(t, ingest.SubjectFinalize, mustJSON(ingest.FinalizeRequest{CommandID: id, Actor: "a",
				PackageID: created.PackageID, ManifestDigest: digest()})), "a create's id reused for a finalize")
			assert.Equal(t, head, len(e.log(t)), "a refused reuse appends nothing")
			_, err := e.create(t, ingest.CreateRequest{Actor: "a", Name: "other", Version: "1"})
			require.NoError(t, err, "other/1 was not claimed by the reused command_id")

			fin := ingest.FinalizeRequest{CommandID: uuid.NewString(), Actor: "a", PackageID: created.PackageID, ManifestDigest: digest()}
			firstFin := e.raw(t, ingest.SubjectFinalize, mustJSON(fin))
			require.Empty(t, firstFin.Header.Get(micro.ErrorCodeHeader), "%s", firstFin.Data)
			assert.Equal(t, string(firstFin.Data), string(e.raw(t, ingest.SubjectFinalize, mustJSON(fin)).Data), "the same finalize")
			other := fin
			other.ManifestDigest = digest()
			requireReused(t, e.raw(t, ingest.SubjectFinalize, mustJSON(other)), "another digest")
		})
	}
}

// TestReusedCommandIDInBatch: the pipelined transaction creates or
// finalizes for a reused id optimistically (ClaimAll runs before the seen
// ids are known) and must decide again without it; copies of one new id
// with different parameters in one batch are decided once, the other
// copy refused.
func TestReusedCommandIDInBatch(t *testing.T) {
	t.Parallel()
	e := setup(t, ingest.Config{BatchDelay: 20 * time.Millisecond, Committers: 1})
	p, err := e.create(t, ingest.CreateRequest{Actor: "a", Name: "p", Version: "1"})
	require.NoError(t, err)
	q, err := e.create(t, ingest.CreateRequest{Actor: "a", Name: "q", Version: "1"})
	require.NoError(t, err)
	fin := uuid.NewString()
	firstFin := e.raw(t, ingest.SubjectFinalize, mustJSON(ingest.FinalizeRequest{CommandID: fin, Actor: "a", PackageID: p.PackageID, ManifestDigest: digest()}))
	require.Empty(t, firstFin.Header.Get(micro.ErrorCodeHeader), "%s", firstFin.Data)

	// The reused id and a new command finalize q in one batch (BatchDelay
	// gathers them): the new one must win. Two copies of a new id, with
	// different names, go in the same batch.
	dup := uuid.NewString()
	var reused, copy1, copy2 *nats.Msg
	var fresh error
	var wg conc.WaitGroup
	wg.Go(func() {
		reused = e.raw(t, ingest.SubjectFinalize, mustJSON(ingest.FinalizeRequest{CommandID: fin, Actor: "a", PackageID: q.PackageID, ManifestDigest: digest()}))
	})
	wg.Go(func() {
		_, fresh = e.finalize(t, ingest.FinalizeRequest{CommandID: uuid.NewString(), Actor: "a", PackageID: q.PackageID, ManifestDigest: digest()})
	})
	wg.Go(func() {
		copy1 = e.raw(t, ingest.SubjectCreate, mustJSON(ingest.CreateRequest{CommandID: dup, Actor: "a", Name: "dup", Version: "1"}))
	})
	wg.Go(func() {
		copy2 = e.raw(t, ingest.SubjectCreate, mustJSON(ingest.CreateRequest{CommandID: dup, Actor: "a", Name: "dup", Version: "2"}))
	})
	wg.Wait()
	requireReused(t, reused, "a finalize's id reused for another package")
	require.NoError(t, fresh, "q was not finalized by the reused command_id")
	ok, refused := copy1, copy2
	if copy1.Header.Get(micro.ErrorCodeHeader) != "" {
		ok, refused = copy2, copy1
	}
	require.Empty(t, ok.Header.Get(micro.ErrorCodeHeader), "%s", ok.Data)
	requireReused(t, refused, "two copies of a new id with different parameters")

	events := e.log(t)
	require.Len(t, events, 5, "p, q, finalize p, finalize q, one dup")
	for _, ev := range events[3:] {
		if ev.Type == store.TypePackageFinalized {
			assert.Equal(t, q.PackageID, ev.SubjectID)
		}
	}
}
