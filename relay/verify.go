package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

// StreamCheck compares the events stream with the log, message by message,
// as a verifier of the log (store.VerifyLog's Each) hands it the log's
// events in order: each message must be the relay's encoding of the
// log's event at its sequence — body, every header (chain digest, log id,
// partition and the partition's previous event included) — with nothing
// missing, repeated or out of order between the stream's first message
// and its last one when the check began. Events the stream has not
// reached yet are the relay's lag, not a break; events before its first
// message were never in it or were removed by its limits. Create it
// before reading the log's head, so that every message it reads is of an
// event the log has committed.
type StreamCheck struct {
	ctx   context.Context
	logID string
	parts int
	// last is the stream sequence of the stream's last message when the
	// check began; nothing after it is read.
	last     uint64
	msgs     jetstream.MessagesContext
	stop     func() bool   // undoes the AfterFunc that stops msgs with ctx
	next     *wire.Message // read ahead, not compared yet
	nextSeq  uint64        // its stream sequence
	done     bool          // every message up to last was read
	previous map[int]int64 // each partition's last event compared
	// fromStart: the first message compared was the log's first event, so
	// each partition's first message must name no previous event.
	fromStart bool
	res       StreamResult
}

// StreamResult is what a StreamCheck compared.
type StreamResult struct {
	// Stream is the stream's name.
	Stream string `json:"stream"`
	// First and Last are the log sequences of the first and last message
	// compared (0 when none were).
	First int64 `json:"first"`
	Last  int64 `json:"last"`
	// Messages counts the messages compared.
	Messages int64 `json:"messages"`
	// Unchained counts the messages without a chain digest header
	// (relayed before the log had a chain).
	Unchained int64 `json:"unchained"`
}

// NewStreamCheck starts comparing stream with the log logID of parts
// partitions from log sequence from (1 when below) on. ctx bounds the
// reading of the stream: Close stops it.
func NewStreamCheck(ctx context.Context, js StreamLookup, stream, logID string, parts int, from int64) (*StreamCheck, error) {
	from = max(from, 1)
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, fmt.Errorf("relay: reading stream %s: %w", stream, err)
	}
	info := s.CachedInfo()
	c := &StreamCheck{ctx: ctx, logID: logID, parts: parts, last: info.State.LastSeq, previous: map[int]int64{},
		res: StreamResult{Stream: stream}}
	if c.last == 0 || info.State.Msgs == 0 {
		c.done = true
		return c, nil
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{wire.Subjects}, DeliverPolicy: jetstream.DeliverAllPolicy}
	if start := startAt(ctx, s, from); start > 1 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, start
	}
	cons, err := s.OrderedConsumer(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("relay: reading stream %s: %w", stream, err)
	}
	if c.msgs, err = cons.Messages(jetstream.PullMaxMessages(1000)); err != nil {
		return nil, fmt.Errorf("relay: reading stream %s: %w", stream, err)
	}
	c.stop = context.AfterFunc(ctx, c.msgs.Stop)
	return c, nil
}

// startAt is the stream sequence of log sequence from when the stream
// holds the log one to one from there (as a stream the relay filled does),
// else 1.
func startAt(ctx context.Context, s jetstream.Stream, from int64) uint64 {
	if from <= 1 {
		return 1
	}
	m, err := s.GetMsg(ctx, uint64(from))
	if err != nil {
		return 1
	}
	wm, err := wire.Decode(m.Subject, m.Header, m.Data)
	if err != nil || wm.Event.Sequence != from {
		return 1
	}
	return uint64(from)
}

// Close stops reading the stream.
func (c *StreamCheck) Close() {
	if c.msgs != nil {
		c.stop()
		c.msgs.Stop()
	}
}

// Result returns what was compared so far.
func (c *StreamCheck) Result() StreamResult { return c.res }

