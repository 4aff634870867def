package projector

import "errors"

var (
	// ErrConfig wraps every configuration error returned by New.
	ErrConfig = errors.New("projector: invalid config")
	// ErrPartitionsChanged is returned by Run when the configured partition
	// count differs from the log's, or the projection's checkpoints were
	// written with another count: a log's partitioning never changes in
	// place.
	ErrPartitionsChanged = errors.New("projector: partition count differs from the log's")
	// ErrStreamMismatch means a stream message does not match the log (a
	// different log id, or a partition that is not its subject's): the
	// partition parks.
	ErrStreamMismatch = errors.New("projector: stream message does not match the log")
)

// errCrashed is returned by test hooks to make a worker stop as if its
// process had died at that point: no cleanup.
var errCrashed = errors.New("projector: crashed (test hook)")
