package relay

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sethvargo/go-retry"
	"github.com/sourcegraph/conc"
	"go.uber.org/zap"

	"github.com/artifactstore/artifactstore/internal/backoff"
	"github.com/artifactstore/artifactstore/internal/wire"
	"github.com/artifactstore/artifactstore/store"
)

// LockName is the name of the leader lock (store.DB.TryLock) relays share.
const LockName = "relay"

// Relay copies the log into the events stream. Create it with New and run
// it with Run; several relays may run against the same log and stream (one
// publishes, the others stand by).
type Relay struct {
	db  store.DB
	js  JetStream
	cfg Config
	log *zap.Logger
	m   *metrics

	running atomic.Bool
	active  atomic.Bool
	// standby is set while the last attempt at the lock found it held.
	standby atomic.Bool
	// progress is when the main loop or the log reader last went round
	// (Unix nanoseconds), for a liveness watchdog.
	progress atomic.Int64
	// synced is the stream's last event as of the session's
	// synchronisation, the first event fetch checks the log against. Only
	// the Run goroutine writes it, before starting fetch.
	synced store.Event
	// verified is the last stream message the relay knows to be the log's
	// (Run goroutine only); verifyTail checks everything after it.
	verified verifiedPos
	// warnedNoAtomic is set once the relay warned that the stream does not
	// allow the atomic batches it is configured for (Run goroutine only).
	warnedNoAtomic bool
	// checkpoints signs and publishes checkpoints while the relay is
	// active (nil without Config.CheckpointKey).
	checkpoints *checkpointer

	// Test hooks (export_test.go): hook is called at each stage of the
	// pipeline with the event sequence concerned; noLock skips the leader
	// lock so that only fencing keeps concurrent relays apart.
	hook   func(stage string, seq int64)
	noLock bool
}

// New returns a relay that reads db and publishes through js. It validates
// cfg (the error names the bad field) and registers the metrics with
// cfg.Registerer when set. Nothing is contacted until Run.
func New(db store.DB, js JetStream, cfg Config) (*Relay, error) {
	if db == nil {
		return nil, errors.New("relay: New: db is nil")
	}
	if js == nil {
		return nil, errors.New("relay: New: js is nil")
	}
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	var kvm KeyValueManager
	if cfg.CheckpointKey != nil {
		var ok bool
		if kvm, ok = js.(KeyValueManager); !ok {
			return nil, errors.New("relay: New: Config.CheckpointKey needs a JetStream that manages key-value buckets (relay.KeyValueManager)")
		}
	}
	m := newMetrics(cfg.Stream)
	if err := m.register(cfg.Registerer); err != nil {
		return nil, err
	}
	r := &Relay{db: db, js: js, cfg: cfg, log: cfg.Logger.Named("relay").With(zap.String("stream", cfg.Stream)), m: m}
	if kvm != nil {
		r.checkpoints = &checkpointer{r: r, kvm: kvm}
	}
	return r, nil
}

// Position returns the log sequence of the last event this relay knows to
// be in the stream (as of its last synchronisation or ack; 0 before Run).
// ReadPosition reads the stream itself.
func (r *Relay) Position() int64 { return r.m.position.Load() }

// Active reports whether this relay currently holds the leader lock and
// publishes (false while it stands by or is not running).
func (r *Relay) Active() bool { return r.active.Load() }

// Standby reports whether this relay is running, has checked its
// dependencies, and found the leader lock held by another relay at its
// last attempt: ready to take over.
func (r *Relay) Standby() bool { return r.running.Load() && r.standby.Load() && !r.active.Load() }

