package wire_test

import (
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

const testLogID = "0193f1c2-7a3b-7c4d-8e5f-0123456789ab"

func testEvent(t testing.TB, seq int64, typ, actor string, payload string) store.Event {
	t.Helper()
	e, err := store.NewEvent(typ, "package", fmt.Sprintf("pkg-%06d", seq), actor, []byte(payload))
	require.NoError(t, err)
	e.Sequence = seq
	e.CreatedAt = time.Date(2026, 11, 27, 7, 4, 16, 123456000, time.UTC)
	return e
}

// msgOf is e as the relay publishes it in a 16-partition log whose previous
// event of the partition is e's predecessor.
func msgOf(e store.Event) wire.Message {
	return wire.Message{Event: e, LogID: testLogID, Partition: wire.Partition(e.SubjectID, 16), Previous: e.Sequence - 1}
}

func TestEncodeHeaders(t *testing.T) {
	t.Parallel()
	e := testEvent(t, 42, "v1.package.finalized", "ci-bot", `{"package_id":"pkg-000042"}`)
	m := wire.Encode(msgOf(e), 0)
	require.Equal(t, "artifactstore.events.v1.package.finalized.pkg-000042."+strconv.Itoa(wire.Partition("pkg-000042", 16)), m.Subject)
	require.Equal(t, e.Payload, m.Data)
	want := map[string]string{
		"Nats-Msg-Id":                      testLogID + "-42",
		"Artifactstore-Sequence":           "42",
		"Artifactstore-Event-Type":         "v1.package.finalized",
		"Artifactstore-Subject-Kind":       "package",
		"Artifactstore-Subject-Id":         "pkg-000042",
		"Artifactstore-Actor":              "ci-bot",
		"Artifactstore-Payload-Digest":     store.DigestOf(e.Payload).String(),
		"Artifactstore-Created-At":         "2026-11-27T07:04:16.123456000Z",
		"Artifactstore-Log-Id":             testLogID,
		"Artifactstore-Partition":          strconv.Itoa(wire.Partition("pkg-000042", 16)),
		"Artifactstore-Partition-Previous": "41",
	}
	require.Len(t, m.Header, len(want))
	for k, v := range want {
		require.Equal(t, []string{v}, m.Header.Values(k), k)
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, typ, actor, wantActorHeader string
	}{
		{"plain", "v1.package.created", "alice@example.com", "alice@example.com"},
		{"unknown type", "v9.widget.exploded", "ci", "ci"},
		{"unicode actor", "v1.package.created", "jürgen ✓", "jürgen ✓"},
		{"spaces inside", "v1.package.created", "Jane Q. Public", "Jane Q. Public"},
		{"percent", "v1.package.created", "100%", "100%"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := testEvent(t, 7, tc.typ, tc.actor, `{"x":1}`)
			m := wire.Encode(msgOf(e), 0)
			require.Equal(t, tc.wantActorHeader, m.Header.Get(wire.HeaderActor))
			// Through the wire format and back, as a consumer sees it.
			h := wireHeaders(t, m.Header)
			got, err := wire.Decode(m.Subject, h, m.Data)
			require.NoError(t, err)
			require.Equal(t, msgOf(e), got)
		})
	}
}

// wireHeaders encodes h as NATS does on the wire and parses it back.
func wireHeaders(t testing.TB, h nats.Header) nats.Header {
	t.Helper()
	var b strings.Builder
	b.WriteString("NATS/1.0\r\n")
	for k, vs := range h {
		for _, v := range vs {
			b.WriteString(k + ": " + v + "\r\n")
		}
	}
	b.WriteString("\r\n")
	out, err := nats.DecodeHeadersMsg([]byte(b.String()))
	require.NoError(t, err)
	return out
}

func TestDecodeRejects(t *testing.T) {
	t.Parallel()
	e := testEvent(t, 9, "v1.package.created", "ci", `{"a":1}`)
	for _, tc := range []struct {
		name   string
		mutate func(m *nats.Msg)
	}{
		{"missing log id", func(m *nats.Msg) { m.Header.Del(wire.HeaderLogID) }},
		{"other msg id", func(m *nats.Msg) { m.Header.Set(wire.HeaderMsgID, "other-9") }},
		{"bad sequence", func(m *nats.Msg) { m.Header.Set(wire.HeaderSequence, "09") }},
		{"zero sequence", func(m *nats.Msg) { m.Header.Set(wire.HeaderSequence, "0") }},
		{"digest mismatch", func(m *nats.Msg) { m.Data = []byte(`{"a":2}`) }},
		{"subject mismatch", func(m *nats.Msg) { m.Subject = "artifactstore.events.v1.package.created.other.3" }},
		{"partition mismatch", func(m *nats.Msg) { m.Header.Set(wire.HeaderPartition, "99") }},
		{"no partition token", func(m *nats.Msg) {
			m.Subject = "artifactstore.events.v1.package.created." + m.Header.Get(wire.HeaderSubjectID)
		}},
		{"previous not below sequence", func(m *nats.Msg) { m.Header.Set(wire.HeaderPartitionPrevious, "9") }},
		{"negative previous", func(m *nats.Msg) { m.Header.Set(wire.HeaderPartitionPrevious, "-1") }},
		{"missing previous", func(m *nats.Msg) { m.Header.Del(wire.HeaderPartitionPrevious) }},
		{"bad created at", func(m *nats.Msg) { m.Header.Set(wire.HeaderCreatedAt, "yesterday") }},
		{"non-UTC created at", func(m *nats.Msg) { m.Header.Set(wire.HeaderCreatedAt, "2026-11-27T08:04:16.123456000+01:00") }},
		{"repeated header", func(m *nats.Msg) { m.Header.Add(wire.HeaderActor, "x") }},
		{"padded actor", func(m *nats.Msg) { m.Header.Set(wire.HeaderActor, " eve") }},
		{"actor with control character", func(m *nats.Msg) { m.Header.Set(wire.HeaderActor, "eve\x01") }},
		{"bad type", func(m *nats.Msg) { m.Header.Set(wire.HeaderEventType, "v1.created") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := wire.Encode(msgOf(e), 0)
			tc.mutate(m)
			_, err := wire.Decode(m.Subject, m.Header, m.Data)
			require.Error(t, err)
			require.True(t, errors.Is(err, wire.ErrInvalidMessage), "%v", err)
		})
	}
}

