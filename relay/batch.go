package relay

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/store"
)

// Atomic batch publishing (nats-server 2.12+): nats.go has neither an API
// nor constants for it.
const (
	headerBatchID     = "Nats-Batch-Id"       // ≤ 64 characters, one per batch
	headerBatchSeq    = "Nats-Batch-Sequence" // 1..N without gaps
	headerBatchCommit = "Nats-Batch-Commit"   // "1" on the last message

	errCodeBatchDuplicate jetstream.ErrorCode = 10201 // a message id is already in the stream
	errCodeBatchTooLarge  jetstream.ErrorCode = 10199 // above the server's max_msgs per batch
)

// sentBatch is one atomic batch published and awaiting the answer to its
// commit.
type sentBatch struct {
	id          string
	reply       string // the commit's reply subject
	first, last int64  // log sequences
	count       int
	streamSeq   uint64 // stream sequence its last message must be stored at
	deadline    time.Time
	answer      *nats.Msg // once arrived
}

// batchAck is the answer to a batch's commit: a PubAck or an API error.
type batchAck struct {
	Stream string              `json:"stream"`
	Seq    uint64              `json:"seq"`
	Batch  string              `json:"batch"`
	Count  int                 `json:"count"`
	Error  *jetstream.APIError `json:"error"`
}

// batchSize is the atomic batch size to publish with into a stream of
// configuration sc: 0 when batching is off, or when the stream does not
// allow atomic publishing (warned once until it does).
func (r *Relay) batchSize(sc jetstream.StreamConfig) int {
	switch {
	case r.cfg.PublishBatch == 0:
		return 0
	case sc.AllowAtomicPublish:
		r.warnedNoAtomic = false
		r.m.publishBatch.Set(float64(r.cfg.PublishBatch))
		return r.cfg.PublishBatch
	}
	r.m.publishBatch.Set(0)
	if !r.warnedNoAtomic {
		r.warnedNoAtomic = true
		r.log.Warn("the stream does not allow atomic publishing: publishing event by event, which a server with sync_interval: always syncs one by one; "+
			"to batch, set allow_atomic: true on the stream as a NATS admin (the relay may not update streams), or run the relays without --publish-batch",
			zap.Int("publish_batch", r.cfg.PublishBatch))
	}
	return 0
}

// publishBatches is publish with atomic batches of up to size events, each
// fenced by its first message's expected last sequence, at most
// Config.batchesInFlight awaiting their commit's answer. A batch is stored
// whole or not at all, so any error ends the session: the next
// synchronisation reads where the stream stands.
func (r *Relay) publishBatches(ctx context.Context, logID string, pos Position, heads []int64, size int, batches <-chan fetched) (progressed bool, err error) {
	nc := r.js.Conn()
	answers := make(chan *nats.Msg, 2*MaxBatchesInFlight)
	inbox := nc.NewInbox() // per session: late answers to an old one are dropped
	sub, err := nc.ChanSubscribe(inbox+".*", answers)
	if err != nil {
		return false, kindErr(errKindNATS, fmt.Errorf("relay: subscribing to batch answers: %w", err))
	}
	defer func() { _ = sub.Unsubscribe() }()
	prefix := rand.Text() // batch ids: <prefix>-<n>, unique across sessions and relays
	var w []*sentBatch
	var pending []store.Event
	last, n := pos.StreamSequence, 0
	check := time.NewTicker(max(r.cfg.AckTimeout/4, time.Millisecond))
	defer check.Stop()
	for {
		for len(pending) > 0 && len(w) < r.cfg.batchesInFlight() && ctx.Err() == nil {
			n++
			k := min(len(pending), size)
			b := &sentBatch{id: prefix + "-" + strconv.Itoa(n), reply: inbox + "." + strconv.Itoa(n)}
			if err := r.sendBatch(nc, b, logID, heads, pending[:k], last); err != nil {
				r.abortBatches(ctx, w, answers)
				return progressed, err
			}
			last = b.streamSeq
			w = append(w, b)
			pending = pending[k:]
		}
		var in <-chan fetched
		if len(pending) == 0 {
			in = batches
		}
		select {
		case f := <-in:
			if f.err != nil {
				r.abortBatches(ctx, w, answers)
				return progressed, f.err
			}
			pending = f.events
			r.stage("fetched", pending[len(pending)-1].Sequence)
		case m := <-answers:
			receive(w, m)
			for len(w) > 0 && w[0].answer != nil {
				b := w[0]
				w = w[1:]
				if err := r.checkBatchAck(b); err != nil {
					r.abortBatches(ctx, w, answers)
					return progressed, err
				}
				progressed = true
				r.verified = verifiedPos{stream: b.streamSeq, seq: b.last}
				r.batchAcked(b)
			}
		case now := <-check.C:
			if len(w) == 0 || now.Before(w[0].deadline) {
				continue
			}
			r.abortBatches(ctx, w[1:], answers)
			return progressed, kindErr(errKindTimeout, fmt.Errorf("%w: batch %s of events %d..%d after %s", ErrAckTimeout, w[0].id, w[0].first, w[0].last, r.cfg.AckTimeout))
		case <-ctx.Done():
			r.finishBatches(w, answers)
			return progressed, nil
		}
	}
}