// LastProgress returns when the relay's main loop or, while it is active,
// its log reader last went round (idle waits included; zero before Run).
// A relay whose LastProgress stops moving is stuck.
func (r *Relay) LastProgress() time.Time {
	if n := r.progress.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

func (r *Relay) touch() { r.progress.Store(time.Now().UnixNano()) }

// Run relays until ctx is cancelled, then waits (at most
// Config.ShutdownTimeout) for in-flight acks and returns nil. It first
// checks its dependencies: the log's id (an unmigrated database returns an
// error) and the stream (EnsureStream: a conflicting stream returns a
// *ConflictError). It then takes the leader lock, or stands by until it can,
// and publishes; when NATS or the database is unreachable it backs off and
// retries, losing nothing. It returns an error only for what retrying cannot
// fix: the stream belongs to another log (ErrForeignStream), its last
// message is gone (ErrStreamTruncated), it is ahead of the log
// (ErrStreamAhead), its last event is not the log's event at that sequence
// (a *DivergedError: the log was restored and lost commits the stream
// holds; checked at every synchronisation and every read of the log), or
// its configuration conflicts (ErrStreamConflict).
// A stream deleted while the relay runs is created again and refilled from
// the log.
func (r *Relay) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("relay: Run is already running")
	}
	defer r.running.Store(false)
	if err := r.check(ctx); err != nil || ctx.Err() != nil {
		return err
	}
	bo := r.retryBackoff()
	standby := false
	for ctx.Err() == nil {
		r.touch()
		release, lost, err := r.acquire(ctx)
		r.standby.Store(errors.Is(err, store.ErrLockHeld))
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, store.ErrLockHeld):
			if !standby {
				r.log.Info("another relay is active; standing by")
				standby = true
			}
			backoff.Sleep(ctx, r.cfg.LockRetryInterval)
			continue
		case err != nil:
			r.m.errors.WithLabelValues(errKindDatabase).Inc()
			d, _ := bo.Next()
			r.log.Warn("cannot take the leader lock; retrying", zap.Error(err), zap.Duration("retry_in", d))
			backoff.Sleep(ctx, d)
			continue
		}
		bo = r.retryBackoff()
		standby = false
		r.log.Info("relay is active")
		r.m.leader.Set(1)
		r.active.Store(true)
		err = r.lead(ctx, lost)
		r.active.Store(false)
		r.m.leader.Set(0)
		release()
		if err != nil {
			return err
		}
		if ctx.Err() == nil {
			r.log.Warn("leader lock lost; standing by")
		}
	}
	return nil
}

// check verifies the log and the stream before anything else, retrying
// while either is unreachable. It returns nil when ctx ends.
func (r *Relay) check(ctx context.Context) error {
	var last error
	bo := backoff.WithNotify(func(d time.Duration) {
		r.log.Warn("dependencies unavailable at start; retrying", zap.Error(last), zap.Duration("retry_in", d))
	}, r.retryBackoff())
	err := retry.Do(ctx, bo, func(ctx context.Context) error {
		_, err := r.db.LogID(ctx)
		if err == nil {
			if _, err = EnsureStream(ctx, r.js, r.cfg); err == nil || permanent(err) {
				return err
			}
		} else if !store.Temporary(err) && ctx.Err() == nil {
			return fmt.Errorf("relay: reading the log id (is the database migrated?): %w", err)
		}
		if ctx.Err() != nil {
			return nil // stopping, not failing: Run sees ctx
		}
		last = err
		return retry.RetryableError(err)
	})
	if ctx.Err() != nil && errors.Is(err, context.Cause(ctx)) {
		return nil // the context ended during a wait
	}
	return err
}

func (r *Relay) acquire(ctx context.Context) (release func(), lost <-chan struct{}, err error) {
	if r.noLock {
		return func() {}, nil, nil
	}
	return r.db.TryLock(ctx, LockName)
}

// lead publishes while this relay holds the lock. It returns nil when ctx
// is cancelled or the lock is lost, and a permanent error otherwise.
func (r *Relay) lead(parent context.Context, lost <-chan struct{}) error {
	ctx, cancel := context.WithCancel(parent)
	var wg conc.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	wg.Go(func() {
		select {
		case <-lost:
			cancel()
		case <-ctx.Done():
		}
	})
	if r.checkpoints != nil {
		wg.Go(func() { r.checkpoints.run(ctx) })
	}
	bo := r.retryBackoff()
	for {
		progressed, err := r.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		kind := errKind(err)
		r.m.errors.WithLabelValues(kind).Inc()
		if permanent(err) {
			return err // Run's caller reports it
		}
		if progressed {
			bo = r.retryBackoff()
		}
		d, _ := bo.Next()
		switch kind {
		case errKindFenced:
			r.log.Info("publish fenced (another relay published); re-reading the stream", zap.Error(err), zap.Duration("retry_in", d))
		default:
			r.log.Warn("relaying failed; re-reading the stream", zap.String("kind", kind), zap.Error(err), zap.Duration("retry_in", d))
		}
		backoff.Sleep(ctx, d)
	}
}