// FuzzDecode feeds arbitrary subjects, header values and bodies to Decode:
// it must not panic, and whatever it accepts must encode back to the same
// message.
func FuzzDecode(f *testing.F) {
	e := testEvent(f, 3, "v1.package.created", "ci", `{"a":1}`)
	m := wire.Encode(msgOf(e), 0)
	f.Add(m.Subject, m.Header.Get(wire.HeaderSequence), m.Header.Get(wire.HeaderActor), m.Header.Get(wire.HeaderCreatedAt), m.Header.Get(wire.HeaderMsgID), m.Data)
	f.Add("artifactstore.events.a.b.c.d", "1", "%41%", "2026-01-01T00:00:00.000000000Z", "x-1", []byte("x"))
	f.Fuzz(func(t *testing.T, subject, seq, actor, createdAt, msgID string, data []byte) {
		h := wire.Encode(msgOf(e), 0).Header
		h.Set(wire.HeaderSequence, seq)
		h.Set(wire.HeaderActor, actor)
		h.Set(wire.HeaderCreatedAt, createdAt)
		h.Set(wire.HeaderMsgID, msgID)
		h.Set(wire.HeaderPayloadDigest, store.DigestOf(data).String())
		got, err := wire.Decode(subject, h, data)
		if err != nil {
			require.ErrorIs(t, err, wire.ErrInvalidMessage)
			return
		}
		back := wire.Encode(got, 0)
		require.Equal(t, subject, back.Subject)
		require.Equal(t, data, back.Data)
		again, err := wire.Decode(back.Subject, back.Header, back.Data)
		require.NoError(t, err)
		require.Equal(t, got, again)
	})
}

// FuzzActorHeader checks that every actor the store accepts survives the
// NATS header wire format unchanged, verbatim.
func FuzzActorHeader(f *testing.F) {
	for _, s := range []string{"ci", " a ", "100%", "x\r\ny: z", "\x00", "ü", "%zz", "\n0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, actor string) {
		e := testEvent(t, 1, "v1.package.created", "ci", `{}`)
		e.Actor = actor
		m := wire.Encode(msgOf(e), 0)
		if e.Validate(0) != nil {
			// The store never writes such an actor; Decode must still not
			// panic on whatever headers arrive.
			_, _ = wire.Decode(m.Subject, m.Header, m.Data)
			return
		}
		got, err := wire.Decode(m.Subject, wireHeaders(t, m.Header), m.Data)
		require.NoError(t, err, "every actor the store accepts round-trips")
		require.Equal(t, actor, got.Event.Actor)
	})
}

// TestPartitionMatchesFNV1a pins Partition to FNV-1a-32 (hash/fnv) modulo n,
// the function nats-server's partition() mapping computes.
func TestPartitionMatchesFNV1a(t *testing.T) {
	t.Parallel()
	for _, id := range []string{"", "a", "pkg-000042", "0193f1c2-7a3b-7c4d-8e5f-0123456789ab", "ü"} {
		h := fnv.New32a()
		_, _ = h.Write([]byte(id))
		for _, n := range []int{1, 2, 7, 16, 1024} {
			require.Equal(t, int(h.Sum32()%uint32(n)), wire.Partition(id, n), "%q mod %d", id, n)
		}
	}
}

// chained returns n consecutive events from first on, chained as the log
// chains them after prev.
func chained(t testing.TB, first int64, n int, prev store.Digest) []store.Event {
	var out []store.Event
	for i := range n {
		out = append(out, testEvent(t, first+int64(i), "v1.package.created", "ci", fmt.Sprintf(`{"i":%d}`, i)))
	}
	store.Chain(prev, out)
	return out
}

