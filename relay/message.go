package relay

import (
	"github.com/nats-io/nats.go"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

// Encode returns the stream message of event e of log logID in a log of
// parts partitions, whose partition's previous event is previous: its
// subject, the payload as body and every header of the contract
// (internal/wire). The fencing header is not set.
func Encode(logID string, e store.Event, parts int, previous int64) *nats.Msg {
	return wire.Encode(wire.Message{Event: e, LogID: logID, Partition: wire.Partition(e.SubjectID, parts), Previous: previous}, 0)
}