// session synchronises with the stream and publishes until an error or
// until ctx is done. progressed reports whether any publish was acked.
func (r *Relay) session(ctx context.Context) (progressed bool, err error) {
	r.m.resyncs.Inc()
	r.dropStalled() // what the last window left unanswered
	logID, err := r.db.LogID(ctx)
	if err != nil {
		return false, kindErr(errKindDatabase, fmt.Errorf("relay: reading the log id: %w", err))
	}
	s, err := EnsureStream(ctx, r.js, r.cfg)
	if err != nil {
		return false, kindErr(errKindNATS, err)
	}
	pos, last, err := lastEvent(ctx, s)
	if err != nil {
		return false, kindErr(errKindNATS, err)
	}
	if pos.LogID != "" && pos.LogID != logID {
		return false, &LogMismatchError{Stream: r.cfg.Stream, StreamLogID: pos.LogID, LogID: logID}
	}
	head, err := r.db.Head(ctx)
	if err != nil {
		return false, kindErr(errKindDatabase, fmt.Errorf("relay: reading the log head: %w", err))
	}
	if head < pos.Sequence {
		return false, fmt.Errorf("%w: stream %s holds event %d, the log ends at %d", ErrStreamAhead, r.cfg.Stream, pos.Sequence, head)
	}
	if err := r.checkHistory(ctx, last); err != nil {
		return false, err
	}
	if err := r.verifyTail(ctx, s, logID, pos.StreamSequence); err != nil {
		return false, err
	}
	r.verified = verifiedPos{stream: pos.StreamSequence, seq: pos.Sequence}
	parts, err := r.db.Partitions(ctx)
	if err != nil {
		return false, kindErr(errKindDatabase, fmt.Errorf("relay: reading the log's partition count: %w", err))
	}
	heads, err := partitionHeads(ctx, s, r.db, pos, parts)
	if err != nil {
		return false, kindErr(errKindNATS, err)
	}
	r.m.position.Store(pos.Sequence)
	r.m.setHead(head)
	r.log.Debug("synchronised with the stream", zap.Int64("sequence", pos.Sequence),
		zap.Uint64("stream_sequence", pos.StreamSequence), zap.Int64("head", head))
	r.stage("synced", pos.Sequence)

	fctx, fcancel := context.WithCancel(ctx)
	batches := make(chan fetched, 1)
	var wg conc.WaitGroup
	r.synced = last
	size := r.batchSize(s.CachedInfo().Config)
	wg.Go(func() { r.fetch(fctx, pos.Sequence, batches) })
	defer func() {
		fcancel()
		wg.Wait()
	}()
	if size > 0 {
		return r.publishBatches(ctx, logID, pos, heads, size, batches)
	}
	return r.publish(ctx, logID, pos, heads, batches)
}

type fetched struct {
	events []store.Event
	err    error
}

// fetch reads the log after sequence from, batch by batch, into out; when
// it has caught up it waits for an append signal or the poll interval.
// Every read checks that the log still holds the last event read, starting
// with the stream's last event (fetchAnchored), so that a log restored
// under a running relay stops it.
func (r *Relay) fetch(ctx context.Context, from int64, out chan<- fetched) {
	after := store.Event{Sequence: from} // known by its sequence only
	if r.synced.Sequence == from {
		after = r.synced
	}
	poll := time.NewTimer(r.cfg.PollInterval)
	defer poll.Stop()
	var headAt time.Time
	for {
		r.touch()
		signal := r.db.AppendSignal() // before reading, so no append is missed
		events, err := r.fetchAnchored(ctx, after, r.cfg.BatchSize)
		if err != nil {
			if !errors.Is(err, ErrDivergedHistory) {
				err = kindErr(errKindDatabase, fmt.Errorf("relay: reading the log after %d: %w", after.Sequence, err))
			}
			if ctx.Err() == nil {
				select {
				case out <- fetched{err: err}:
				case <-ctx.Done():
				}
			}
			return
		}
		if len(events) > 0 {
			after = events[len(events)-1]
			r.m.setHead(after.Sequence)
			if len(events) == r.cfg.BatchSize && time.Since(headAt) > time.Second {
				// Catching up: refresh the head now and then for the lag metric.
				if h, err := r.db.Head(ctx); err == nil {
					r.m.setHead(h)
				}
				headAt = time.Now()
			}
			select {
			case out <- fetched{events: events}:
			case <-ctx.Done():
				return
			}
			continue
		}
		poll.Reset(r.cfg.PollInterval)
		select {
		case <-signal:
		case <-poll.C:
		case <-ctx.Done():
			return
		}
	}
}

