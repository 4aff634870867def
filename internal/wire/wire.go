// Package wire is the events stream's message format (DESIGN.md, "The
// events stream"): the subject and headers every event message carries,
// Encode and Decode. The relay writes it; the projector and the client
// read it, so all three hold messages to one contract.
package wire

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/store"
)

// The headers of every event message (DESIGN.md, "The events stream").
const (
	HeaderMsgID         = jetstream.MsgIDHeader // <log_id>-<sequence>
	HeaderSequence      = "Artifactstore-Sequence"
	HeaderEventType     = "Artifactstore-Event-Type"
	HeaderSubjectKind   = "Artifactstore-Subject-Kind"
	HeaderSubjectID     = "Artifactstore-Subject-Id"
	HeaderActor         = "Artifactstore-Actor"
	HeaderPayloadDigest = "Artifactstore-Payload-Digest"
	HeaderCreatedAt     = "Artifactstore-Created-At"
	HeaderLogID         = "Artifactstore-Log-Id"
)

// SubjectPrefix starts every event subject.
const SubjectPrefix = "artifactstore.events."

// CreatedAtLayout is the format of Artifactstore-Created-At: RFC 3339 in
// UTC with exactly nine fractional digits.
const CreatedAtLayout = "2006-01-02T15:04:05.000000000Z07:00"

// Encode returns the stream message of event e of log logID: its public
// subject, the payload as body and every header of the contract, with
// room for extra more headers (the relay adds its fencing header).
func Encode(logID string, e store.Event, extra int) *nats.Msg {
	seq := strconv.FormatInt(e.Sequence, 10)
	// One backing array for every header's value slice.
	v := [...]string{
		logID + "-" + seq,
		seq,
		e.Type,
		e.SubjectKind,
		e.SubjectID,
		e.Actor,
		e.PayloadDigest.String(),
		e.CreatedAt.UTC().Format(CreatedAtLayout),
		logID,
	}
	h := make(nats.Header, len(v)+extra)
	for i, name := range headerNames {
		h[name] = v[i : i+1 : i+1]
	}
	return &nats.Msg{Subject: e.Subject(), Data: e.Payload, Header: h}
}

// headerNames lists the event headers in the order Encode fills them.
var headerNames = [...]string{HeaderMsgID, HeaderSequence, HeaderEventType, HeaderSubjectKind, HeaderSubjectID,
	HeaderActor, HeaderPayloadDigest, HeaderCreatedAt, HeaderLogID}

// Decode parses a message of the events stream back into its event and the
// id of the log it came from. It checks that the message is consistent: the
// subject matches the type and subject id, Nats-Msg-Id matches the log id
// and sequence, and the digest matches the body. Errors wrap
// ErrInvalidMessage.
func Decode(subject string, h nats.Header, data []byte) (store.Event, string, error) {
	var e store.Event
	fail := func(format string, args ...any) (store.Event, string, error) {
		return store.Event{}, "", fmt.Errorf("%w: %s", ErrInvalidMessage, fmt.Sprintf(format, args...))
	}
	get := func(name string) (string, error) {
		v := h.Values(name)
		if len(v) != 1 {
			return "", fmt.Errorf("%w: header %s appears %d times, want once", ErrInvalidMessage, name, len(v))
		}
		return v[0], nil
	}
	var vals [9]string
	for i, name := range headerNames {
		v, err := get(name)
		if err != nil {
			return store.Event{}, "", err
		}
		vals[i] = v
	}
	msgID, seq, logID := vals[0], vals[1], vals[8]
	e.Type, e.SubjectKind, e.SubjectID, e.Actor = vals[2], vals[3], vals[4], vals[5]
	n, err := strconv.ParseInt(seq, 10, 64)
	if err != nil || n <= 0 || strconv.FormatInt(n, 10) != seq {
		return fail("%s %q is not a positive decimal sequence", HeaderSequence, seq)
	}
	e.Sequence = n
	if logID == "" {
		return fail("%s is empty", HeaderLogID)
	}
	if want := store.MsgID(logID, n); msgID != want {
		return fail("%s %q does not match log id and sequence (%q)", HeaderMsgID, msgID, want)
	}
	if !store.ValidEventType(e.Type) {
		return fail("%s %q is not three subject tokens", HeaderEventType, e.Type)
	}
	if !store.ValidToken(e.SubjectKind) {
		return fail("%s %q is not a subject token", HeaderSubjectKind, e.SubjectKind)
	}
	if !store.ValidToken(e.SubjectID) {
		return fail("%s %q is not a subject token", HeaderSubjectID, e.SubjectID)
	}
	if e.Actor == "" || strings.TrimSpace(e.Actor) != e.Actor || strings.ContainsFunc(e.Actor, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fail("%s %q is empty, padded or holds control characters", HeaderActor, e.Actor)
	}
	if want := e.Subject(); subject != want {
		return fail("subject %q does not match type and subject id (%q)", subject, want)
	}
	if e.PayloadDigest, err = store.ParseDigest(vals[6]); err != nil {
		return fail("%s: %v", HeaderPayloadDigest, err)
	}
	if store.DigestOf(data) != e.PayloadDigest {
		return fail("%s does not match the body", HeaderPayloadDigest)
	}
	at, err := time.Parse(CreatedAtLayout, vals[7])
	if err != nil || !strings.HasSuffix(vals[7], "Z") {
		return fail("%s %q is not RFC 3339 UTC with nanoseconds", HeaderCreatedAt, vals[7])
	}
	e.CreatedAt = at.UTC()
	e.Payload = data
	return e, logID, nil
}

// ErrInvalidMessage is wrapped by every error of Decode.
var ErrInvalidMessage = errors.New("wire: invalid event message")
