package relay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

// StreamLookup finds a stream by name; jetstream.JetStream implements it.
type StreamLookup interface {
	Stream(ctx context.Context, name string) (jetstream.Stream, error)
}

// StreamManager finds and creates streams; jetstream.JetStream implements it.
type StreamManager interface {
	StreamLookup
	CreateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error)
}

// JetStream is what the relay needs of a JetStream context:
// jetstream.JetStream implements it.
//
// The relay owns the context's asynchronous publishing: after a failed
// window it resets it with CleanupPublisher so that publishes nobody will
// ever answer (dropped while a stream has no leader) cannot pile up until
// PublishMsgAsync refuses everything with ErrTooManyStalledMsgs. Give the
// relay a context nothing else publishes asynchronously on, preferably
// made with jetstream.WithPublishAsyncTimeout (at most Config.AckTimeout)
// so that such publishes resolve by themselves.
type JetStream interface {
	StreamManager
	PublishMsgAsync(m *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error)
	// PublishAsyncPending counts publishes not yet answered.
	PublishAsyncPending() int
	// CleanupPublisher fails every pending publish and drops the reply
	// subscription, so that late answers to them are ignored.
	CleanupPublisher()
	// Conn is the connection atomic batches are published on (nats.go has
	// no batch API): see Config.PublishBatch.
	Conn() *nats.Conn
}

// errCodeSubjectOverlap is JetStream's "subjects overlap with an existing
// stream" error code (nats.go has no constant for it).
const errCodeSubjectOverlap jetstream.ErrorCode = 10065

// StreamConfig returns the configuration EnsureStream creates the stream
// with: atomic publishing is allowed when cfg.PublishBatch is set;
// deleting and purging messages are denied unless cfg.AllowStreamDeletes.
func StreamConfig(cfg Config) jetstream.StreamConfig {
	cfg = cfg.withDefaults()
	return jetstream.StreamConfig{
		Name:        cfg.Stream,
		Description: "artifactstore events, published by the relay in log order",
		Subjects:    []string{Subjects},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		Replicas:    cfg.Replicas,
		Duplicates:  cfg.DuplicateWindow,

		AllowAtomicPublish: cfg.PublishBatch > 0,
		DenyDelete:         !cfg.AllowStreamDeletes,
		DenyPurge:          !cfg.AllowStreamDeletes,
	}
}

// EnsureStream creates the events stream with StreamConfig(cfg), or checks
// that the existing one matches it: subjects, file storage, limits
// retention, replicas and duplicate window, not sealed, not a mirror, no
// subject transform, and (unless cfg.AllowStreamDeletes) deleting and
// purging messages denied. Whether it allows atomic publishing is not checked:
// the relay publishes per event into a stream that does not. A conflicting stream returns a *ConflictError (wrapping
// ErrStreamConflict); it is never changed. ctx bounds the requests.
func EnsureStream(ctx context.Context, js StreamManager, cfg Config) (jetstream.Stream, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	want := StreamConfig(cfg)
	for attempt := 0; ; attempt++ {
		s, err := js.Stream(ctx, cfg.Stream)
		if errors.Is(err, jetstream.ErrStreamNotFound) && attempt < 3 {
			s, err = js.CreateStream(ctx, want)
			var apiErr *jetstream.APIError
			switch {
			case errors.Is(err, jetstream.ErrStreamNameAlreadyInUse):
				continue // created concurrently (or differently): look again
			case errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeSubjectOverlap:
				return nil, &ConflictError{Stream: cfg.Stream, Field: "subjects",
					Got: "taken by another stream (" + apiErr.Description + ")", Want: Subjects}
			}
		}
		if err != nil {
			return nil, fmt.Errorf("relay: ensuring stream %s: %w", cfg.Stream, err)
		}
		if err := checkStream(cfg.Stream, want, s.CachedInfo().Config); err != nil {
			return s, err
		}
		return s, checkDeletes(cfg, s.CachedInfo().Config)
	}
}