// inflight is one published, not yet acknowledged message.
type inflight struct {
	seq       int64  // the event's log sequence
	streamSeq uint64 // the stream sequence it must be stored at
	ok        <-chan *jetstream.PubAck
	err       <-chan error
	deadline  time.Time
}

// window is a FIFO of in-flight messages.
type window struct {
	buf  []inflight
	head int
	n    int
}

func (w *window) push(f inflight)  { w.buf[(w.head+w.n)%len(w.buf)] = f; w.n++ }
func (w *window) front() *inflight { return &w.buf[w.head] }
func (w *window) pop() inflight {
	f := w.buf[w.head]
	w.buf[w.head] = inflight{}
	w.head = (w.head + 1) % len(w.buf)
	w.n--
	return f
}

// publish is the pipeline: it publishes fetched events with the fencing
// header, keeps at most MaxInFlight unacknowledged and consumes acks in
// order. It returns at the first error (after a bounded wait for what is in
// flight) or, when ctx is done, after waiting for the in-flight acks.
//
// heads holds each partition's last event sent, which the next event of the
// partition names as its predecessor.
func (r *Relay) publish(ctx context.Context, logID string, pos Position, heads []int64, batches <-chan fetched) (progressed bool, err error) {
	w := &window{buf: make([]inflight, r.cfg.MaxInFlight)}
	last := pos.StreamSequence // stream sequence of the last message sent
	var pending []store.Event
	// Ack deadlines are checked a few times per AckTimeout rather than
	// with a timer re-armed for every ack.
	check := time.NewTicker(max(r.cfg.AckTimeout/4, time.Millisecond))
	defer check.Stop()
	for {
		for len(pending) > 0 && w.n < len(w.buf) && ctx.Err() == nil {
			e := pending[0]
			m := encode(logID, e, heads)
			m.Header[jetstream.ExpectedLastSeqHeader] = []string{strconv.FormatUint(last, 10)}
			r.stage("publish", e.Sequence)
			paf, err := r.js.PublishMsgAsync(m)
			if err != nil {
				r.abort(ctx, w)
				return progressed, kindErr(errKindNATS, fmt.Errorf("relay: publishing event %d: %w", e.Sequence, err))
			}
			last++
			w.push(inflight{seq: e.Sequence, streamSeq: last, ok: paf.Ok(), err: paf.Err(), deadline: time.Now().Add(r.cfg.AckTimeout)})
			pending = pending[1:]
			r.stage("published", e.Sequence)
		}
		var in <-chan fetched
		if len(pending) == 0 {
			in = batches
		}
		var ackc <-chan *jetstream.PubAck
		var errc <-chan error
		if w.n > 0 {
			f := w.front()
			ackc, errc = f.ok, f.err
		}
		select {
		case b := <-in:
			if b.err != nil {
				r.abort(ctx, w)
				return progressed, b.err
			}
			pending = b.events
			r.stage("fetched", pending[len(pending)-1].Sequence)
		case ack := <-ackc:
			// Take this ack and every one that has arrived behind it, then
			// refill the window in one go.
			for {
				f := w.pop()
				if err := r.checkAck(f, ack); err != nil {
					r.abort(ctx, w)
					return progressed, err
				}
				progressed = true
				r.verified = verifiedPos{stream: f.streamSeq, seq: f.seq}
				r.m.position.Store(f.seq)
				r.m.published.Inc()
				r.stage("acked", f.seq)
				if w.n == 0 {
					break
				}
				var ok bool
				select {
				case ack = <-w.front().ok:
					ok = true
				default:
				}
				if !ok {
					break
				}
			}
		case err := <-errc:
			f := w.pop()
			r.abort(ctx, w)
			return progressed, publishErr(f, err)
		case now := <-check.C:
			if w.n == 0 || now.Before(w.front().deadline) {
				continue
			}
			f := w.pop()
			r.abort(ctx, w)
			return progressed, kindErr(errKindTimeout, fmt.Errorf("%w: event %d after %s", ErrAckTimeout, f.seq, r.cfg.AckTimeout))
		case <-ctx.Done():
			r.finish(w)
			return progressed, nil
		}
	}
}

// encode returns event e's message and records e as the last event sent of
// its partition, which heads holds for each partition.
func encode(logID string, e store.Event, heads []int64) *nats.Msg {
	p := wire.Partition(e.SubjectID, len(heads))
	m := wire.Encode(wire.Message{Event: e, LogID: logID, Partition: p, Previous: heads[p]}, 1)
	heads[p] = e.Sequence
	return m
}

