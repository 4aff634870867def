package projection

import (
	"context"
	"errors"
	"io"
	"net"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

var (
	// ErrConfig wraps every invalid Projection or Config returned by New,
	// Replay and Migrate; the message names the bad field.
	ErrConfig = errors.New("projection: invalid config")
	// ErrForeignLog is returned by Run when the stream's events (or the log
	// source's) come from another log than the one the projection recorded
	// at its first start: a projection is built from one log for its life.
	ErrForeignLog = errors.New("projection: the stream belongs to another log")
	// ErrPartitionsChanged is returned by Run when the configured partition
	// count, the stream's or the log source's differs from the one the
	// projection recorded at its first start.
	ErrPartitionsChanged = errors.New("projection: partition count differs from the recorded one")
	// ErrPartitionsUnknown is returned by Run at a first start without
	// Config.Partitions when the stream's messages do not tell the log's
	// partition count unambiguously (too few distinct subjects).
	ErrPartitionsUnknown = errors.New("projection: cannot tell the log's partition count from the stream")
	// ErrMigrationChanged is returned by Run, Migrate and Replay when a
	// migration statement already applied to the database differs from the
	// projection's (or the database has applied more statements than the
	// projection lists): migrations are append-only.
	ErrMigrationChanged = errors.New("projection: an applied migration differs")
	// ErrInvalidMessage wraps the error of a stream message that is not a
	// valid event of the projection's log and partition: bad or missing
	// headers, a digest that does not match, another log id, a partition
	// that is not its subject's. Its partition parks with reason "invalid".
	ErrInvalidMessage = errors.New("projection: invalid stream message")
	// ErrOutOfOrder is returned by Replay when its events are not in
	// strictly increasing sequence order.
	ErrOutOfOrder = errors.New("projection: events out of sequence order")
)

// Reasons a partition parks (projection_parked.reason).
const (
	// ReasonPoison: a handler kept failing on the event.
	ReasonPoison = "poison"
	// ReasonGap: the stream lacks events of the partition before the event
	// (its Artifactstore-Partition-Previous was never applied) and no log
	// source could supply them.
	ReasonGap = "gap"
	// ReasonInvalid: the message is not a valid event of this log and
	// partition (ErrInvalidMessage).
	ReasonInvalid = "invalid"
)

// errCheckpointMoved: the compare-and-set of a checkpoint found another
// value; another instance applied the range.
var errCheckpointMoved = errors.New("projection: checkpoint moved")

// errLeaseExpired refuses a transaction once the instance's leases may have
// expired: the partition may belong to another instance by now.
var errLeaseExpired = errors.New("projection: leases may have expired")

// errInterrupted ends a catch-up from the log when its partition stops.
var errInterrupted = errors.New("projection: catch-up interrupted")

// errCrashed is returned by test hooks to make an instance stop as if its
// process had died at that point: no cleanup.
var errCrashed = errors.New("projection: crashed (test hook)")

// temporary reports whether err means the database or the network failed
// (retry the batch) rather than the handler (an attempt that counts toward
// parking). It decides by behaviour: SQLSTATE classes, timeouts, closed
// connections.
func temporary(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code[:2] {
		case "08", "40", "53", "57", "58": // connection, rollback, resources, operator, system
			return true
		}
		return false
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	return pgconn.Timeout(err) || pgconn.SafeToRetry(err) || errors.As(err, &ce) || errors.As(err, &ne) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, pgx.ErrTxClosed)
}