// peek returns the next message of the stream not compared yet, nil when
// the stream (as of the check's start) has none left.
func (c *StreamCheck) peek() (*wire.Message, error) {
	for c.next == nil && !c.done {
		m, err := c.msgs.Next(jetstream.NextMaxWait(readTimeout))
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) || c.ctx.Err() != nil {
			return nil, cmpOr(c.ctx.Err(), err)
		}
		if err != nil {
			return nil, fmt.Errorf("relay: reading stream %s up to message %d: %w", c.res.Stream, c.last, err)
		}
		meta, err := m.Metadata()
		if err != nil {
			return nil, fmt.Errorf("relay: reading stream %s: %w", c.res.Stream, err)
		}
		if meta.Sequence.Stream > c.last {
			c.done = true
			break
		}
		c.done = meta.Sequence.Stream == c.last
		wm, err := wire.Decode(m.Subject(), m.Headers(), m.Data())
		if err != nil {
			return nil, streamBroken(0, "stream message %d: %v", meta.Sequence.Stream, err)
		}
		c.next, c.nextSeq = &wm, meta.Sequence.Stream
	}
	return c.next, nil
}

// Check compares the log's event e (the next one of the log, in order)
// with the stream. A difference is a *store.BreakError naming the event.
func (c *StreamCheck) Check(e store.Event) error {
	m, err := c.peek()
	if err != nil || m == nil {
		return err // nil: the relay has not published e yet
	}
	switch seq := m.Event.Sequence; {
	case seq > e.Sequence && c.res.Messages == 0:
		return nil // the stream starts after e
	case seq > e.Sequence:
		return streamBroken(e.Sequence, "missing from the stream (its next message, %d, is event %d)", c.nextSeq, seq)
	case seq < e.Sequence:
		return streamBroken(seq, "stream message %d holds event %d again or out of order, after event %d", c.nextSeq, seq, c.res.Last)
	}
	if err := c.compare(*m, e); err != nil {
		return err
	}
	c.next = nil
	if c.res.Messages == 0 {
		c.res.First, c.fromStart = e.Sequence, e.Sequence == 1
	}
	c.res.Messages++
	c.res.Last = e.Sequence
	return nil
}

// compare checks the message m of event e against e.
func (c *StreamCheck) compare(m wire.Message, e store.Event) error {
	part := wire.Partition(e.SubjectID, c.parts)
	prev, known := c.previous[part]
	first := c.res.Messages == 0 && e.Sequence == 1
	switch field := sameEvent(m.Event, e); {
	case m.LogID != c.logID:
		return streamBroken(e.Sequence, "the message belongs to log %q, not %q", m.LogID, c.logID)
	case field != "":
		return streamBroken(e.Sequence, "its message's %s differs from the log's", field)
	case string(m.Event.Payload) != string(e.Payload):
		return streamBroken(e.Sequence, "its message's body differs from the log's payload")
	case m.Partition != part:
		return streamBroken(e.Sequence, "its message is in partition %d, the log's subject id is in %d", m.Partition, part)
	case (known || c.fromStart || first) && m.Previous != prev:
		return streamBroken(e.Sequence, "its message names event %d as its partition's previous, the log has %d", m.Previous, prev)
	}
	if m.Event.ChainDigest == (store.Digest{}) {
		c.res.Unchained++
	}
	c.previous[part] = e.Sequence
	return nil
}

// Finish checks what the stream holds beyond the log's last event checked,
// to: nothing may be there, as every message read is of an event the log
// had committed when the check began.
func (c *StreamCheck) Finish(to int64) error {
	m, err := c.peek()
	if err != nil || m == nil {
		return err
	}
	return streamBroken(max(to+1, m.Event.Sequence), "the stream holds event %d (message %d), the log ends at %d: the log lost events the stream has",
		m.Event.Sequence, c.nextSeq, to)
}

func streamBroken(seq int64, format string, args ...any) error {
	return &store.BreakError{Sequence: seq, Reason: "stream: " + fmt.Sprintf(format, args...)}
}

// readTimeout bounds waiting for the next message of a stream being
// checked (a message removed at the end of the range never comes).
const readTimeout = 30 * time.Second

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