// sendBatch publishes events as atomic batch b, whose first message
// expects the stream to end at last.
func (r *Relay) sendBatch(nc *nats.Conn, b *sentBatch, logID string, heads []int64, events []store.Event, last uint64) error {
	for i, e := range events {
		m := encode(logID, e, heads)
		m.Header[headerBatchID] = []string{b.id}
		m.Header[headerBatchSeq] = []string{strconv.Itoa(i + 1)}
		if i == 0 {
			// Later messages of a batch cannot carry it: each is checked
			// against the stream as it was before the batch.
			m.Header[jetstream.ExpectedLastSeqHeader] = []string{strconv.FormatUint(last, 10)}
		}
		if i == len(events)-1 {
			m.Header[headerBatchCommit] = []string{"1"}
			m.Reply = b.reply
		}
		r.stage("publish", e.Sequence)
		if err := nc.PublishMsg(m); err != nil {
			return kindErr(errKindNATS, fmt.Errorf("relay: publishing event %d (message %d of batch %s): %w", e.Sequence, i+1, b.id, err))
		}
		r.stage("published", e.Sequence)
	}
	b.first, b.last, b.count = events[0].Sequence, events[len(events)-1].Sequence, len(events)
	b.streamSeq = last + uint64(len(events))
	b.deadline = time.Now().Add(r.cfg.AckTimeout)
	return nil
}

// receive files answer m with the batch it answers.
func receive(w []*sentBatch, m *nats.Msg) {
	for _, b := range w {
		if b.reply == m.Subject {
			b.answer = m
			return
		}
	}
}

// checkBatchAck checks b's answer: the whole batch stored where the relay
// expected it.
func (r *Relay) checkBatchAck(b *sentBatch) error {
	var ack batchAck
	if err := json.Unmarshal(b.answer.Data, &ack); err != nil {
		return kindErr(errKindNATS, fmt.Errorf("relay: batch %s of events %d..%d: unreadable answer %q (status %q): %w",
			b.id, b.first, b.last, b.answer.Data, b.answer.Header.Get("Status"), err))
	}
	if ack.Error != nil {
		return batchErr(b, ack.Error)
	}
	if ack.Stream != r.cfg.Stream || ack.Seq != b.streamSeq || ack.Batch != b.id || ack.Count != b.count {
		return kindErr(errKindFenced, fmt.Errorf("%w: batch %s of events %d..%d was stored in %s up to sequence %d (batch %s of %d), expected %s up to %d (%d messages)",
			ErrFenced, b.id, b.first, b.last, ack.Stream, ack.Seq, ack.Batch, ack.Count, r.cfg.Stream, b.streamSeq, b.count))
	}
	return nil
}

func batchErr(b *sentBatch, apiErr *jetstream.APIError) error {
	what := fmt.Sprintf("batch %s of events %d..%d", b.id, b.first, b.last)
	switch apiErr.ErrorCode {
	case jetstream.JSErrCodeStreamWrongLastSequence, errCodeBatchDuplicate:
		return kindErr(errKindFenced, fmt.Errorf("%w: %s expected the stream to end at %d: %w", ErrFenced, what, b.streamSeq-uint64(b.count), apiErr))
	case errCodeBatchTooLarge:
		return fmt.Errorf("%w: %s (%d events): %w; lower --publish-batch (Config.PublishBatch) to the server's jetstream limits batch max_msgs",
			ErrBatchTooLarge, what, b.count, apiErr)
	}
	return kindErr(errKindNATS, fmt.Errorf("relay: %s: %w", what, apiErr))
}

func (r *Relay) batchAcked(b *sentBatch) {
	r.m.position.Store(b.last)
	r.m.published.Add(float64(b.count))
	r.m.batches.Inc()
	for seq := b.first; seq <= b.last; seq++ {
		r.stage("acked", seq)
	}
}

// abortBatches waits, for at most AckTimeout (less when ctx ends), for the
// answers to the batches in flight after an error, so that the next
// synchronisation reads a settled stream. Their outcome is not trusted.
func (r *Relay) abortBatches(ctx context.Context, w []*sentBatch, answers <-chan *nats.Msg) {
	deadline := time.NewTimer(r.cfg.AckTimeout)
	defer deadline.Stop()
	defer func() {
		for _, b := range w {
			if b.answer != nil && r.checkBatchAck(b) == nil {
				r.m.published.Add(float64(b.count))
			}
		}
	}()
	for unanswered(w) {
		select {
		case m := <-answers:
			receive(w, m)
		case <-deadline.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// finishBatches waits, for at most ShutdownTimeout, for the answers to the
// batches in flight at shutdown, advancing the position as they come.
func (r *Relay) finishBatches(w []*sentBatch, answers <-chan *nats.Msg) {
	deadline := time.NewTimer(r.cfg.ShutdownTimeout)
	defer deadline.Stop()
	for len(w) > 0 {
		if w[0].answer != nil {
			if r.checkBatchAck(w[0]) != nil {
				return
			}
			r.batchAcked(w[0])
			w = w[1:]
			continue
		}
		select {
		case m := <-answers:
			receive(w, m)
		case <-deadline.C:
			r.log.Warn("shutdown: in-flight batches not acknowledged in time", zap.Int64("sequence", w[0].first), zap.Int("batches", len(w)))
			return
		}
	}
}

func unanswered(w []*sentBatch) bool {
	for _, b := range w {
		if b.answer == nil {
			return true
		}
	}
	return false
}