func checkStream(name string, want, got jetstream.StreamConfig) error {
	conflict := func(field string, g, w any) error {
		return &ConflictError{Stream: name, Field: field, Got: fmt.Sprint(g), Want: fmt.Sprint(w)}
	}
	switch {
	case !slices.Equal(got.Subjects, want.Subjects):
		return conflict("subjects", "["+strings.Join(got.Subjects, " ")+"]", "["+strings.Join(want.Subjects, " ")+"]")
	case got.Storage != want.Storage:
		return conflict("storage", got.Storage, want.Storage)
	case got.Retention != want.Retention:
		return conflict("retention", got.Retention, want.Retention)
	case got.Replicas != want.Replicas:
		return conflict("replicas", got.Replicas, want.Replicas)
	case got.Duplicates != want.Duplicates:
		return conflict("duplicate window", got.Duplicates, want.Duplicates)
	case got.Sealed:
		return conflict("sealed", true, false)
	case got.Mirror != nil:
		return conflict("mirror", got.Mirror.Name, "none")
	case got.SubjectTransform != nil:
		return conflict("subject transform", got.SubjectTransform.Destination, "none")
	case got.NoAck:
		return conflict("no_ack", true, false)
	}
	return nil
}

// checkDeletes refuses a stream that allows deleting or purging messages,
// unless the relay is told to accept one.
func checkDeletes(cfg Config, got jetstream.StreamConfig) error {
	if cfg.AllowStreamDeletes || got.DenyDelete && got.DenyPurge {
		return nil
	}
	field := "deny_delete"
	if got.DenyDelete {
		field = "deny_purge"
	}
	return &ConflictError{Stream: cfg.Stream, Field: field, Got: "false", Want: "true",
		Hint: fmt.Sprintf("anyone with JetStream API rights could remove history downstream consumers rely on: "+
			"deny both (nats stream edit %s --deny-delete --deny-purge, as a NATS admin; it cannot be undone), "+
			"or run the relay with --allow-stream-deletes", cfg.Stream)}
}

// Position is where the events stream stands: its last message.
type Position struct {
	// Stream is the stream's name.
	Stream string `json:"stream"`
	// LogID is the log the last message came from ("" for an empty stream).
	LogID string `json:"log_id,omitempty"`
	// Sequence is the log sequence of the last event in the stream (0 for
	// an empty stream): the relay's position.
	Sequence int64 `json:"sequence"`
	// StreamSequence is the stream sequence of that message.
	StreamSequence uint64 `json:"stream_sequence"`
}

// ReadPosition reads the stream's last message and returns where the relay
// stands; it works without a running Relay (the status command uses it).
// An empty stream is position 0. A stream whose last message is gone
// returns ErrStreamTruncated, one whose last message is not an event
// message wraps ErrInvalidMessage. ctx bounds the requests.
func ReadPosition(ctx context.Context, js StreamLookup, stream string) (Position, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return Position{}, fmt.Errorf("relay: reading stream %s: %w", stream, err)
	}
	return position(ctx, s)
}

// position reads the last message of s, whose cached info is fresh.
func position(ctx context.Context, s jetstream.Stream) (Position, error) {
	pos, _, err := lastEvent(ctx, s)
	return pos, err
}

// lastEvent is position with the stream's last event (zero for an empty
// stream), decoded and checked against its own headers.
func lastEvent(ctx context.Context, s jetstream.Stream) (Position, store.Event, error) {
	info := s.CachedInfo()
	pos := Position{Stream: info.Config.Name}
	last := info.State.LastSeq
	if last == 0 {
		return pos, store.Event{}, nil
	}
	m, err := s.GetMsg(ctx, last)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return pos, store.Event{}, fmt.Errorf("%w: stream %s ends at sequence %d but holds no message there (purged or deleted); the relay cannot tell which event it holds",
			ErrStreamTruncated, pos.Stream, last)
	}
	if err != nil {
		return pos, store.Event{}, fmt.Errorf("relay: reading the last message of %s: %w", pos.Stream, err)
	}
	if unpartitioned(m.Subject, m.Header) {
		return pos, store.Event{}, fmt.Errorf("%w: stream %s, message %d, subject %s; build a new stream from the log: stop the relays, remove the stream (nats stream rm %s), start a relay (it republishes the whole log) and tell downstream consumers to read it again",
			ErrStreamUnpartitioned, pos.Stream, last, m.Subject, pos.Stream)
	}
	wm, err := wire.Decode(m.Subject, m.Header, m.Data)
	if err != nil {
		return pos, store.Event{}, fmt.Errorf("stream %s, message %d: %w", pos.Stream, last, err)
	}
	pos.LogID, pos.Sequence, pos.StreamSequence = wm.LogID, wm.Event.Sequence, m.Sequence
	return pos, wm.Event, nil
}

