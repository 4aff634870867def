package projector

import "errors"

var (
	// ErrConfig wraps every configuration error returned by New.
	ErrConfig = errors.New("projector: invalid config")
	// ErrPartitionsChanged is returned by Run when the projection's
	// checkpoints were written with a different partition count: the
	// partitioning of a projection cannot change without a replay --reset.
	ErrPartitionsChanged = errors.New("projector: partition count differs from the projection's checkpoints")
	// ErrStreamMismatch means a stream message does not match the log (a
	// different log id, payload digest or partition): the partition parks.
	ErrStreamMismatch = errors.New("projector: stream message does not match the log")
)

// errCrashed is returned by test hooks to make a worker stop as if its
// process had died at that point: no ack, no nak, no cleanup.
var errCrashed = errors.New("projector: crashed (test hook)")
