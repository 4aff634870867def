package projector

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

func TestDecodeRoundTrip(t *testing.T) {
	t.Parallel()
	ev, err := store.NewEvent(store.TypePackageCreated, store.SubjectKindPackage, "pkg-1", "ci", []byte(`{"package_id":"pkg-1"}`))
	require.NoError(t, err)
	ev.Sequence, ev.CreatedAt = 42, time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	m := eventMsg(ev, "log1")
	for _, subject := range []string{ev.Subject(), partitionedPrefix + "3." + ev.Type + "." + ev.SubjectID} {
		got, err := Decode(subject, m.Header, m.Data, "log1")
		require.NoError(t, err)
		require.Equal(t, ev, got)
	}
	for name, tc := range map[string]struct {
		subject, logID string
		edit           func(nats.Header)
	}{
		"other log":       {ev.Subject(), "log2", func(nats.Header) {}},
		"bad sequence":    {ev.Subject(), "log1", func(h nats.Header) { h.Set(wire.HeaderSequence, "x") }},
		"zero sequence":   {ev.Subject(), "log1", func(h nats.Header) { h.Set(wire.HeaderSequence, "0") }},
		"bad digest":      {ev.Subject(), "log1", func(h nats.Header) { h.Set(wire.HeaderPayloadDigest, store.DigestOf(nil).String()) }},
		"bad time":        {ev.Subject(), "log1", func(h nats.Header) { h.Set(wire.HeaderCreatedAt, "yesterday") }},
		"wrong subject":   {"artifactstore.events.v1.package.created.pkg-2", "log1", func(nats.Header) {}},
		"dotted token":    {partitionedPrefix + "3.x." + ev.Type + "." + ev.SubjectID, "log1", func(nats.Header) {}},
		"no partition":    {partitionedPrefix + ev.Type + "." + ev.SubjectID, "log1", func(nats.Header) {}},
		"other msg id":    {ev.Subject(), "log1", func(h nats.Header) { h.Set(nats.MsgIdHdr, "log1-43") }},
		"header twice":    {ev.Subject(), "log1", func(h nats.Header) { h.Add(wire.HeaderActor, "other") }},
		"missing actor":   {ev.Subject(), "log1", func(h nats.Header) { h.Del(wire.HeaderActor) }},
		"bad event type":  {ev.Subject(), "log1", func(h nats.Header) { h.Set(wire.HeaderEventType, "created") }},
		"missing subject": {ev.Subject(), "log1", func(h nats.Header) { h.Del(wire.HeaderSubjectID) }},
	} {
		h := nats.Header{}
		for k, v := range m.Header {
			h[k] = append([]string(nil), v...)
		}
		tc.edit(h)
		_, err := Decode(tc.subject, h, m.Data, tc.logID)
		require.Error(t, err, name)
	}
}

func FuzzDecode(f *testing.F) {
	ev, err := store.NewEvent(store.TypePackageCreated, store.SubjectKindPackage, "pkg-1", "ci", []byte(`{"package_id":"pkg-1"}`))
	if err != nil {
		f.Fatal(err)
	}
	ev.Sequence, ev.CreatedAt = 7, time.Unix(1700000000, 123456000).UTC()
	m := eventMsg(ev, "L")
	f.Add(m.Subject, "7", ev.Type, ev.SubjectKind, ev.SubjectID, ev.Actor, ev.PayloadDigest.String(), m.Header.Get(wire.HeaderCreatedAt), m.Data)
	f.Add("x", "-1", "a.b", "", "", "", "zz", "", []byte{})
	f.Fuzz(func(t *testing.T, subject, seq, typ, kind, id, actor, digest, at string, body []byte) {
		h := nats.Header{}
		h.Set(wire.HeaderSequence, seq)
		h.Set(wire.HeaderEventType, typ)
		h.Set(wire.HeaderSubjectKind, kind)
		h.Set(wire.HeaderSubjectID, id)
		h.Set(wire.HeaderActor, actor)
		h.Set(wire.HeaderPayloadDigest, digest)
		h.Set(wire.HeaderCreatedAt, at)
		h.Set(wire.HeaderLogID, "L")
		h.Set(nats.MsgIdHdr, "L-"+seq)
		got, err := Decode(subject, h, body, "L")
		if err != nil {
			return
		}
		// Whatever decodes is a valid event that encodes back to itself.
		require.NoError(t, got.Validate(0))
		back := eventMsg(got, "L")
		again, err := Decode(got.Subject(), back.Header, back.Data, "L")
		require.NoError(t, err)
		require.Equal(t, got, again)
	})
}
