package relay

import (
	"context"
	"errors"
	"fmt"

	"github.com/artifactstore/artifactstore/store"
)

// sameEvent returns the first field in which the log's event differs from
// the one the stream holds (or the relay read earlier), "" when none does.
// Decode has checked the stream message's Nats-Msg-Id and body against its
// sequence header and payload digest, so these fields pin the event down.
func sameEvent(held, logged store.Event) string {
	switch {
	case held.Sequence != logged.Sequence:
		return "sequence"
	case held.PayloadDigest != logged.PayloadDigest:
		return "payload_digest"
	case held.Type != logged.Type:
		return "event_type"
	case held.SubjectKind != logged.SubjectKind:
		return "subject_kind"
	case held.SubjectID != logged.SubjectID:
		return "subject_id"
	case held.Actor != logged.Actor:
		return "actor"
	case !held.CreatedAt.Equal(logged.CreatedAt):
		return "created_at"
	case held.ChainDigest != (store.Digest{}) && held.ChainDigest != logged.ChainDigest:
		// (A message relayed before the log had a chain has none.)
		return "chain_digest"
	}
	return ""
}

// fetchAnchored reads up to limit events after anchor.Sequence and checks,
// in the same read, that the log still holds anchor there: the last event
// the stream holds or the relay has read. A log that lost it (restored from
// a backup, a promoted asynchronous replica) returns a *DivergedError
// rather than events of another history.
func (r *Relay) fetchAnchored(ctx context.Context, anchor store.Event, limit int) ([]store.Event, error) {
	if anchor.CreatedAt.IsZero() {
		// An empty stream, or a position known by its sequence only: nothing
		// to compare (every committed event has a created_at).
		return r.db.Fetch(ctx, anchor.Sequence, limit)
	}
	events, err := r.db.Fetch(ctx, anchor.Sequence-1, limit+1)
	if err != nil {
		return nil, err
	}
	if len(events) == 0 || events[0].Sequence != anchor.Sequence {
		return nil, &DivergedError{Stream: r.cfg.Stream, Sequence: anchor.Sequence,
			StreamDigest: anchor.PayloadDigest.String(), Field: "sequence"}
	}
	if field := sameEvent(anchor, events[0]); field != "" {
		return nil, &DivergedError{Stream: r.cfg.Stream, Sequence: anchor.Sequence,
			StreamDigest: anchor.PayloadDigest.String(), LogDigest: events[0].PayloadDigest.String(), Field: field}
	}
	return events[1:], nil
}

// checkHistory compares the stream's last event with the log's event at
// that sequence, at every synchronisation.
func (r *Relay) checkHistory(ctx context.Context, last store.Event) error {
	if last.CreatedAt.IsZero() {
		return nil // an empty stream
	}
	_, err := r.fetchAnchored(ctx, last, 0)
	if err != nil && !errors.Is(err, ErrDivergedHistory) {
		return kindErr(errKindDatabase, fmt.Errorf("relay: reading the log's event %d: %w", last.Sequence, err))
	}
	return err
}
