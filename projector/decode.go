package projector

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/artifactstore/artifactstore/store"
)

// Stream headers (see DESIGN.md, "The events stream").
const (
	HeaderSequence      = "Artifactstore-Sequence"
	HeaderEventType     = "Artifactstore-Event-Type"
	HeaderSubjectKind   = "Artifactstore-Subject-Kind"
	HeaderSubjectID     = "Artifactstore-Subject-Id"
	HeaderActor         = "Artifactstore-Actor"
	HeaderPayloadDigest = "Artifactstore-Payload-Digest"
	HeaderCreatedAt     = "Artifactstore-Created-At"
	HeaderLogID         = "Artifactstore-Log-Id"
)

// Decode rebuilds the event a stream message carries from its headers and
// body, and checks it: a valid event whose payload matches its digest,
// carried on the subject its type and subject id give (public or
// partitioned form), from the log logID (unchecked when empty).
func Decode(subject string, h nats.Header, body []byte, logID string) (store.Event, error) {
	seq, err := strconv.ParseInt(h.Get(HeaderSequence), 10, 64)
	if err != nil || seq <= 0 {
		return store.Event{}, fmt.Errorf("projector: bad %s header %q", HeaderSequence, h.Get(HeaderSequence))
	}
	if logID != "" && h.Get(HeaderLogID) != logID {
		return store.Event{}, fmt.Errorf("%w: event %d is from log %q, not %q", ErrStreamMismatch, seq, h.Get(HeaderLogID), logID)
	}
	digest, err := store.ParseDigest(h.Get(HeaderPayloadDigest))
	if err != nil {
		return store.Event{}, fmt.Errorf("projector: event %d: %s: %w", seq, HeaderPayloadDigest, err)
	}
	at, err := time.Parse(time.RFC3339Nano, h.Get(HeaderCreatedAt))
	if err != nil {
		return store.Event{}, fmt.Errorf("projector: event %d: %s: %w", seq, HeaderCreatedAt, err)
	}
	e := store.Event{
		Sequence:      seq,
		Type:          h.Get(HeaderEventType),
		SubjectKind:   h.Get(HeaderSubjectKind),
		SubjectID:     h.Get(HeaderSubjectID),
		Actor:         h.Get(HeaderActor),
		Payload:       body,
		PayloadDigest: digest,
		CreatedAt:     at.UTC(),
	}
	if err := e.Validate(0); err != nil {
		return store.Event{}, fmt.Errorf("projector: event %d: %w", seq, err)
	}
	suffix := "." + e.Type + "." + e.SubjectID
	if subject != e.Subject() && !(strings.HasPrefix(subject, partitionedPrefix) && strings.HasSuffix(subject, suffix) &&
		!strings.Contains(strings.TrimSuffix(strings.TrimPrefix(subject, partitionedPrefix), suffix), ".")) {
		return store.Event{}, fmt.Errorf("projector: event %d: subject %q does not match type %q and subject id %q", seq, subject, e.Type, e.SubjectID)
	}
	return e, nil
}
