package projector

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

func testMsg(ev store.Event, logID string, parts int, prev int64) *nats.Msg {
	return wire.Encode(wire.Message{Event: ev, LogID: logID, Partition: Partition(ev.SubjectID, parts), Previous: prev}, 0)
}

func TestDecodeRoundTrip(t *testing.T) {
	t.Parallel()
	ev, err := store.NewEvent(store.TypePackageCreated, store.SubjectKindPackage, "pkg-1", "ci", []byte(`{"package_id":"pkg-1"}`))
	require.NoError(t, err)
	ev.Sequence, ev.CreatedAt = 42, time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	m := testMsg(ev, "log1", 16, 40)
	got, err := Decode(m.Subject, m.Header, m.Data, "log1", 16)
	require.NoError(t, err)
	require.Equal(t, wire.Message{Event: ev, LogID: "log1", Partition: Partition("pkg-1", 16), Previous: 40}, got)
	for name, tc := range map[string]struct {
		logID string
		parts int
		edit  func(*nats.Msg)
	}{
		"other log":             {"log2", 16, func(*nats.Msg) {}},
		"other partition count": {"log1", 8, func(*nats.Msg) {}},
		"bad sequence":          {"log1", 16, func(m *nats.Msg) { m.Header.Set(wire.HeaderSequence, "x") }},
		"bad digest":            {"log1", 16, func(m *nats.Msg) { m.Header.Set(wire.HeaderPayloadDigest, store.DigestOf(nil).String()) }},
		"wrong subject":         {"log1", 16, func(m *nats.Msg) { m.Subject = "artifactstore.events.v1.package.created.pkg-2.3" }},
		"unpartitioned":         {"log1", 16, func(m *nats.Msg) { m.Subject = "artifactstore.events.v1.package.created.pkg-1" }},
		"header twice":          {"log1", 16, func(m *nats.Msg) { m.Header.Add(wire.HeaderActor, "other") }},
		"missing previous":      {"log1", 16, func(m *nats.Msg) { m.Header.Del(wire.HeaderPartitionPrevious) }},
	} {
		c := testMsg(ev, "log1", 16, 40)
		tc.edit(c)
		_, err := Decode(c.Subject, c.Header, c.Data, tc.logID, tc.parts)
		require.Error(t, err, name)
	}
}

// FuzzDecode: whatever Decode accepts is a valid event of the log, in its
// partition, that encodes back to the same message.
func FuzzDecode(f *testing.F) {
	ev, err := store.NewEvent(store.TypePackageCreated, store.SubjectKindPackage, "pkg-1", "ci", []byte(`{"package_id":"pkg-1"}`))
	if err != nil {
		f.Fatal(err)
	}
	ev.Sequence, ev.CreatedAt = 7, time.Unix(1700000000, 123456000).UTC()
	m := testMsg(ev, "L", 16, 3)
	f.Add(m.Subject, "7", ev.Type, ev.SubjectID, ev.Actor, m.Header.Get(wire.HeaderPartition), "3", m.Data)
	f.Add("x", "-1", "a.b", "", "", "99", "-1", []byte{})
	f.Fuzz(func(t *testing.T, subject, seq, typ, id, actor, part, prev string, body []byte) {
		h := nats.Header{}
		h.Set(wire.HeaderSequence, seq)
		h.Set(wire.HeaderEventType, typ)
		h.Set(wire.HeaderSubjectKind, "package")
		h.Set(wire.HeaderSubjectID, id)
		h.Set(wire.HeaderActor, actor)
		h.Set(wire.HeaderPayloadDigest, store.DigestOf(body).String())
		h.Set(wire.HeaderCreatedAt, m.Header.Get(wire.HeaderCreatedAt))
		h.Set(wire.HeaderLogID, "L")
		h.Set(wire.HeaderPartition, part)
		h.Set(wire.HeaderPartitionPrevious, prev)
		h.Set(nats.MsgIdHdr, "L-"+seq)
		got, err := Decode(subject, h, body, "L", 16)
		if err != nil {
			return
		}
		require.NoError(t, got.Event.Validate(0))
		require.Equal(t, Partition(got.Event.SubjectID, 16), got.Partition)
		back := wire.Encode(got, 0)
		require.Equal(t, subject, back.Subject)
		again, err := Decode(back.Subject, back.Header, back.Data, "L", 16)
		require.NoError(t, err)
		require.Equal(t, got, again)
	})
}