func (r *Relay) checkAck(f inflight, ack *jetstream.PubAck) error {
	if ack.Stream != r.cfg.Stream || ack.Sequence != f.streamSeq || ack.Duplicate {
		// A duplicate was stored by someone else under this event's
		// message id: the next synchronisation checks it is this event.
		return kindErr(errKindFenced, fmt.Errorf("%w: event %d was stored in %s at sequence %d (duplicate %t), expected %s at %d",
			ErrFenced, f.seq, ack.Stream, ack.Sequence, ack.Duplicate, r.cfg.Stream, f.streamSeq))
	}
	return nil
}

func publishErr(f inflight, err error) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return kindErr(errKindFenced, fmt.Errorf("%w: event %d expected the stream to end at %d: %w", ErrFenced, f.seq, f.streamSeq-1, err))
	}
	if errors.Is(err, jetstream.ErrAsyncPublishTimeout) {
		return kindErr(errKindTimeout, fmt.Errorf("%w: event %d: %w", ErrAckTimeout, f.seq, err))
	}
	return kindErr(errKindNATS, fmt.Errorf("relay: publishing event %d: %w", f.seq, err))
}

// abort waits, for at most AckTimeout (less when ctx ends), until what is
// still in flight after an error has resolved, so that the next
// synchronisation reads a settled stream. Results are not trusted: the next
// synchronisation reads the stream.
func (r *Relay) abort(ctx context.Context, w *window) {
	deadline := time.NewTimer(r.cfg.AckTimeout)
	defer deadline.Stop()
	for w.n > 0 {
		f := w.pop()
		select {
		case <-f.ok:
			r.m.published.Inc()
		case <-f.err:
		case <-deadline.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// dropStalled resolves, at the start of a session, the publishes the last
// window left unanswered (abort waited AckTimeout for them), which the
// JetStream context would otherwise keep (and count against its max
// pending) until an answer that may never come: a stream without a leader
// drops publishes silently. Their outcome does not matter, the session
// reads the stream; late answers go to a reply subscription that no longer
// exists. (Not done right after a window: nats.go's reconnect listener,
// started with the context's first publish, blocks forever on a nil
// channel when CleanupPublisher runs before it has started.)
func (r *Relay) dropStalled() {
	n := r.js.PublishAsyncPending()
	if n == 0 {
		return
	}
	r.log.Warn("abandoning unanswered publishes; the next synchronisation reads the stream", zap.Int("pending", n))
	r.m.abandoned.Add(float64(n))
	r.js.CleanupPublisher()
}

// finish waits, for at most ShutdownTimeout, for the acks of what is in
// flight at shutdown, advancing the position as they come.
func (r *Relay) finish(w *window) {
	deadline := time.NewTimer(r.cfg.ShutdownTimeout)
	defer deadline.Stop()
	for w.n > 0 {
		f := w.pop()
		select {
		case ack := <-f.ok:
			if r.checkAck(f, ack) != nil {
				return
			}
			r.m.position.Store(f.seq)
			r.m.published.Inc()
		case <-f.err:
			return
		case <-deadline.C:
			r.log.Warn("shutdown: in-flight publishes not acknowledged in time", zap.Int64("sequence", f.seq), zap.Int("in_flight", w.n+1))
			return
		}
	}
}

func (r *Relay) stage(name string, seq int64) {
	if r.hook != nil {
		r.hook(name, seq)
	}
}

// kindError tags an error with its metrics kind.
type kindError struct {
	kind string
	err  error
}

func kindErr(kind string, err error) error { return &kindError{kind, err} }
func (e *kindError) Error() string         { return e.err.Error() }
func (e *kindError) Unwrap() error         { return e.err }

func errKind(err error) string {
	var ke *kindError
	switch {
	case permanent(err):
		return errKindStream
	case errors.As(err, &ke):
		return ke.kind
	}
	return errKindNATS
}

// retryBackoff starts the waits after errors: doubling from RetryMin to
// RetryMax, each moved by up to a quarter either way so that relays
// restarted together do not retry in step.
func (r *Relay) retryBackoff() retry.Backoff {
	return backoff.Policy{Min: r.cfg.RetryMin, Max: r.cfg.RetryMax, JitterPercent: 25}.Backoff()
}
