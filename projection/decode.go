package projection

import (
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/artifactstore/artifactstore/internal/wire"
)

// decode rebuilds the event of a stream message and checks it belongs to
// the log logID partitioned into parts: the contract's checks
// (wire.Decode: every header once, subject, message id, digest of the
// body), then the log id, then that its partition is its subject id's.
// Errors wrap ErrInvalidMessage.
func decode(subject string, h nats.Header, body []byte, logID string, parts int) (wire.Message, error) {
	m, err := wire.Decode(subject, h, body)
	if err != nil {
		return wire.Message{}, fmt.Errorf("%w: %w", ErrInvalidMessage, err)
	}
	if m.LogID != logID {
		return wire.Message{}, fmt.Errorf("%w: event %d is from log %q, the projection's is %q",
			ErrInvalidMessage, m.Event.Sequence, m.LogID, logID)
	}
	if want := wire.Partition(m.Event.SubjectID, parts); m.Partition != want {
		return wire.Message{}, fmt.Errorf("%w: event %d of subject %s is in partition %d, the log's %d partitions put it in %d",
			ErrInvalidMessage, m.Event.Sequence, m.Event.SubjectID, m.Partition, parts, want)
	}
	return m, nil
}
