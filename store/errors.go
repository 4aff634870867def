package store

import (
	"errors"
	"fmt"
)

var (
	// ErrNotFound is returned when a row (package, command, checkpoint) does not exist.
	ErrNotFound = errors.New("store: not found")
	// ErrInvalidEvent is wrapped by every validation error of an event.
	ErrInvalidEvent = errors.New("store: invalid event")
	// ErrPayloadTooLarge is returned when an event's payload exceeds the configured limit.
	ErrPayloadTooLarge = errors.New("store: payload too large")
	// ErrCheckpointMoved is returned by a compare-and-set checkpoint write
	// whose expected value no longer matches: another worker advanced it.
	ErrCheckpointMoved = errors.New("store: checkpoint moved")
	// ErrConflict wraps a write the database refused because it conflicts
	// with a row already there (a unique or other integrity constraint).
	ErrConflict = errors.New("store: conflicting write")
	// ErrCheckpointAhead is returned by a Replay with Reset whose target is
	// below a checkpoint of the projection: rebuilding the views to it
	// would move that checkpoint backwards under the projectors.
	ErrCheckpointAhead = errors.New("store: checkpoint ahead of the replay target")
	// ErrUnavailable wraps errors that mean the database could not be reached
	// or the operation should be retried later (connection refused, shutdown,
	// serialization failure, deadlock).
	ErrUnavailable = errors.New("store: database unavailable")
	// ErrLockHeld is returned when a named leader lock is held by another session.
	ErrLockHeld = errors.New("store: lock held by another session")
	// ErrHistoryBroken is wrapped by *BreakError: an event of the log (or
	// of a copy of it) is missing, out of place, or not what its payload or
	// chain digest says.
	ErrHistoryBroken = errors.New("store: history broken")
	// ErrOutcomeUnknown wraps the error of a call that sent COMMIT and lost
	// the connection before the answer: the transaction may or may not
	// have committed.
	ErrOutcomeUnknown = errors.New("store: transaction outcome unknown")
)

// FieldError says which field of an event is invalid and why. It wraps
// ErrInvalidEvent.
type FieldError struct {
	// Field is the event field's name as in DESIGN.md (subject_id, actor, ...).
	Field string
	// Reason says what is wrong with it.
	Reason string
}

// Error implements error.
func (e *FieldError) Error() string {
	return fmt.Sprintf("store: invalid event: %s %s", e.Field, e.Reason)
}

// Unwrap returns ErrInvalidEvent.
func (e *FieldError) Unwrap() error { return ErrInvalidEvent }

// Temporary reports whether err is worth retrying after a pause because the
// database was unreachable or a transaction lost a race the database
// resolved by aborting it.
func Temporary(err error) bool { return errors.Is(err, ErrUnavailable) }
