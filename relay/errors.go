package relay

import (
	"errors"
	"fmt"

	"github.com/artifactstore/artifactstore/internal/wire"
)

var (
	// ErrStreamConflict is wrapped by *ConflictError: the stream exists with a
	// configuration the relay cannot publish into safely.
	ErrStreamConflict = errors.New("relay: stream config conflicts")
	// ErrForeignStream is returned when the stream's last message belongs to
	// another log (or was not written by a relay at all).
	ErrForeignStream = errors.New("relay: stream belongs to another log")
	// ErrStreamTruncated is returned when the stream has a last sequence but
	// its last message is gone (purged or deleted), so where the relay stands
	// cannot be read from the stream.
	ErrStreamTruncated = errors.New("relay: stream's last message is gone")
	// ErrStreamAhead is returned when the stream holds events the log does
	// not (the log was reset or restored from an older backup).
	ErrStreamAhead = errors.New("relay: stream is ahead of the log")
	// ErrDivergedHistory is wrapped by *DivergedError: the stream's last
	// event is not the log's event at that sequence (the log lost commits
	// the stream holds, and may have new ones in their place).
	ErrDivergedHistory = errors.New("relay: stream and log hold different histories")
	// ErrInvalidMessage is wrapped when a stream message does not decode.
	ErrInvalidMessage = wire.ErrInvalidMessage
	// ErrStreamUnpartitioned is returned when the stream's last message has
	// no partition token: it was written before subjects had one, and the
	// stream must be built again from the log.
	ErrStreamUnpartitioned = errors.New("relay: stream holds messages without the partition token")
	// ErrFenced is wrapped when JetStream refused a publish because the
	// stream did not end where the relay expected: another (or a stale)
	// relay published in between.
	ErrFenced = errors.New("relay: publish fenced")
	// ErrAckTimeout is wrapped when a publish was not acknowledged in time.
	ErrAckTimeout = errors.New("relay: publish ack timed out")
	// ErrBatchTooLarge is returned when the server refused an atomic batch
	// for its size: Config.PublishBatch is above the server's limit.
	ErrBatchTooLarge = errors.New("relay: atomic batch above the server's limit")
)

// ConflictError says which field of an existing stream's configuration
// conflicts with what the relay needs. It wraps ErrStreamConflict.
type ConflictError struct {
	// Stream is the stream's name.
	Stream string
	// Field names the conflicting setting (subjects, storage, replicas, ...).
	Field string
	// Got is the existing stream's value, Want the relay's configuration.
	Got, Want string
	// Hint, when set, says how to resolve it.
	Hint string
}

// Error implements error.
func (e *ConflictError) Error() string {
	hint := e.Hint
	if hint == "" {
		hint = "fix the stream or the relay's configuration"
	}
	return fmt.Sprintf("relay: stream %s exists with a conflicting config: %s is %s, want %s (%s)",
		e.Stream, e.Field, e.Got, e.Want, hint)
}

// Unwrap returns ErrStreamConflict.
func (e *ConflictError) Unwrap() error { return ErrStreamConflict }

// LogMismatchError is returned when the stream's last message carries
// another log id than the log the relay reads. It wraps ErrForeignStream.
type LogMismatchError struct {
	// Stream is the stream's name.
	Stream string
	// StreamLogID is the log id of the stream's last message.
	StreamLogID string
	// LogID is the id of the log the relay reads.
	LogID string
}

// Error implements error.
func (e *LogMismatchError) Error() string {
	return fmt.Sprintf("relay: stream %s holds events of log %q, but this log is %q (point the relay at the right database or stream)",
		e.Stream, e.StreamLogID, e.LogID)
}

// Unwrap returns ErrForeignStream.
func (e *LogMismatchError) Unwrap() error { return ErrForeignStream }

// DivergedError is returned when the event the stream holds at Sequence
// (its last, or the last the relay read) differs from the log's event at
// that sequence, or the log has none there: the log was restored from a
// backup, or an asynchronous replica promoted, losing commits that are in
// the stream. Continuing would splice two histories. It wraps
// ErrDivergedHistory; see the package doc for the way out.
type DivergedError struct {
	// Stream is the stream's name.
	Stream string
	// Sequence is the log sequence where the histories differ.
	Sequence int64
	// StreamDigest is the payload digest (64 hex) of the stream's event.
	StreamDigest string
	// LogDigest is the payload digest of the log's event ("" when the log
	// has no event at Sequence).
	LogDigest string
	// Field names the first field that differs (payload_digest,
	// created_at, ...; "sequence" when the log has no such event).
	Field string
}

// Error implements error.
func (e *DivergedError) Error() string {
	logSide := "the log holds no event there"
	if e.LogDigest != "" {
		logSide = fmt.Sprintf("the log's event has payload digest %s (%s differs)", e.LogDigest, e.Field)
	}
	return fmt.Sprintf("relay: stream %s and the log disagree at event %d: the stream's event has payload digest %s, %s; "+
		"the log lost commits the stream holds (restored from a backup?): relaying on would splice two histories "+
		"(build a new stream from the log; see the relay package doc)", e.Stream, e.Sequence, e.StreamDigest, logSide)
}

// Unwrap returns ErrDivergedHistory.
func (e *DivergedError) Unwrap() error { return ErrDivergedHistory }

// permanent reports whether err means retrying cannot help: Run returns it.
func permanent(err error) bool {
	return errors.Is(err, ErrStreamConflict) || errors.Is(err, ErrForeignStream) ||
		errors.Is(err, ErrStreamTruncated) || errors.Is(err, ErrStreamAhead) || errors.Is(err, ErrDivergedHistory) ||
		errors.Is(err, ErrInvalidMessage) || errors.Is(err, ErrStreamUnpartitioned) || errors.Is(err, ErrBatchTooLarge) ||
		errors.Is(err, ErrForeignMessage)
}

// ErrForeignMessage is wrapped by *ForeignMessageError: a message in the
// stream that this relay did not publish is not the log's event.
var ErrForeignMessage = errors.New("relay: the stream holds a message that is not the log's event")

// ForeignMessageError names a message in the stream, after the last one the
// relay knew to be the log's, that is not the log's next event: something
// other than a relay of this log published into the stream. A relay's
// pipelined publishes behind it may have been stored after it, so the
// relay stops rather than go on past an event it may have skipped.
type ForeignMessageError struct {
	Stream         string
	StreamSequence uint64
	// Want is the log sequence of the event that belongs there (0: none,
	// the log has no further event).
	Want int64
	// Why says what differs.
	Why string
}

// Error implements error.
func (e *ForeignMessageError) Error() string {
	return fmt.Sprintf("relay: stream %s holds at sequence %d a message that is not event %d of the log (%s): something other than the relay published into the stream; only the relay may publish to artifactstore.events.> (check the NATS permissions), and the stream must be built again from the log (see relay/doc.go)",
		e.Stream, e.StreamSequence, e.Want, e.Why)
}

// Unwrap returns ErrForeignMessage.
func (e *ForeignMessageError) Unwrap() error { return ErrForeignMessage }