func TestChainDigestHeader(t *testing.T) {
	t.Parallel()
	e := chained(t, 5, 1, store.DigestOf([]byte("4")))[0]
	m := wire.Encode(msgOf(e), 0)
	require.Equal(t, []string{e.ChainDigest.String()}, m.Header.Values(wire.HeaderChainDigest))
	require.Len(t, m.Header, 12)
	got, err := wire.Decode(m.Subject, wireHeaders(t, m.Header), m.Data)
	require.NoError(t, err)
	require.Equal(t, msgOf(e), got, "the chain digest round-trips")

	old := wire.Encode(msgOf(e), 0)
	old.Header.Del(wire.HeaderChainDigest)
	got, err = wire.Decode(old.Subject, old.Header, old.Data)
	require.NoError(t, err, "a message relayed before the log had a chain decodes")
	require.Equal(t, store.Digest{}, got.Event.ChainDigest)

	for name, mutate := range map[string]func(h nats.Header){
		"repeated":  func(h nats.Header) { h.Add(wire.HeaderChainDigest, e.ChainDigest.String()) },
		"short":     func(h nats.Header) { h.Set(wire.HeaderChainDigest, "abcd") },
		"uppercase": func(h nats.Header) { h.Set(wire.HeaderChainDigest, strings.ToUpper(e.ChainDigest.String())) },
		"zero":      func(h nats.Header) { h.Set(wire.HeaderChainDigest, strings.Repeat("0", 64)) },
	} {
		m := wire.Encode(msgOf(e), 0)
		mutate(m.Header)
		_, err := wire.Decode(m.Subject, m.Header, m.Data)
		require.ErrorIs(t, err, wire.ErrInvalidMessage, name)
	}
}

func TestChainCheck(t *testing.T) {
	t.Parallel()
	log := chained(t, 1, 8, store.Digest{})
	msg := func(e store.Event) wire.Message { return msgOf(e) }
	requireBreak := func(err error, seq int64) {
		t.Helper()
		var ce *wire.ChainError
		require.ErrorAs(t, err, &ce)
		require.ErrorIs(t, err, wire.ErrChainBroken)
		require.Equal(t, seq, ce.Sequence, "%v", err)
	}

	var all wire.ChainCheck
	all.Contiguous = true
	for _, e := range log {
		require.NoError(t, all.Check(msg(e)))
	}

	// A reader starting mid-stream trusts its first message.
	var mid wire.ChainCheck
	for _, e := range log[4:] {
		require.NoError(t, mid.Check(msg(e)))
	}

	// A rewritten event (payload and digest changed together, chain
	// digest kept) breaks at itself.
	forged := log[3]
	forged.Payload = []byte(`{"i":"forged"}`)
	forged.PayloadDigest = store.DigestOf(forged.Payload)
	var c wire.ChainCheck
	for _, e := range log[:3] {
		require.NoError(t, c.Check(msg(e)))
	}
	requireBreak(c.Check(msg(forged)), 4)
	require.NoError(t, c.Check(msg(log[3])), "a failed check changes nothing")

	// Its chain digest recomputed too: the next one breaks.
	forged.ChainDigest = store.ChainDigest(log[2].ChainDigest, forged)
	c = wire.ChainCheck{}
	for _, e := range log[:3] {
		require.NoError(t, c.Check(msg(e)))
	}
	require.NoError(t, c.Check(msg(forged)))
	requireBreak(c.Check(msg(log[4])), 5)

	// A gap: a break for a reader of everything, not for a filtered one.
	c = wire.ChainCheck{Contiguous: true}
	require.NoError(t, c.Check(msg(log[0])))
	requireBreak(c.Check(msg(log[2])), 2)
	var filtered wire.ChainCheck
	require.NoError(t, filtered.Check(msg(log[0])))
	require.NoError(t, filtered.Check(msg(log[2])))
	require.NoError(t, filtered.Check(msg(log[3])))
	requireBreak(filtered.Check(msg(log[1])), 2)

	// Messages from before the chain are not checked; the next chained one
	// is trusted again.
	c = wire.ChainCheck{Contiguous: true}
	unchained := log[1]
	unchained.ChainDigest = store.Digest{}
	require.NoError(t, c.Check(msg(log[0])))
	require.NoError(t, c.Check(msg(unchained)))
	require.NoError(t, c.Check(msg(log[5])))
	require.NoError(t, c.Check(msg(log[6])))
}

// FuzzChainHeader feeds arbitrary chain digest headers to Decode: it must
// not panic, and what it accepts encodes back to the same header.
func FuzzChainHeader(f *testing.F) {
	e := chained(f, 3, 1, store.Digest{})[0]
	f.Add(e.ChainDigest.String())
	f.Add(strings.Repeat("0", 64))
	f.Add("G" + strings.Repeat("a", 63))
	f.Fuzz(func(t *testing.T, chain string) {
		m := wire.Encode(msgOf(e), 0)
		m.Header.Set(wire.HeaderChainDigest, chain)
		got, err := wire.Decode(m.Subject, m.Header, m.Data)
		if err != nil {
			require.ErrorIs(t, err, wire.ErrInvalidMessage)
			return
		}
		require.Equal(t, chain, wire.Encode(got, 0).Header.Get(wire.HeaderChainDigest))
	})
}
