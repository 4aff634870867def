package relay

import (
	"github.com/nats-io/nats.go"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

// The headers of every event message (DESIGN.md, "The events stream").
const (
	HeaderMsgID         = wire.HeaderMsgID // <log_id>-<sequence>
	HeaderSequence      = wire.HeaderSequence
	HeaderEventType     = wire.HeaderEventType
	HeaderSubjectKind   = wire.HeaderSubjectKind
	HeaderSubjectID     = wire.HeaderSubjectID
	HeaderActor         = wire.HeaderActor
	HeaderPayloadDigest = wire.HeaderPayloadDigest
	HeaderCreatedAt     = wire.HeaderCreatedAt
	HeaderLogID         = wire.HeaderLogID
)

// SubjectPrefix starts every event subject.
const SubjectPrefix = wire.SubjectPrefix

// CreatedAtLayout is the format of Artifactstore-Created-At: RFC 3339 in
// UTC with exactly nine fractional digits.
const CreatedAtLayout = wire.CreatedAtLayout

// Encode returns the stream message of event e of log logID: its public
// subject, the payload as body and every header of the contract. The
// fencing header is not set.
func Encode(logID string, e store.Event) *nats.Msg { return wire.Encode(logID, e, 0) }

// Decode parses a message of the events stream back into its event and the
// id of the log it came from. It checks that the message is consistent: the
// subject matches the type and subject id, Nats-Msg-Id matches the log id
// and sequence, and the digest matches the body. Errors wrap
// ErrInvalidMessage.
func Decode(subject string, h nats.Header, data []byte) (store.Event, string, error) {
	return wire.Decode(subject, h, data)
}
