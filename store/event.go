package store

import (
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"lukechampine.com/blake3"
)

// DefaultMaxPayload is the payload size limit used when a dialect's
// configuration does not set one.
const DefaultMaxPayload = 64 << 10

// SubjectKindPackage is the subject kind of every package event.
const SubjectKindPackage = "package"

// Event is one immutable entry of the log. Sequence, CreatedAt and
// ChainDigest are assigned on write; everything else is set by the writer.
type Event struct {
	// Sequence is the event's position in the log, strictly increasing in
	// commit order.
	Sequence int64
	// Type is the versioned event type, three dot-separated tokens
	// (v1.package.created).
	Type string
	// SubjectKind is the kind of aggregate the event belongs to (package).
	SubjectKind string
	// SubjectID is the aggregate's id, a single NATS subject token.
	SubjectID string
	// Actor is who issued the command that produced the event.
	Actor string
	// Payload is the event's canonical JSON, stored byte for byte.
	Payload []byte
	// PayloadDigest is the raw BLAKE3-256 of Payload.
	PayloadDigest Digest
	// CreatedAt is the commit-side time the database gave the event.
	CreatedAt time.Time
	// ChainDigest links the event to every event before it (ChainDigest,
	// computed by the database's writer under the commit-order lock). The
	// zero Digest means unknown: a stream message relayed before the log
	// had a chain.
	ChainDigest Digest
}

// NewEvent returns a validated event with its payload digest computed. The
// payload must be at most DefaultMaxPayload bytes; dialects enforce their
// own configured limit again on Append.
func NewEvent(eventType, subjectKind, subjectID, actor string, payload []byte) (Event, error) {
	e := Event{
		Type:          eventType,
		SubjectKind:   subjectKind,
		SubjectID:     subjectID,
		Actor:         actor,
		Payload:       payload,
		PayloadDigest: DigestOf(payload),
	}
	if err := e.Validate(DefaultMaxPayload); err != nil {
		return Event{}, err
	}
	return e, nil
}

// Validate checks every writer-set field of e: a three-token type, a
// non-empty kind and actor, a subject id that is a single NATS subject
// token, a payload of at most maxPayload bytes whose digest matches. It
// returns a *FieldError (wrapping ErrInvalidEvent) or ErrPayloadTooLarge.
func (e Event) Validate(maxPayload int) error {
	switch {
	case !ValidEventType(e.Type):
		return &FieldError{"event_type", fmt.Sprintf("%q is not three dot-separated subject tokens", e.Type)}
	case !ValidToken(e.SubjectKind):
		return &FieldError{"subject_kind", fmt.Sprintf("%q is not a single subject token", e.SubjectKind)}
	case !ValidToken(e.SubjectID):
		return &FieldError{"subject_id", fmt.Sprintf("%q is not a single subject token", e.SubjectID)}
	case e.Actor == "" || len(e.Actor) > 256 || strings.TrimSpace(e.Actor) != e.Actor || hasControl(e.Actor):
		return &FieldError{"actor", "must be 1-256 bytes without control characters or leading/trailing spaces"}
	case len(e.Payload) == 0:
		return &FieldError{"payload", "is empty"}
	case maxPayload > 0 && len(e.Payload) > maxPayload:
		return fmt.Errorf("%w: %d bytes, limit %d", ErrPayloadTooLarge, len(e.Payload), maxPayload)
	case e.PayloadDigest != DigestOf(e.Payload):
		return &FieldError{"payload_digest", "does not match BLAKE3-256 of the payload"}
	}
	return nil
}

// hasControl reports whether s holds an ASCII control character (which
// could forge a header line when the actor is relayed as a NATS header).
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}

// maxTokenLen bounds a subject token so subjects stay well inside NATS limits.
const maxTokenLen = 128

// ValidToken reports whether s can be used as exactly one NATS subject
// token: non-empty, at most 128 bytes, printable ASCII without '.', '*',
// '>' or whitespace.
func ValidToken(s string) bool {
	if s == "" || len(s) > maxTokenLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || c == '.' || c == '*' || c == '>' {
			return false
		}
	}
	return true
}

// ValidEventType reports whether s is three valid subject tokens joined by
// dots, such as v1.package.created.
func ValidEventType(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return false
	}
	for _, p := range parts {
		if !ValidToken(p) {
			return false
		}
	}
	return true
}

// Digest is a raw 32-byte BLAKE3-256 digest. Its text form is 64 lowercase
// hex characters.
type Digest [32]byte

// DigestOf returns the BLAKE3-256 digest of b.
func DigestOf(b []byte) Digest { return blake3.Sum256(b) }

// String returns d as 64 lowercase hex characters.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// MarshalText implements encoding.TextMarshaler (lowercase hex).
func (d Digest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; it accepts exactly 64
// lowercase hex characters.
func (d *Digest) UnmarshalText(b []byte) error {
	p, err := ParseDigest(string(b))
	if err != nil {
		return err
	}
	*d = p
	return nil
}

// ParseDigest parses exactly 64 lowercase hex characters.
func ParseDigest(s string) (Digest, error) {
	var d Digest
	if len(s) != 64 {
		return d, fmt.Errorf("digest must be 64 lowercase hex characters, got %d characters", len(s))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return d, fmt.Errorf("digest must be 64 lowercase hex characters, found %q at %d", c, i)
		}
	}
	_, err := hex.Decode(d[:], []byte(s))
	return d, err
}

// MsgID returns the JetStream de-duplication id of the event with sequence
// seq in the log logID: "<log_id>-<sequence>".
func MsgID(logID string, seq int64) string { return fmt.Sprintf("%s-%d", logID, seq) }

// Subject returns the public stream subject of e:
// artifactstore.events.<event_type>.<subject_id>.
func (e Event) Subject() string { return "artifactstore.events." + e.Type + "." + e.SubjectID }

// DBTime normalises t to what both dialects store: UTC, microseconds.
func DBTime(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }
