package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/internal/wire"
)

// verifiedPos is the last stream message the relay knows to be the log's
// event: its own publish, acknowledged (not as a duplicate), or the end of
// a verified synchronisation.
type verifiedPos struct {
	stream uint64
	seq    int64
}

// verifyTail checks that the stream's messages after r.verified, up to
// stream sequence to, are the log's next events in order. Publishes are
// pipelined, each fenced by the stream sequence it expects to follow: a
// message someone else slipped in fences the relay's next publish but lets
// the ones behind it through, after the foreign one. Only a relay of this
// log publishing the very same events (a stale leader) passes the check.
func (r *Relay) verifyTail(ctx context.Context, s jetstream.Stream, logID string, to uint64) error {
	v := r.verified
	if v.stream == 0 || to <= v.stream {
		return nil
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: v.stream + 1})
	if err != nil {
		return kindErr(errKindNATS, fmt.Errorf("relay: reading the stream after sequence %d: %w", v.stream, err))
	}
	next := v.seq
	for at := v.stream + 1; at <= to; {
		batch, err := cons.Fetch(int(min(to-at+1, 500)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return kindErr(errKindNATS, fmt.Errorf("relay: reading the stream after sequence %d: %w", at-1, err))
		}
		var msgs []jetstream.Msg
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) || len(msgs) == 0 {
			return kindErr(errKindNATS, fmt.Errorf("relay: reading the stream after sequence %d: %v messages, %v", at-1, len(msgs), err))
		}
		events, err := r.db.Fetch(ctx, next, len(msgs))
		if err != nil {
			return kindErr(errKindDatabase, fmt.Errorf("relay: reading the log after %d: %w", next, err))
		}
		for i, m := range msgs {
			md, err := m.Metadata()
			if err != nil {
				return kindErr(errKindNATS, err)
			}
			foreign := func(want int64, why string) error {
				return &ForeignMessageError{Stream: r.cfg.Stream, StreamSequence: md.Sequence.Stream, Want: want, Why: why}
			}
			if i >= len(events) {
				return foreign(0, "the log has no event after "+fmt.Sprint(next))
			}
			wm, err := wire.Decode(m.Subject(), m.Headers(), m.Data())
			switch {
			case err != nil:
				return foreign(events[i].Sequence, err.Error())
			case wm.LogID != logID:
				return foreign(events[i].Sequence, "log id "+wm.LogID)
			}
			if field := sameEvent(wm.Event, events[i]); field != "" {
				return foreign(events[i].Sequence, field+" differs")
			}
			next, at = events[i].Sequence, md.Sequence.Stream+1
		}
	}
	return nil
}
