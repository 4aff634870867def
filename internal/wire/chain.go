package wire

import (
	"errors"
	"fmt"

	"github.com/artifactstore/artifactstore/store"
)

// ErrChainBroken is wrapped by *ChainError.
var ErrChainBroken = errors.New("wire: hash chain broken")

// ChainError says at which sequence the messages a reader received stop
// forming the log's hash chain. It wraps ErrChainBroken.
type ChainError struct {
	// Sequence is the first event that breaks the chain (a message whose
	// chain digest does not follow, or the first one missing).
	Sequence int64
	// Reason says how.
	Reason string
}

// Error implements error.
func (e *ChainError) Error() string {
	return fmt.Sprintf("wire: hash chain broken at event %d: %s", e.Sequence, e.Reason)
}

// Unwrap returns ErrChainBroken.
func (e *ChainError) Unwrap() error { return ErrChainBroken }

// ChainCheck checks the hash chain across the messages of the events
// stream a reader receives in stream order (decoded, so each one's payload
// digest is already checked). The first chained message is trusted; each
// one that follows its predecessor's sequence must carry the chain digest
// store.ChainDigest gives for it. A reader with a subject filter sees
// events with gaps between them and can check only the consecutive ones;
// one that reads everything sets Contiguous, and a gap is then a break.
// Messages without a chain digest (relayed before the log had a chain)
// are not checked, and the next chained one is trusted again. The zero
// value is ready to use.
type ChainCheck struct {
	// Contiguous says the reader receives every event from its first one
	// on (no subject filter): a sequence gap is a break.
	Contiguous bool
	seq        int64
	last       store.Digest
}

// Check checks m against the messages checked before it; the error is a
// *ChainError. After an error the check is unchanged.
func (c *ChainCheck) Check(m Message) error {
	e := m.Event
	switch {
	case e.ChainDigest == (store.Digest{}):
		c.seq = 0
		return nil
	case c.seq == 0:
	case e.Sequence <= c.seq:
		return &ChainError{Sequence: e.Sequence, Reason: fmt.Sprintf("out of order: it comes after event %d", c.seq)}
	case e.Sequence == c.seq+1:
		if store.ChainDigest(c.last, e) != e.ChainDigest {
			return &ChainError{Sequence: e.Sequence, Reason: fmt.Sprintf("%s %s does not follow from event %d's",
				HeaderChainDigest, e.ChainDigest, c.seq)}
		}
	case c.Contiguous:
		return &ChainError{Sequence: c.seq + 1, Reason: fmt.Sprintf("missing: the stream goes from event %d to event %d", c.seq, e.Sequence)}
	}
	c.seq, c.last = e.Sequence, e.ChainDigest
	return nil
}