// unpartitioned reports whether a message is an event in the format before
// partition tokens: subject artifactstore.events.<type>.<subject id>.
func unpartitioned(subject string, h nats.Header) bool {
	return subject == wire.SubjectPrefix+h.Get(wire.HeaderEventType)+"."+h.Get(wire.HeaderSubjectID)
}

// partitionHeads returns, for each of parts partitions, the sequence of the
// partition's last event up to pos (what the next event's
// Artifactstore-Partition-Previous header says). It asks the stream for
// each partition's last message; a partition with none in the stream is
// looked up in the log, which is read up to the stream's first event only
// when the stream does not start at the log's first event.
func partitionHeads(ctx context.Context, s jetstream.Stream, db store.DB, pos Position, parts int) ([]int64, error) {
	heads := make([]int64, parts)
	if pos.Sequence == 0 {
		return heads, nil
	}
	var missing []int
	for p := range parts {
		m, err := s.GetLastMsgForSubject(ctx, wire.PartitionFilter(p))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			missing = append(missing, p)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("relay: last message of partition %d: %w", p, err)
		}
		wm, err := wire.Decode(m.Subject, m.Header, m.Data)
		if err != nil {
			return nil, fmt.Errorf("relay: last message of partition %d: %w", p, err)
		}
		heads[p] = wm.Event.Sequence
	}
	if len(missing) == 0 {
		return heads, nil
	}
	return heads, logPartitionHeads(ctx, s, db, parts, missing, heads)
}

// logPartitionHeads fills heads[p] for the partitions in missing from the
// log's events below the stream's first one.
func logPartitionHeads(ctx context.Context, s jetstream.Stream, db store.DB, parts int, missing []int, heads []int64) error {
	first, err := s.GetMsg(ctx, s.CachedInfo().State.FirstSeq, jetstream.WithGetMsgSubject(wire.Subjects))
	if err != nil {
		return fmt.Errorf("relay: first message of the stream: %w", err)
	}
	fm, err := wire.Decode(first.Subject, first.Header, first.Data)
	if err != nil {
		return fmt.Errorf("relay: first message of the stream: %w", err)
	}
	for after, upTo := int64(0), fm.Event.Sequence-1; after < upTo; {
		keys, err := db.FetchKeys(ctx, after, upTo, 5000)
		if err != nil {
			return fmt.Errorf("relay: reading the log's keys: %w", err)
		}
		if len(keys) == 0 {
			break
		}
		for _, k := range keys {
			if p := wire.Partition(k.SubjectID, parts); slices.Contains(missing, p) {
				heads[p] = k.Sequence
			}
		}
		after = keys[len(keys)-1].Sequence
	}
	return nil
}

// Status is the relay's progress measured against the log.
type Status struct {
	Position
	// Head is the log's highest committed sequence.
	Head int64 `json:"head"`
	// Lag is Head − Position.Sequence: events committed but not yet in the
	// stream.
	Lag int64 `json:"lag"`
}

// ReadStatus reads the log head and the stream's position; it works
// without a running Relay. A stream of another log returns a
// *LogMismatchError. ctx bounds the requests.
func ReadStatus(ctx context.Context, db store.DB, js StreamLookup, stream string) (Status, error) {
	if stream == "" {
		stream = DefaultStream
	}
	logID, err := db.LogID(ctx)
	if err != nil {
		return Status{}, fmt.Errorf("relay: reading the log id: %w", err)
	}
	pos, err := ReadPosition(ctx, js, stream)
	if err != nil {
		return Status{}, err
	}
	if pos.LogID != "" && pos.LogID != logID {
		return Status{}, &LogMismatchError{Stream: stream, StreamLogID: pos.LogID, LogID: logID}
	}
	head, err := db.Head(ctx)
	if err != nil {
		return Status{}, fmt.Errorf("relay: reading the log head: %w", err)
	}
	return Status{Position: pos, Head: head, Lag: head - pos.Sequence}, nil
}
