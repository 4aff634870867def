package projector

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

// Decode rebuilds the event a stream message carries, on its public
// subject or on the derived stream's partitioned form of it
// (artifactstore.partitioned.<p>.<type>.<subject id>), with the checks of
// the stream contract that the relay writes and the client reads
// (wire.Decode: every header once and consistent with the subject,
// Nats-Msg-Id and body), and checks that it comes from the log logID
// (unchecked when empty).
func Decode(subject string, h nats.Header, body []byte, logID string) (store.Event, error) {
	public := subject
	if rest, ok := strings.CutPrefix(subject, partitionedPrefix); ok {
		p, tail, ok := strings.Cut(rest, ".")
		if _, err := strconv.ParseUint(p, 10, 16); !ok || err != nil {
			return store.Event{}, fmt.Errorf("projector: subject %q has no partition token", subject)
		}
		public = wire.SubjectPrefix + tail
	}
	e, from, err := wire.Decode(public, h, body)
	if err != nil {
		return store.Event{}, fmt.Errorf("projector: %w", err)
	}
	if logID != "" && from != logID {
		return store.Event{}, fmt.Errorf("%w: event %d is from log %q, not %q", ErrStreamMismatch, e.Sequence, from, logID)
	}
	return e, nil
}
