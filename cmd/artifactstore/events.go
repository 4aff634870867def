package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

type eventsCmd struct {
	Tail eventsTailCmd `cmd:"" help:"Follow the events stream from a log sequence, verifying every payload digest and the hash chain."`
}

type eventsTailCmd struct {
	Since   int64  `env:"ARTIFACTSTORE_SINCE" help:"Start after this log sequence (0: from the beginning)."`
	Stream  string `env:"ARTIFACTSTORE_STREAM" default:"ARTIFACTSTORE_EVENTS" help:"Stream to read."`
	Subject string `default:"artifactstore.events.>" env:"ARTIFACTSTORE_SUBJECT" help:"Subject filter, e.g. artifactstore.events.v1.package.>"`
	JSON    bool   `env:"ARTIFACTSTORE_JSON" help:"Print one JSON object per event."`
	Limit   int    `env:"ARTIFACTSTORE_LIMIT" help:"Stop after this many events (0: follow until interrupted)."`
}

// tailedEvent is the JSON form events tail prints.
type tailedEvent struct {
	Sequence      int64           `json:"sequence"`
	EventType     string          `json:"event_type"`
	SubjectKind   string          `json:"subject_kind"`
	SubjectID     string          `json:"subject_id"`
	Actor         string          `json:"actor"`
	CreatedAt     time.Time       `json:"created_at"`
	PayloadDigest string          `json:"payload_digest"`
	ChainDigest   string          `json:"chain_digest,omitempty"`
	Payload       json.RawMessage `json:"payload"`
}

// chainNote is what the text output says of the event's chain digest.
func chainNote(e store.Event) string {
	if e.ChainDigest == (store.Digest{}) {
		return ""
	}
	return ", chain " + e.ChainDigest.String()[:12]
}

func (c eventsTailCmd) Run(ctx context.Context, g *globals) error {
	nc, err := dialClient(g)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	stream, err := js.Stream(sctx, c.Stream)
	cancel()
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return failf(exitNotFound, "stream %s does not exist yet (is the relay running?)", c.Stream)
	}
	if err != nil {
		return failf(exitUnavailble, "reading stream %s: %v", c.Stream, err)
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{c.Subject}, DeliverPolicy: jetstream.DeliverAllPolicy}
	if start := c.startSequence(ctx, stream); start > 1 {
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = start
	}
	cons, err := stream.OrderedConsumer(ctx, cfg)
	if err != nil {
		return failf(exitUnavailble, "creating a consumer on %s: %v", c.Stream, err)
	}
	msgs, err := cons.Messages()
	if err != nil {
		return err
	}
	defer msgs.Stop()
	stop := context.AfterFunc(ctx, msgs.Stop)
	defer stop()
	enc := json.NewEncoder(os.Stdout)
	n := 0
	chain := wire.ChainCheck{Contiguous: c.Subject == wire.Subjects}
	for {
		m, err := msgs.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			return err
		}
		wm, err := wire.Decode(m.Subject(), m.Headers(), m.Data())
		e := wm.Event
		if err != nil {
			// Digest mismatches and malformed messages are reported, not hidden.
			return failf(exitError, "invalid message on %s: %v", m.Subject(), err)
		}
		if err := chain.Check(wm); err != nil {
			return failf(exitBroken, "%v", err)
		}
		if e.Sequence <= c.Since {
			continue
		}
		if c.JSON {
			payload := json.RawMessage(e.Payload)
			if !json.Valid(e.Payload) {
				payload, _ = json.Marshal(string(e.Payload))
			}
			var chain string
			if e.ChainDigest != (store.Digest{}) {
				chain = e.ChainDigest.String()
			}
			if err := enc.Encode(tailedEvent{e.Sequence, e.Type, e.SubjectKind, e.SubjectID, e.Actor, e.CreatedAt,
				e.PayloadDigest.String(), chain, payload}); err != nil {
				return err
			}
		} else {
			fmt.Printf("%d\t%s\t%s\t%s\t%s\tdigest ok%s\n", e.Sequence, e.CreatedAt.Format(time.RFC3339Nano), e.Type, e.SubjectID, e.Actor, chainNote(e))
		}
		n++
		if c.Limit > 0 && n >= c.Limit {
			return nil
		}
	}
}

// startSequence finds the stream sequence just after log sequence Since
// when the stream maps log sequences one to one (it does when the relay
// created it); otherwise it returns 1 and Run skips older events itself.
func (c eventsTailCmd) startSequence(ctx context.Context, s jetstream.Stream) uint64 {
	if c.Since <= 0 {
		return 1
	}
	m, err := s.GetMsg(ctx, uint64(c.Since))
	if err != nil {
		return 1
	}
	wm, err := wire.Decode(m.Subject, m.Header, m.Data)
	if err != nil || wm.Event.Sequence != c.Since {
		return 1
	}
	return uint64(c.Since) + 1
}
